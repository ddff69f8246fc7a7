"""AlignModule end to end on a synthetic LoRA zoo: the CLI, learning, the evaluation callbacks of
its recipe (configs/model/align.yaml) and their report, checkpoints."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
import yaml

from nwa.metanets import ProbeX
from nwa.tasks.align import concept_prompts
from nwa.zoo.manifest import Zoo, ZooMeta, ZooWriter
from tests.test_align_loss import HashEncoder, lora_factors

STUB = "tests.test_align_loss.HashEncoder"
LAYER = "unet.mid.attn.to_k"
TOP_KEYS = {
    "settings",
    "concepts",
    "n_models",
    *(
        f"{part}_{key}"
        for part in ("in_distribution", "zero_shot")
        for key in (
            "top1",
            "chance",
            "top1_lo",
            "top1_hi",
            "top5",
            "top5_chance",
            "top5_lo",
            "top5_hi",
            "n",
        )
    ),
    "learned",
    "raw",
    "examples",
    "figures",
}
SUITE = {
    "knn_top1",
    "retrieval_p@1",
    "retrieval_p@5",
    "one_class_auroc_knn",
    "one_class_auroc_ledoit_wolf",
}


def write_lora_zoo(root: Path, n_train: int = 24, n_val: int = 2, n_test: int = 4) -> Zoo:
    """LoRA adapters (peft names, rank 2) on two layers: ``to_k`` carries the concept's stub text
    embedding linearly, ``to_v`` is noise. As in the diffusion zoo, each training concept has
    models in train (3), val (1) and test (1); each held-out concept has all 4 of its models in
    one split, ``val_holdout`` or ``test_holdout``."""
    names = [f"concept{i:02d}" for i in range(n_train + n_val + n_test)]
    texts = HashEncoder().encode(concept_prompts(names))
    meta = ZooMeta(
        name="lora", holdout_concepts=names[n_train:], label_schema={"concept": "multiclass"}
    )
    meta.trees["sd"] = {"root": "", "arch": "unet_lora"}
    writer = ZooWriter(root, meta)
    gen = torch.Generator().manual_seed(0)
    for c, name in enumerate(names):
        held = "val_holdout" if c < n_train + n_val else "test_holdout"
        splits = ["train"] * 3 + ["val", "test"] if c < n_train else [held] * 4
        for m, split in enumerate(splits):
            a, b = lora_factors(texts[c], gen)
            noise = {f: torch.randn(s, generator=gen) for f, s in (("A", (2, 8)), ("B", (12, 2)))}
            mid = f"{name}_{m}"
            tensors = {f"{LAYER}.lora_A.weight": a, f"{LAYER}.lora_B.weight": b}
            tensors |= {f"unet.mid.attn.to_v.lora_{f}.weight": t for f, t in noise.items()}
            path = writer.save_weights(mid, tensors)
            writer.add(
                dict(id=mid, path=path, tree="sd", arch="unet_lora", split=split, concept=name)
            )
    return writer.finalize(expected=n_train * 5 + (n_val + n_test) * 4)


@pytest.fixture(scope="module")
def lora_zoo(tmp_path_factory) -> Zoo:
    return write_lora_zoo(tmp_path_factory.mktemp("lora"))


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NWA_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("NWA_CACHE_DIR", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is several times faster on busy cores
    yield
    torch.set_num_threads(threads)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def align_callbacks() -> list[dict]:
    """The evaluation callbacks the aligner's recipe fragment lists."""
    return yaml.safe_load((CONFIGS / "model" / "align.yaml").read_text())["trainer"]["callbacks"]


def recipe(zoo: Zoo) -> dict:
    """The AlignModule recipe (model + data sections, the fragment's callbacks), shrunk for tests."""
    return {
        "trainer": {"callbacks": align_callbacks()},
        "model": {
            "class_path": "nwa.lit.align.AlignModule",
            "init_args": {
                "encoder": {
                    "class_path": "nwa.metanets.ProbeX",
                    "init_args": {"rank_u": 8, "rank_v": 8, "dim": 16},
                },
                "text_encoder": STUB,
                "prompt": "a photo of a {}",
                "lr": 0.002,
            },
        },
        "data": {
            "class_path": "nwa.data.ModelZooDataModule",
            "init_args": {
                "zoo": str(zoo.root),
                "layers": "*to_k",
                "target": "concept",
                "train_splits": ["train"],
                "val_splits": ["val"],
                "test_splits": ["test"],
                "batch_size": 16,
            },
        },
    }


def check_results(results: dict) -> None:
    assert set(results) == TOP_KEYS
    for side in ("learned", "raw"):
        assert set(results[side]) == {"in_distribution", "held_out"}
        for part in results[side].values():
            assert set(part) == SUITE
    assert len(results["concepts"]["train"]) == 24
    assert results["concepts"]["held_out"] == [f"concept{i}" for i in range(26, 30)]  # test_holdout
    assert results["n_models"] == {"train": 72, "test": 24, "held_out": 16}
    assert results["zero_shot_chance"] == pytest.approx(1 / 4)
    # 4 held-out candidates: top-5 holds every one of them
    assert results["zero_shot_top5"] == 1.0 and results["zero_shot_top5_chance"] == 1.0
    assert results["in_distribution_n"] == 24 and results["zero_shot_n"] == 16
    for part in ("in_distribution", "zero_shot"):
        lo, top1, hi = (results[f"{part}_top1{s}"] for s in ("_lo", "", "_hi"))
        assert 0.0 <= lo <= top1 <= hi <= 1.0 and hi - lo > 0.05
    assert results["examples"] and all(len(e["neighbours"]) == 5 for e in results["examples"])


