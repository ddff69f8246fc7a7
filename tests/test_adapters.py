"""Adapters: small fixtures written in each public zoo's exact layout, read through one Zoo API."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from nwa.errors import ConfigError, ZooError
from nwa.weights.io import LoraDelta, open_weights
from nwa.zoo.adapters import detect_adapter, open_zoo
from nwa.zoo.adapters.model_j import open_model_j
from nwa.zoo.adapters.model_j_lora import open_model_j_lora
from nwa.zoo.adapters.small_cnn_zoo import open_small_cnn_zoo
from nwa.zoo.manifest import SPLITS, ZooMeta, ZooWriter
from tests.zoo_factory import write_cnn_layout

# ---------------------------------------------------------------- Model-J, discriminative

MJ_SPLITS = ["train", "train", "train", "val", "val", "test"]
MJ_TARGETS = [[1, 5, 7], [0, 2], [3, 9], [4], [5, 6], [8, 1]]
MJ_BASES = ["google/vit-tiny", "google/vit-tiny", "facebook/dino-tiny"] * 2


def _mj_weights(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return {
        "vit.encoder.layer.0.attention.query.weight": torch.randn(8, 8, generator=g),
        "classifier.weight": torch.randn(4, 8, generator=g),
    }


def _hf_cache_model(parent: Path, repo_id: str, tensors, metadata: dict[str, str]) -> Path:
    """One model as ``huggingface_hub`` caches it: refs/main, a blob, a snapshot symlink."""
    folder = parent / ("models--" + repo_id.replace("/", "--"))
    sha = f"{abs(hash(repo_id)) % 16**12:012x}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(sha)
    (folder / "blobs").mkdir()
    save_file(tensors, str(folder / "blobs" / "0f1e2d"), metadata=metadata)
    (folder / "snapshots" / sha).mkdir(parents=True)
    os.symlink("../../blobs/0f1e2d", folder / "snapshots" / sha / "model.safetensors")
    (parent / ".locks" / folder.name).mkdir(parents=True)  # the hub leaves lock folders too
    return folder


def _model_j_root(root: Path, table: str | None, header_targets=None) -> Path:
    records = []
    for i, split in enumerate(MJ_SPLITS):
        repo = f"ProbeX/vit-{i}"
        targets = MJ_TARGETS[i] if header_targets is None else header_targets[i]
        meta = {"dataset_chosen_targets": str(targets), "lr": "0.001"}
        _hf_cache_model(root / split, repo, _mj_weights(i), meta)
        records.append(
            {
                "model_id": repo,
                "dataset_chosen_targets": MJ_TARGETS[i],
                "base_model": MJ_BASES[i],
                "lr": 0.01 * (i + 1),
                "epochs": 10 + i,
                "batch_size": 32,
                "best_checkpoint_train_accuracy": 0.9,
                "best_checkpoint_val_accuracy": 0.8,
                "best_checkpoint_test_accuracy": 0.5 + 0.05 * i,
                "split": split,
                "notes": f"run {i}",
            }
        )
    frame = pd.DataFrame(records)
    if table == "csv":
        frame.to_csv(root / "metadata.csv", index=False)  # lists become strings "[1, 5, 7]"
    elif table == "parquet":
        frame.to_parquet(root / "metadata.parquet")
    return root


@pytest.mark.parametrize("table", ["csv", "parquet"])
def test_model_j_with_metadata_table(tmp_path, table):
    zoo = open_model_j(_model_j_root(tmp_path, table))
    assert len(zoo) == 6
    assert zoo.meta.classes == [str(c) for c in range(10)]
    assert set(zoo.meta.trees) == {"google/vit-tiny", "facebook/dino-tiny"}
    row = zoo.row("ProbeX/vit-0")
    assert row["classes"] == [1, 5, 7] and row["split"] == "train"
    assert row["tree"] == "google/vit-tiny" and row["arch"] == "model_j"
    assert row["hparams"] == {"lr": pytest.approx(0.01), "epochs": 10, "batch_size": 32}
    assert row["labels"] == {"notes": "run 0"}
    assert row["test_acc"] == pytest.approx(0.5) and row["gen_gap"] == pytest.approx(0.4)
    assert list(zoo.split("val")["id"]) == ["ProbeX/vit-3", "ProbeX/vit-4"]
    assert zoo.meta.label_schema["classes"] == "multilabel"
    assert zoo.meta.label_schema["test_acc"] == "regression"
    with open_weights(zoo.path_of("ProbeX/vit-0")) as src:
        assert zoo.meta.layout["model_j"] == src.names()
    assert sorted(zoo.meta.layout["model_j"]) == sorted(_mj_weights(0))
    with zoo.open_model("ProbeX/vit-5") as src:
        assert torch.equal(src.get("classifier.weight"), _mj_weights(5)["classifier.weight"])
    assert zoo.path_of("ProbeX/vit-5").name == "model.safetensors"


def test_model_j_without_table_reads_headers_and_folders(tmp_path):
    names = [["cat", "dog"], ["emu"], ["cat"], ["dog", "emu"], ["fox"], ["cat", "fox"]]
    zoo = open_model_j(_model_j_root(tmp_path, None, header_targets=names))
    assert zoo.meta.classes == ["cat", "dog", "emu", "fox"]
    assert zoo.row("ProbeX/vit-3")["classes"] == [1, 2]
    assert zoo.row("ProbeX/vit-3")["split"] == "val"
    assert zoo.row("ProbeX/vit-3")["hparams"] == {"lr": pytest.approx(0.001)}
    assert zoo.meta.trees == {}


def test_model_j_bad_layouts(tmp_path):
    root = _model_j_root(tmp_path, "csv")
    frame = pd.read_csv(root / "metadata.csv")
    frame.rename(columns={"model_id": "identifier"}).to_csv(root / "metadata.csv", index=False)
    with pytest.raises(ZooError, match=r"metadata\.csv: no model id column.*model_id"):
        open_model_j(root)
    frame.to_csv(root / "metadata.csv", index=False)
    entry = root / "test" / "models--ProbeX--vit-5"
    (entry / "refs" / "main").write_text("0000")
    with pytest.raises(ZooError, match="models--ProbeX--vit-5: refs/main points at"):
        open_model_j(root)
    assert len(open_model_j(root, skip_incomplete=True)) == 5


def test_model_j_missing_classes_names_file_and_column(tmp_path):
    root = tmp_path / "flat"
    _hf_cache_model(root, "org/a", _mj_weights(0), {"format": "pt"})
    pd.DataFrame({"model_id": ["org/a"], "split": ["train"]}).to_csv(root / "m.csv", index=False)
    with pytest.raises(
        ZooError, match=r"m\.csv: model org/a: no training classes.*dataset_chosen_targets"
    ):
        open_model_j(root)


def test_model_j_no_split_anywhere(tmp_path):
    root = tmp_path / "flat"
    _hf_cache_model(root, "org/a", _mj_weights(0), {"dataset_chosen_targets": "[1]"})
    with pytest.raises(ZooError, match="no split"):
        open_model_j(root)


# ---------------------------------------------------------------- Model-J, SD LoRA

LORA_LAYERS = [
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
]
LORA_MODELS = [  # (split, index, WordNet id)
    ("train", 0, "n01443537"),
    ("train", 1, "n02119789"),
    ("train", 2, "n01443537"),
    ("val", 3, "n02119789"),
    ("test", 4, "n01443537"),
    ("val_holdout", 5, "n02504458"),
    ("test_holdout", 6, "n02504458"),
]
WORDS = {"n01443537": "goldfish", "n02119789": "kit_fox", "n02504458": "African_elephant"}


def _lora_factors(k: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + k)
    return {
        layer: (torch.randn(2, 8, generator=g), torch.randn(6, 2, generator=g))
        for layer in LORA_LAYERS
    }


def _lora_root(root: Path, source: str, naming: str = "diffusers") -> Path:
    rows = []
    for split, k, wnid in LORA_MODELS:
        folder = root / split / f"model_idx_{k:04d}"
        folder.mkdir(parents=True)
        tensors = {}
        for layer, (a, b) in _lora_factors(k).items():
            down, up = ("lora.down", "lora.up") if naming == "diffusers" else ("lora_A", "lora_B")
            tensors |= {f"{layer}.{down}.weight": a, f"{layer}.{up}.weight": b}
        header = {"imagenet_class_id": wnid} if source == "header" else {}
        save_file(tensors, str(folder / "pytorch_lora_weights.safetensors"), metadata=header)
        if source == "json":
            info = {"concept": WORDS[wnid], "seed": k, "rank": 2}
            (folder / "metadata.json").write_text(json.dumps(info))
        rows.append({"split": split, "model_idx": k, "category": WORDS[wnid]})
    if source == "table":
        pd.DataFrame(rows).to_csv(root / "models.csv", index=False)
    return root


@pytest.mark.parametrize(
    ("source", "naming"), [("header", "diffusers"), ("json", "peft"), ("table", "diffusers")]
)
def test_model_j_lora(tmp_path, source, naming):
    names = WORDS if source == "header" else None
    zoo = open_model_j_lora(_lora_root(tmp_path, source, naming), concept_names=names)
    assert len(zoo) == len(LORA_MODELS)
    assert sorted(set(zoo.table["split"])) == sorted(SPLITS)
    assert zoo.meta.classes == ["African_elephant", "goldfish", "kit_fox"]
    assert zoo.meta.holdout_concepts == ["African_elephant"]
    row = zoo.row("train/model_idx_0001")
    assert row["concept"] == "kit_fox" and row["classes"] == [2]
    assert zoo.meta.layout["sd_lora"] == LORA_LAYERS
    with zoo.open_model("val/model_idx_0003") as src:
        assert isinstance(src, LoraDelta)
        a, b = _lora_factors(3)[LORA_LAYERS[1]]
        assert src.info(LORA_LAYERS[1]).shape == (6, 8)
        assert torch.allclose(src.get(LORA_LAYERS[1]), b @ a)
    if source == "json":
        assert row["hparams"] == {"seed": 1, "rank": 2}
    if source == "header":
        assert row["labels"] == {"concept_id": "n02119789"}


def test_model_j_lora_bad_layouts(tmp_path):
    root = _lora_root(tmp_path / "a", "json")
    (root / "test" / "model_idx_0004" / "metadata.json").unlink()
    with pytest.raises(ZooError, match="model_idx_0004: no concept for this model"):
        open_model_j_lora(root)
    (root / "test" / "model_idx_0004" / "pytorch_lora_weights.safetensors").unlink()
    with pytest.raises(ZooError, match="model_idx_0004: no LoRA weights"):
        open_model_j_lora(root)
    (tmp_path / "b" / "train").mkdir(parents=True)
    with pytest.raises(ZooError, match="no LoRA models found"):
        open_model_j_lora(tmp_path / "b")
    table = _lora_root(tmp_path / "c", "table")
    pd.DataFrame({"model_idx": [0], "colour": ["red"]}).to_csv(table / "models.csv", index=False)
    with pytest.raises(ZooError, match=r"models\.csv: no concept column"):
        open_model_j_lora(table)


# ---------------------------------------------------------------- Small CNN Zoo

N_RUNS = 30


def _cnn_root(root: Path, n_runs: int = N_RUNS) -> tuple[Path, np.ndarray]:
    assert write_cnn_layout(root) == 4970
    weights = np.random.default_rng(0).standard_normal((2 * n_runs, 4970)).astype(np.float32)
    np.save(root / "weights.npy", weights)
    run = np.arange(2 * n_runs) // 2
    metrics = pd.DataFrame(
        {
            "config.learning_rate": 10.0 ** -(2 + run % 3),
            "config.optimizer": np.where(run % 2, "adam", "sgd"),
            "config.activation": "relu",
            "config.w_init": "glorot_uniform",
            "config.dropout": 0.1,
            "config.l2reg": 1e-4,
            "config.init_std": 0.05,
            "config.train_fraction": 1.0,
            "step": np.tile([0, 86], n_runs),
            "test_accuracy": np.linspace(0.1, 0.6, 2 * n_runs),
            "train_accuracy": np.linspace(0.1, 0.6, 2 * n_runs) + 0.05,
            "test_loss": 1.5,
        }
    )
    metrics.to_csv(root / "metrics.csv.gz", index=False, compression="gzip")
    return root, weights


def test_small_cnn_zoo_reads_layout_and_transposes(tmp_path):
    root, weights = _cnn_root(tmp_path)
    zoo = open_small_cnn_zoo(root)
    assert len(zoo) == N_RUNS  # final step only
    names = ["conv2d", "conv2d_1", "conv2d_2", "dense"]
    assert zoo.meta.layout["small_cnn"] == [f"{n}.{p}" for n in names for p in ("weight", "bias")]
    row = zoo.row("cnn_000003")  # row 3 of weights.npy: run 1 at step 86
    assert row["tree"] == "" and row["arch"] == "small_cnn" and zoo.meta.trees == {}
    assert row["test_acc"] == pytest.approx(np.linspace(0.1, 0.6, 60)[3])
    assert row["gen_gap"] == pytest.approx(0.05)
    assert row["hparams"]["learning_rate"] == pytest.approx(1e-3)
    assert row["hparams"]["optimizer"] == "adam"
    assert row["labels"]["npy_row"] == 3 and row["labels"]["test_loss"] == 1.5
    with zoo.open_model(row) as src:
        conv = src.get("conv2d_1.weight")
        assert conv.shape == (16, 16, 3, 3) and src.info("conv2d_1.weight").shape == (16, 16, 3, 3)
        tf_kernel = weights[3, 32 + 144 : 32 + 144 + 2304].reshape(
            3, 3, 16, 16
        )  # [kh, kw, in, out]
        assert conv[5, 7, 1, 2] == tf_kernel[1, 2, 7, 5]
        dense = src.get("dense.weight")
        assert torch.equal(dense, torch.from_numpy(weights[3, 4810:4970].reshape(16, 10).T.copy()))
        assert torch.equal(src.get("dense.bias"), torch.from_numpy(weights[3, 4800:4810]))


def test_small_cnn_zoo_splits_are_seeded(tmp_path):
    root, _ = _cnn_root(tmp_path)
    a = open_small_cnn_zoo(root, fractions=(0.6, 0.2, 0.2), seed=0)
    b = open_small_cnn_zoo(root, fractions=(0.6, 0.2, 0.2), seed=0)
    c = open_small_cnn_zoo(root, fractions=(0.6, 0.2, 0.2), seed=1)
    assert list(a.table["split"]) == list(b.table["split"])
    assert list(a.table["split"]) != list(c.table["split"])
    assert a.table["split"].value_counts().to_dict() == {"train": 18, "val": 6, "test": 6}
    assert len(open_small_cnn_zoo(root, step=None)) == 2 * N_RUNS
    assert set(open_small_cnn_zoo(root, step=0).table["test_acc"]) == set(
        np.linspace(0.1, 0.6, 60)[::2]
    )
    with pytest.raises(ConfigError, match="fractions"):
        open_small_cnn_zoo(root, fractions=(0.5, 0.2, 0.2))


def test_small_cnn_zoo_split_column_and_lazy_weights(tmp_path):
    root, _ = _cnn_root(tmp_path, n_runs=3)
    metrics = pd.read_csv(root / "metrics.csv.gz")
    metrics["split"] = ["train", "train", "val", "validation", "test", "test"]
    metrics.to_csv(root / "metrics.csv.gz", index=False, compression="gzip")
    zoo = open_small_cnn_zoo(root)
    assert list(zoo.table["split"]) == ["train", "val", "test"]
    opener = zoo._opener
    assert isinstance(opener.array, np.memmap)  # rows are read from disk on demand
    # A data-loader worker gets the path, not a copy of the whole array.
    assert len(pickle.dumps(opener)) < 20_000 < (root / "weights.npy").stat().st_size


def test_small_cnn_zoo_bad_layouts(tmp_path):
    root, weights = _cnn_root(tmp_path, n_runs=2)
    layout = pd.read_csv(root / "layout.csv")
    layout.drop(columns="shape").to_csv(root / "layout.csv", index=False)
    with pytest.raises(ZooError, match=r"layout\.csv: no 'shape' column"):
        open_small_cnn_zoo(root)
    layout.to_csv(root / "layout.csv", index=False)
    np.save(root / "weights.npy", weights[:, :4000])
    with pytest.raises(ZooError, match="does not hold the layout's 4970 parameters"):
        open_small_cnn_zoo(root)
    np.save(root / "weights.npy", weights[:3])
    with pytest.raises(ZooError, match=r"metrics\.csv\.gz: 4 rows but weights\.npy has 3"):
        open_small_cnn_zoo(root)
    (root / "layout.csv").unlink()
    with pytest.raises(ZooError, match=r"layout\.csv: missing"):
        open_small_cnn_zoo(root)


# ---------------------------------------------------------------- open_zoo


def test_open_zoo_detects_each_layout(tmp_path):
    cnn, _ = _cnn_root(tmp_path / "cnn", n_runs=3)
    mj = _model_j_root(tmp_path / "mj", "csv")
    lora = _lora_root(tmp_path / "lora", "header")
    assert [detect_adapter(p) for p in (cnn, mj, lora)] == [
        "small_cnn_zoo",
        "model_j",
        "model_j_lora",
    ]
    assert open_zoo(cnn).meta.build["adapter"] == "small_cnn_zoo"
    assert len(open_zoo(mj)) == 6
    assert open_zoo(lora, concept_names=WORDS).meta.holdout_concepts == ["African_elephant"]
    assert open_zoo(cnn, adapter="small_cnn_zoo", seed=3).meta.build["seed"] == 3


def test_open_zoo_native_and_errors(tmp_path):
    writer = ZooWriter(tmp_path / "native", ZooMeta(name="n"))
    path = writer.save_weights("a", {"w": torch.ones(2, 2)})
    writer.add({"id": "a", "path": path, "arch": "mlp", "split": "train"})
    writer.finalize()
    assert open_zoo(tmp_path / "native").meta.name == "n"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZooError, match="not a zoo"):
        open_zoo(tmp_path / "empty")
    with pytest.raises(ZooError, match="unknown adapter 'zoo9'"):
        open_zoo(tmp_path / "empty", adapter="zoo9")
    with pytest.raises(ZooError, match="no such zoo folder"):
        open_zoo(tmp_path / "nope")
    with pytest.raises(ZooError, match="no Hugging Face cache entries"):
        open_zoo(tmp_path / "empty", adapter="model_j")


def test_zoo_info_opens_every_layout_as_the_data_module_does(tmp_path, capsys):
    from nwa.zoo.__main__ import main
    from tests.zoo_factory import write_small_cnn_zoo

    cnn = write_small_cnn_zoo(tmp_path / "cnn", n_runs=6, diverged=())
    mj = _model_j_root(tmp_path / "mj", "csv")
    lora = _lora_root(tmp_path / "lora", "header")
    outs = {}
    for root, models in ((cnn, "6 models"), (mj, "6 models"), (lora, "models")):
        assert main(["info", str(root), "--no-distances"]) == 0, capsys.readouterr().err
        outs[root] = capsys.readouterr().out
        assert models in outs[root] and f"read by the {detect_adapter(root)} adapter" in outs[root]
    assert "splits drawn with seed 0, fractions [0.8, 0.1, 0.1]" in outs[cnn]
    assert main(["info", str(cnn), "--json", "--no-distances"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["archs"] == {"small_cnn": 6} and info["build"]["adapter"] == "small_cnn_zoo"
    assert info["hparams"]["activation"] == {"relu": 4, "tanh": 2}
    assert main(["info", str(cnn), "--adapter", "model_j"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(cnn) in err, err