def test_fit_cli_fast_dev_run_writes_results_json(lora_zoo, tmp_path):
    from nwa.fit import run

    config = tmp_path / "align.yaml"
    config.write_text(yaml.safe_dump(recipe(lora_zoo)))
    root = tmp_path / "run"
    run(
        [
            "--config",
            str(config),
            "--trainer.fast_dev_run",
            "true",
            "--trainer.default_root_dir",
            str(root),
        ]
    )
    results = json.loads((root / "align_results.json").read_text())
    check_results(results)
    assert set(results["figures"]) == {"embedding", "embedding_raw", "retrieval"}
    assert all(Path(p).is_file() for p in results["figures"].values())
    assert results["settings"]["relu"] is True and results["settings"]["text_encoder"] == STUB


def build(zoo: Zoo, **kw):
    from nwa.data import ModelZooDataModule
    from nwa.lit.align import AlignModule

    dm = ModelZooDataModule(str(zoo.root), layers="*to_k", target="concept", batch_size=16)
    encoder = functools.partial(ProbeX, rank_u=8, rank_v=8, dim=16)
    return dm, AlignModule(encoder, dm.shapes, dm.targets, **({"text_encoder": STUB} | kw))


def test_training_aligns_and_a_checkpoint_reproduces_the_results(lora_zoo, tmp_path, monkeypatch):
    from nwa.fit import run as fit
    from nwa.test import run as test

    monkeypatch.chdir(tmp_path)
    cfg = recipe(lora_zoo)
    cfg["seed_everything"] = 0
    cfg["trainer"] |= {
        "max_epochs": 25,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    # no figures: the recipe without EmbeddingFigure
    callbacks = cfg["trainer"]["callbacks"]
    cfg["trainer"]["callbacks"] = [c for c in callbacks if "EmbeddingFigure" not in c["class_path"]]
    cfg["model"]["init_args"] |= {"lr": 5e-3}
    config = tmp_path / "align.yaml"
    config.write_text(yaml.safe_dump(cfg))
    csv = [
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        "logs",
    ]
    fit(["--config", str(config), *csv])
    (first,) = tmp_path.rglob("align_results.json")
    results = json.loads(first.read_text())
    check_results(results)
    assert results["in_distribution_top1"] > 0.8  # chance 1/24
    assert results["zero_shot_top1"] > 0.6  # held-out concepts' texts only: chance 1/4
    assert results["learned"]["in_distribution"]["knn_top1"] > 0.8
    assert "align/zero_shot_top1" in next((tmp_path / "logs").rglob("metrics.csv")).read_text()
    # plain containers only; the candidate concepts (training ones) travel in the state dict
    (best,) = tmp_path.rglob("best-*.ckpt")
    state = torch.load(best, weights_only=True)
    assert state["hyper_parameters"]["text_encoder"] == STUB
    assert int(state["state_dict"]["task.candidates"].sum()) == 24
    test(["--ckpt_path", str(best)])  # rebuilt from the config saved in the checkpoint
    again = [p for p in tmp_path.rglob("align_results.json") if p != first]
    assert len(again) == 1
    assert json.loads(again[0].read_text())["zero_shot_top1"] == results["zero_shot_top1"]
    # a checkpoint saved when the aligner took its evaluation arguments still loads and tests
    config = yaml.safe_load(state["nwa_config"])
    config["trainer"]["callbacks"] = [{"class_path": "nwa.cli.Summary"}]
    legacy = {"knn_k": 2, "plots": False, "results_file": "legacy.json", "raw_dim": 1024}
    config["model"]["init_args"] |= legacy
    old = tmp_path / "legacy.ckpt"
    torch.save(state | {"nwa_config": yaml.safe_dump(config)}, old)
    test(["--ckpt_path", str(old)])
    (legacy_results,) = tmp_path.rglob("legacy.json")
    assert json.loads(legacy_results.read_text())["zero_shot_top1"] == results["zero_shot_top1"]
    from nwa.predictor import build_module

    assert build_module(torch.load(old, weights_only=True)).hparams.text_encoder == STUB


def test_relu_flag_reaches_probex_and_hparams_are_plain(lora_zoo):
    _, model = build(lora_zoo, relu=False)
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.encoder.modules())
    _, model = build(lora_zoo)
    assert any(isinstance(m, torch.nn.ReLU) for m in model.encoder.modules())
    plain = (str, int, float, bool, type(None), list, tuple, dict)
    assert all(isinstance(v, plain) for v in model.hparams.values()), dict(model.hparams)
    # ProbeX's alignment learning rate is the default
    assert model.hparams.lr == 2e-3 and model.hparams.targets["kind"] == "multiclass"
