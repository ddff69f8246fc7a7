"""ModelZooDataModule: every input family, every target kind, splits, normalisation, errors."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from nwa.data import ModelZooDataModule
from nwa.errors import (
    ConfigError,
    GraphBuildError,
    LayerNotFoundError,
    NonFiniteWeightsError,
    ShapeMismatchError,
)
from nwa.weights import io as wio
from nwa.weights.graph import NODE_DIM, edge_list
from nwa.weights.spec import GraphShapes
from nwa.zoo.manifest import ZooMeta, ZooWriter
from tests.zoo_factory import write_chain_zoo, write_mixed_zoo


@pytest.fixture(scope="module")
def chain_zoo(tmp_path_factory):
    return write_chain_zoo(tmp_path_factory.mktemp("chains"))


def first_batch(dm: ModelZooDataModule, stage: str = "train"):
    return next(iter(getattr(dm, f"{stage}_dataloader")()))


def test_matrix_input_shapes_and_links(chain_zoo):
    dm = ModelZooDataModule(str(chain_zoo.root), layers=["conv2.weight", "fc.weight"], batch_size=4)
    assert dm.layer_shapes == {"conv2.weight": (4, 36), "fc.weight": (6, 4)}
    assert dm.num_outputs == 6 and dm.task_type == "multilabel"
    batch = first_batch(dm)
    assert batch["x"]["conv2.weight"].shape == (4, 4, 36)
    assert batch["x"]["fc.weight"].shape == (4, 6, 4)
    assert batch["y"].shape == (4, 6) and set(batch["y"].unique().tolist()) <= {0.0, 1.0}
    assert batch["y"].sum(1).eq(3).all()  # every model trained on 3 of 6 classes


def test_layer_selection_by_glob_regex_and_index(chain_zoo):
    root = str(chain_zoo.root)
    assert ModelZooDataModule(root, layers="conv*.weight").layer_names == [
        "conv1.weight",
        "conv2.weight",
    ]
    assert ModelZooDataModule(root, layers="re:fc\\..*").layer_names == ["fc.weight", "fc.bias"]
    assert ModelZooDataModule(root, layers=0).layer_names == ["conv1.weight"]
    assert ModelZooDataModule(root, layers=-1).layer_names == ["fc.bias"]


def test_flat_and_stats_inputs(chain_zoo):
    dm = ModelZooDataModule(str(chain_zoo.root), layers="*", input="flat", batch_size=3)
    assert (
        first_batch(dm)["x"].shape == (3, dm.flat_dim) and dm.flat_dim == 36 + 4 + 144 + 4 + 24 + 6
    )
    dm = ModelZooDataModule(str(chain_zoo.root), layers="*", input="stats", batch_size=3)
    assert first_batch(dm)["x"].shape == (3, dm.stats_dim) and dm.stats_dim == 7 * 6


def test_chain_and_graph_inputs(chain_zoo):
    dm = ModelZooDataModule(str(chain_zoo.root), layers="*.weight", input="chain", batch_size=4)
    assert dm.chain_shapes == [(4, 1, 9), (4, 4, 9), (6, 4, 1)]
    x = first_batch(dm)["x"]
    assert [w.shape for w in x["weights"]] == [(4, 4, 1, 9), (4, 4, 4, 9), (4, 6, 4, 1)]
    assert [b.shape for b in x["biases"]] == [(4, 4), (4, 4), (4, 6)]
    dm = ModelZooDataModule(str(chain_zoo.root), layers="*.weight", input="graph", batch_size=4)
    g = first_batch(dm)["x"]
    assert g.num_graphs == 4
    assert g.num_nodes == 4 * (1 + 4 + 4 + 6)
    assert edge_list(g)[0].shape[1] == 4 * (4 * 1 + 4 * 4 + 6 * 4)
    assert dm.shapes.graph == GraphShapes(NODE_DIM, edge_dim=9, depth=3, outputs=6)


def test_permutation_augmentation_preserves_function(chain_zoo):
    dm = ModelZooDataModule(
        str(chain_zoo.root), layers="*.weight", input="chain", permute_augment=True, normalize=False
    )
    ds = dm.dataset("train")
    raw = ds.tensors(0)
    aug = dm.permute(raw, 0)
    assert not torch.equal(aug["conv1.weight"], raw["conv1.weight"]) or not torch.equal(
        aug["conv2.weight"], raw["conv2.weight"]
    )
    # drawn from the seeds, the epoch and the model alone: a resumed run draws the same
    assert torch.equal(dm.permute(raw, 0)["conv1.weight"], aug["conv1.weight"])
    dm.set_epoch(1)
    assert not torch.equal(dm.permute(raw, 0)["conv1.weight"], aug["conv1.weight"])

    def run(s, x):
        h = torch.relu(torch.nn.functional.conv2d(x, s["conv1.weight"], s["conv1.bias"], padding=1))
        h = torch.relu(torch.nn.functional.conv2d(h, s["conv2.weight"], s["conv2.bias"], padding=1))
        return h.mean((2, 3)) @ s["fc.weight"].T + s["fc.bias"]

    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(run(aug, x), run(raw, x), atol=1e-5, rtol=1e-5)


def test_targets_tree_arch_properties(chain_zoo):
    root = str(chain_zoo.root)
    dm = ModelZooDataModule(root, layers="fc.weight", target="tree", batch_size=8)
    assert dm.class_names == ["tree0", "tree1"] and dm.task_type == "multiclass"
    assert first_batch(dm)["y"].dtype == torch.long
    dm = ModelZooDataModule(
        root, layers="fc.weight", target="properties", properties=["test_acc", "gen_gap", "depth"]
    )
    y = first_batch(dm)["y"]
    assert y.shape[1] == 3 and torch.allclose(y[:, 1], torch.full_like(y[:, 1], 0.05), atol=1e-5)
    assert torch.all(y[:, 2] == 3)


def test_splits_and_tree_filter(chain_zoo):
    dm = ModelZooDataModule(str(chain_zoo.root), layers="fc.weight", trees=["tree1"])
    assert set(dm.rows["tree"]) == {"tree1"}
    assert (
        len(dm.dataset("train")) == 6
        and len(dm.dataset("val")) == 3
        and len(dm.dataset("test")) == 3
    )


def test_normalisation_uses_training_models_only(chain_zoo):
    dm = ModelZooDataModule(str(chain_zoo.root), layers="fc.weight")
    train_ids = set(chain_zoo.split("train")["id"])
    from nwa.data.reading import read_layers

    values = torch.cat(
        [
            read_layers(chain_zoo, r, ["fc.weight"])["fc.weight"].flatten()
            for _, r in chain_zoo.table.iterrows()
            if r["id"] in train_ids
        ]
    )
    assert dm.normalizer.mean["fc.weight"] == pytest.approx(float(values.mean()), abs=1e-6)
    assert dm.normalizer.std["fc.weight"] == pytest.approx(float(values.std()), abs=1e-6)


def test_reads_only_selected_tensors(chain_zoo, monkeypatch):
    read = []
    original = wio.SafetensorsFile._read_bytes  # where every read of tensor data goes
    monkeypatch.setattr(
        wio.SafetensorsFile,
        "_read_bytes",
        lambda self, name, out: read.append(name) or original(self, name, out),
    )
    dm = ModelZooDataModule(str(chain_zoo.root), layers="fc.weight", normalize=False, cache=False)
    assert read == []  # building reads headers only
    first_batch(dm)
    assert set(read) == {"fc.weight"}


def test_per_rank_batch_size(chain_zoo):
    dm = ModelZooDataModule(str(chain_zoo.root), layers="fc.weight", batch_size=8)
    dm.trainer = SimpleNamespace(world_size=2)
    assert dm.per_rank_batch_size() == 4
    assert first_batch(dm)["y"].shape[0] == 4
    dm.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(ConfigError, match="divisible"):
        dm.per_rank_batch_size()


def test_missing_layer_in_some_model_names_the_file(tmp_path):
    zoo = write_chain_zoo(tmp_path, trees=1, per_tree=4)
    victim = zoo.path_of(zoo.table.iloc[2])
    state = {"conv1.weight": torch.randn(4, 1, 3, 3)}
    save_file(state, str(victim))
    with pytest.raises(LayerNotFoundError, match=victim.name):
        ModelZooDataModule(str(tmp_path), layers="fc.weight")


def test_shape_mismatch_names_the_file(tmp_path):
    zoo = write_chain_zoo(tmp_path, trees=1, per_tree=4)
    victim = zoo.path_of(zoo.table.iloc[1])
    save_file({"fc.weight": torch.randn(7, 4)}, str(victim))
    with pytest.raises(ShapeMismatchError, match=r"\[7, 4\]"):
        ModelZooDataModule(str(tmp_path), layers="fc.weight")


def test_nonfinite_weights_fail_or_are_dropped(tmp_path):
    zoo = write_chain_zoo(tmp_path, trees=1, per_tree=8)
    row = zoo.split("train").iloc[0]
    bad = torch.randn(6, 4)
    bad[0, 0] = float("nan")
    save_file({"fc.weight": bad}, str(zoo.path_of(row)))
    with pytest.raises(NonFiniteWeightsError, match="NaN or Inf"):
        ModelZooDataModule(str(tmp_path), layers="fc.weight")
    with pytest.warns(UserWarning, match=row["id"]):
        dm = ModelZooDataModule(str(tmp_path), layers="fc.weight", drop_nonfinite=True)
    assert row["id"] not in set(dm.rows["id"]) and len(dm.rows) == 7


def test_bad_configuration_fails_clearly(chain_zoo, tmp_path):
    root = str(chain_zoo.root)
    with pytest.raises(ConfigError, match="no such zoo"):
        ModelZooDataModule(str(tmp_path / "nowhere"), layers="fc.weight")
    with pytest.raises(ConfigError, match="no label 'sharpness'"):
        ModelZooDataModule(root, layers="fc.weight", target="properties", properties=["sharpness"])
    with pytest.raises(ConfigError, match="concept"):
        ModelZooDataModule(root, layers="fc.weight", target="concept")
    with pytest.raises(ConfigError, match="no model matches"):
        ModelZooDataModule(root, layers="fc.weight", trees=["oak*"])
    with pytest.raises(LayerNotFoundError, match="fc.weight"):
        ModelZooDataModule(root, layers="fc.weights")
    with pytest.raises(ConfigError, match="permute_augment"):
        ModelZooDataModule(root, layers="fc.weight", permute_augment=True)


def test_stats_features_are_computed_once_per_model(chain_zoo, monkeypatch):
    import nwa.weights.stats as stats

    calls = []
    original = stats.statnn_features
    monkeypatch.setattr(stats, "statnn_features", lambda ts: calls.append(1) or original(ts))
    dm = ModelZooDataModule(str(chain_zoo.root), layers="*", input="stats", batch_size=4)
    for _ in range(3):
        for _ in dm.train_dataloader():
            pass
    assert len(calls) == len(dm.dataset("train"))


def _per_item_batches(dm: ModelZooDataModule, loader) -> list[dict]:
    """The batches ``loader`` yields, built the old way: one item at a time, then collated."""
    ds = loader.dataset
    return [dm.collate([ds[i] for i in idx]) for idx in loader.batch_sampler]


def _assert_same_batch(got, want) -> None:
    assert got.keys() == want.keys()
    for key in want:
        g, w = got[key], want[key]
        if isinstance(w, dict):
            assert g.keys() == w.keys()
            for name in w:
                assert g[name].shape == w[name].shape and torch.equal(g[name], w[name])
        else:
            assert g.dtype == w.dtype and g.shape == w.shape and torch.equal(g, w)


@pytest.mark.parametrize("input", ["matrix", "flat"])
@pytest.mark.parametrize("cache", [False, True])
def test_batched_fetch_equals_items_then_collate(chain_zoo, input, cache):
    # Models are read straight into their batch slots; the result must be exactly what reading
    # each item and stacking gives, normalised, with a short last batch, cached or not.
    kw = dict(layers=["conv2.weight", "fc.weight", "fc.bias"], input=input, batch_size=5)
    dm = ModelZooDataModule(str(chain_zoo.root), cache=cache, **kw)
    assert dm.normalizer.std["fc.weight"] != 1.0
    # the expected batches come from an uncached module: a cached one would serve the items
    # from the very cache the batched reads filled
    ref = ModelZooDataModule(str(chain_zoo.root), cache=False, **kw)
    loader = dm.val_dataloader()
    for _ in range(2):  # the second epoch reads from the cache when there is one
        got = list(loader)
        want = _per_item_batches(ref, ref.val_dataloader())
        assert len(got) == len(want) == 2 and len(got[-1]["y"]) == len(dm.dataset("val")) - 5
        for g, w in zip(got, want):
            _assert_same_batch(g, w)


def test_batched_fetch_gives_items_to_other_collates(chain_zoo):
    from torch.utils.data import DataLoader, default_collate

    dm = ModelZooDataModule(str(chain_zoo.root), layers="fc.weight", batch_size=4)
    ds = dm.dataset("train")
    items = ds.__getitems__([3, 1, 2])
    assert len(items) == 3 and [it["index"] for it in items] == [3, 1, 2]
    for it in items:
        want = ds[it["index"]]
        assert torch.equal(it["x"]["fc.weight"], want["x"]["fc.weight"])
        assert torch.equal(it["y"], want["y"])
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=default_collate)))
    _assert_same_batch(batch, dm.collate([ds[i] for i in range(4)]))


@pytest.mark.parametrize("cache", [False, True])
def test_batched_fetch_checks_finite_and_names_the_file(tmp_path, cache):
    zoo = write_chain_zoo(tmp_path, trees=1, per_tree=8)
    kw = dict(layers=["conv1.weight", "fc.weight"], normalize=False, cache=cache, batch_size=4)
    dm = ModelZooDataModule(str(tmp_path), **kw)
    row = zoo.split("train").iloc[1]
    bad = torch.randn(6, 4)
    bad[2, 1] = float("inf")
    save_file({"conv1.weight": torch.randn(4, 1, 3, 3), "fc.weight": bad}, str(zoo.path_of(row)))
    for _ in range(2):  # and again: a bad model is never cached as good
        with pytest.raises(NonFiniteWeightsError, match=rf"{zoo.path_of(row).name} \[fc.weight\]"):
            list(dm.train_dataloader())


def test_worker_batches_equal_main_process_batches(chain_zoo, monkeypatch):
    # Workers build batches in shared memory; they must match those built in the main process.
    kw = dict(layers=["conv1.weight", "fc.weight"], batch_size=4, cache=False)
    main = ModelZooDataModule(str(chain_zoo.root), **kw)
    workers = ModelZooDataModule(str(chain_zoo.root), num_workers=1, **kw)
    got = list(workers.val_dataloader())
    for g, w in zip(got, main.val_dataloader(), strict=True):
        _assert_same_batch(g, w)
    import nwa.data.module as module

    assert not main.batch_memory(8).is_shared()
    monkeypatch.setattr(module, "get_worker_info", lambda: object())  # as inside a worker
    assert main.batch_memory(8).is_shared()  # sending it to the main process copies nothing


def test_batch_memory_reuses_only_blocks_nothing_references():
    import pickle

    from nwa.data.reading import BatchMemory

    memory = BatchMemory(keep=2)
    a = memory(100)
    ptr = a.data_ptr()
    a.fill_(1.0)
    row = a.view(10, 10)[3]  # a view keeps the block busy, as a model's input slice would
    del a
    b = memory(100)
    assert b.data_ptr() != ptr and row.eq(1.0).all()
    del row
    d = memory(80)
    assert d.data_ptr() == ptr  # free again; a smaller request fits it
    c = memory(100)  # both kept blocks are busy and keep=2 is reached: a block not kept
    assert c.data_ptr() not in (ptr, b.data_ptr()) and len(memory._blocks) == 2
    del b
    assert memory(300).numel() == 300  # replaces the idle block too small for it
    assert ptr in [blk.ctypes.data for blk in memory._blocks]  # d's block, still busy, stays
    assert pickle.loads(pickle.dumps(memory))._blocks == []


def test_held_batches_are_never_overwritten(chain_zoo):
    dm = ModelZooDataModule(str(chain_zoo.root), layers="fc.weight", batch_size=2, cache=False)
    held = [(b["x"]["fc.weight"], b["x"]["fc.weight"].clone()) for b in dm.train_dataloader()]
    only_view = next(iter(dm.train_dataloader()))["x"]["fc.weight"][1]
    copy = only_view.clone()
    for _ in range(2):
        for _ in dm.train_dataloader():
            pass
    assert len(held) > 4
    assert all(torch.equal(t, want) for t, want in held) and torch.equal(only_view, copy)
    # A loop that drops each batch needs two blocks: the batch it holds and the next one.
    dm = ModelZooDataModule(str(chain_zoo.root), layers="fc.weight", batch_size=2, cache=False)
    for _ in range(2):
        for _ in dm.train_dataloader():
            pass
    assert len(dm._memory._blocks) == 2


# ----- any zoo by one field ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn_zoo(tmp_path_factory):
    from tests.zoo_factory import write_small_cnn_zoo

    return write_small_cnn_zoo(tmp_path_factory.mktemp("small-cnn"))


def test_zoo_presets_fill_only_what_the_run_leaves_unset(chain_zoo):
    root = str(chain_zoo.root)  # a zoo named "chains"
    preset = [
        {"zoos": ["default_*"], "trees": ["nothing*"]},
        {"zoos": ["ch*"], "trees": ["tree1"], "layers": "conv2.weight"},
    ]
    dm = ModelZooDataModule(root, zoo_presets=preset)
    assert set(dm.rows["tree"]) == {"tree1"} and dm.layer_names == ["conv2.weight"]
    dm = ModelZooDataModule(root, zoo_presets=preset, layers="fc.weight", trees=["tree0"])
    assert set(dm.rows["tree"]) == {"tree0"} and dm.layer_names == ["fc.weight"]  # run wins
    other = [{"trees": ["vision-*"], "arch": "resnet_*", "layers": "layer4.*"}]
    dm = ModelZooDataModule(root, zoo_presets=other)  # no such models here: every model
    assert len(dm.rows) == len(chain_zoo.table) and dm.selection["trees"] is None
    with pytest.raises(ConfigError, match="unknown fields \\['target'\\]"):
        ModelZooDataModule(root, zoo_presets=[{"zoos": ["*"], "target": "tree"}])


def test_unset_layers_fit_the_input(chain_zoo):
    root = str(chain_zoo.root)
    # conv2 (4x4x3x3) is the largest: 144 values against fc's 24 and conv1's 36
    assert ModelZooDataModule(root).layer_names == ["conv2.weight"]
    assert ModelZooDataModule(root, input="flat").layer_names == ["conv2.weight"]
    chain = ModelZooDataModule(root, input="chain")
    assert chain.layer_names == ["conv1.weight", "conv2.weight", "fc.weight"]
    stats = ModelZooDataModule(root, input="stats")
    assert stats.spec.names == [
        f"{n}.{p}" for p in ("weight", "bias") for n in ("conv1", "conv2", "fc")
    ]


def test_largest_layer_is_the_deepest_of_equals(cnn_zoo):
    dm = ModelZooDataModule(str(cnn_zoo), target="activation")
    assert dm.layer_names == ["conv2d_2.weight"]  # conv2d_1 and conv2d_2 are both 16x16x3x3
    dm = ModelZooDataModule(str(cnn_zoo), target="activation", layers=["matrices", "dense.bias"])
    names = [f"{c}.weight" for c in ("conv2d", "conv2d_1", "conv2d_2", "dense")]
    assert dm.layer_names == [*names, "dense.bias"]


def test_a_filter_that_excludes_every_model_lists_the_trees_and_archs(chain_zoo, cnn_zoo):
    with pytest.raises(ConfigError) as e:
        ModelZooDataModule(str(chain_zoo.root), trees=["vision-*"], arch="resnet_*")
    assert "has 2 trees ['tree0', 'tree1'] and 1 architectures ['cnn']" in str(e.value)
    with pytest.raises(ConfigError, match=r"no trees \(every model stands alone\) and 1 arch"):
        ModelZooDataModule(str(cnn_zoo), trees=["vision-*"], target="activation")


def test_split_protocol_from_the_data_module(cnn_zoo):
    kw = {"target": "properties", "properties": ["test_acc"]}
    dm = ModelZooDataModule(str(cnn_zoo), **kw)  # the adapter's 80/10/10, seed 0; 2 diverged out
    assert len(dm.rows) == 38
    nfn = ModelZooDataModule(str(cnn_zoo), split={"fractions": [0.45, 0.05, 0.5], "seed": 1}, **kw)
    assert nfn.rows["split"].value_counts().to_dict() == {"test": 19, "train": 17, "val": 2}
    again = ModelZooDataModule(
        str(cnn_zoo), split={"fractions": [0.45, 0.05, 0.5], "seed": 1}, **kw
    )
    assert list(again.rows["split"]) == list(nfn.rows["split"])
    by_option = ModelZooDataModule(str(cnn_zoo), adapter_options={"seed": 3}, **kw)
    assert list(by_option.rows["split"]) != list(dm.rows["split"])
    with pytest.raises(ConfigError, match="split column 'optimizer' holds \\['adam', 'sgd'\\]"):
        ModelZooDataModule(str(cnn_zoo), split={"column": "optimizer"}, **kw)
    with pytest.raises(ConfigError, match="must be 3 numbers"):
        ModelZooDataModule(str(cnn_zoo), split={"fractions": [0.5, 0.6]}, **kw)


def test_split_column_names_each_models_split(cnn_zoo, tmp_path):
    import shutil

    import pandas as pd

    root = shutil.copytree(cnn_zoo, tmp_path / "cnn")
    metrics = pd.read_csv(root / "metrics.csv.gz")
    metrics["fold"] = ["training", "validation", "test", "train"] * (len(metrics) // 4)
    metrics.to_csv(root / "metrics.csv.gz", index=False, compression="gzip")
    dm = ModelZooDataModule(str(root), target="activation", split={"column": "fold"})
    folds = {"training": "train", "validation": "val", "test": "test", "train": "train"}
    assert list(dm.rows["split"]) == [folds[lab["fold"]] for lab in dm.rows["labels"]]


def test_labels_the_zoo_lacks_and_categorical_targets(cnn_zoo):
    with pytest.raises(ConfigError) as e:
        ModelZooDataModule(str(cnn_zoo), target="properties", properties=["test_acc", "robustness"])
    message = str(e.value)
    assert "no label 'robustness'" in message and "\n" not in message
    assert "'test_acc'" in message and "categorical labels ['activation'" in message
    with pytest.raises(
        ConfigError, match="label 'classes' is empty for every selected model; the selected"
    ):
        ModelZooDataModule(str(cnn_zoo))
    dm = ModelZooDataModule(str(cnn_zoo), target="activation")
    assert dm.class_names == ["relu", "tanh"] and dm.targets.kind == "multiclass"
    y = dm.encode_targets(dm.rows)
    assert [dm.class_names[i] for i in y] == [h["activation"] for h in dm.rows["hparams"]]


def test_a_nonfinite_model_is_named_with_its_rows_and_the_option(cnn_zoo):
    with pytest.raises(NonFiniteWeightsError) as e:
        ModelZooDataModule(str(cnn_zoo), target="activation", drop_nonfinite=False)
    message = str(e.value)
    assert "weights.npy [conv2d_2.weight]: 2304 of 2304 values are NaN or Inf" in message
    ref = re.search(r"\(model cnn_0000(\d+), manifest row (\d+), weights.npy row (\d+)\)", message)
    assert ref and ref[1] == ref[3] in ("11", "47") and int(ref[2]) == int(ref[3]) // 2
    assert "drop_nonfinite: true" in message and "\n" not in message
    with pytest.warns(UserWarning, match="leaving out 2 models with NaN/Inf weights"):
        dm = ModelZooDataModule(str(cnn_zoo), target="activation")  # diverged runs: dropped
    assert len(dm.rows) == 38


@pytest.fixture(scope="module")
def mixed_zoo(tmp_path_factory):
    return write_mixed_zoo(tmp_path_factory.mktemp("mixed"))


def test_graph_input_batches_architectures_together(mixed_zoo):
    """No reference model: an MLP, a CNN, a ResNet and a ViT each get their own graph, and one
    batch holds all four; each graph in the batch is the model's graph alone."""
    from torch_geometric.data import Batch

    from nwa.metanets import NWPA

    dm = ModelZooDataModule(
        str(mixed_zoo.root), layers="*", input="graph", target="properties",
        properties=["test_acc"], batch_size=8, normalize=False,
    )  # fmt: skip
    assert len(dm.graphs.plans) == 4
    assert {p.family for p in dm.graphs.plans} == {"sequential", "resnet", "vit"}
    assert dm.shapes.graph.edge_dim == 64 and dm.shapes.graph.outputs == 5
    batch = first_batch(dm)
    x, rows = batch["x"], dm.dataset("train").rows.iloc[batch["index"].tolist()]
    assert set(rows["arch"]) == {"mlp", "cnn", "resnet", "vit"}
    ds = dm.dataset("train")
    alone = Batch.from_data_list([ds[int(i)]["x"] for i in batch["index"]])
    assert torch.equal(x.x, alone.x) and torch.equal(x.w, alone.w)
    enc = NWPA(dm.shapes, hidden=8, layers=1)
    assert enc(x).shape == (8, 8)


def test_graph_input_normalizes_and_permutes_each_architecture(mixed_zoo):
    dm = ModelZooDataModule(
        str(mixed_zoo.root), layers="*", input="graph", permute_augment=True, batch_size=8
    )
    assert "blocks.0.attn.qkv.weight" in dm.normalizer.mean and "6.weight" in dm.normalizer.mean
    ds = dm.dataset("train")
    vit = next(i for i, r in enumerate(ds._records) if r["arch"] == "vit")
    raw = dm.normalizer(ds.tensors(vit))
    aug = dm.permute(raw, vit, ds._records[vit])
    assert not torch.equal(aug["blocks.0.attn.qkv.weight"], raw["blocks.0.attn.qkv.weight"])
    head, raw_head = aug["head.weight"], raw["head.weight"]  # columns move, rows (outputs) stay
    assert torch.equal(head.sort(1).values, raw_head.sort(1).values)


def test_unbuildable_graph_names_the_file(tmp_path):
    zoo = write_mixed_zoo(tmp_path / "zoo", per_family=4)
    row = zoo.table[zoo.table["arch"] == "resnet"].iloc[1]
    path = zoo.path_of(row)
    with wio.open_weights(path) as src:
        tensors = {n: src.get(n) for n in src.names()}
    tensors["layer1.0.se.fc.weight"] = torch.randn(2, 4, 1, 1)
    save_file(tensors, str(path))
    with pytest.raises(GraphBuildError) as e:
        ModelZooDataModule(str(zoo.root), layers="*", input="graph")
    assert str(path) in str(e.value) and "layer1.0.se.fc.weight" in str(e.value)
    with pytest.raises(GraphBuildError, match="more than the limit"):
        ModelZooDataModule(
            str(zoo.root), layers="*", input="graph", arch="vit", graph_max_edges=100
        )


@pytest.fixture(scope="module")
def labelled_zoo(tmp_path_factory):
    """A zoo with labels nwa has no code for: a declared class label with integer values, a
    multi-label label of names, an undeclared number and an undeclared name."""
    from tests.zoo_factory import cnn_chain

    root = tmp_path_factory.mktemp("labelled")
    schema = {"width": "multiclass", "score": "regression"}
    meta = ZooMeta(name="labelled", classes=["a", "b"], label_schema=schema)
    writer = ZooWriter(root, meta)
    gen = torch.Generator().manual_seed(0)
    for m in range(12):
        path = writer.save_weights(f"m{m}", cnn_chain(gen))
        labels = {
            "width": [8, 16, 32][m % 3],
            "colours": [["red"], ["red", "blue"], ["green"]][m % 3],
            "score": m / 10,
            "quality": m * 1.5,
            "optimizer": ["adam", "sgd"][m % 2],
        }
        split = ["train", "train", "val", "test"][m % 4]
        writer.add(dict(id=f"m{m}", path=path, tree="t", arch="cnn", split=split, labels=labels))
    return writer.finalize(expected=12)


@pytest.mark.parametrize(
    ("label", "kind", "names"),
    [
        ("width", "multiclass", ("16", "32", "8")),  # declared: integers as classes
        ("colours", "multilabel", ("blue", "green", "red")),  # lists of names
        ("score", "regression", ("score",)),  # declared
        ("quality", "regression", ("quality",)),  # undeclared numbers
        ("optimizer", "multiclass", ("adam", "sgd")),  # undeclared names
    ],
)
def test_any_label_is_a_target_with_its_kind_from_the_schema(labelled_zoo, label, kind, names):
    dm = ModelZooDataModule(str(labelled_zoo.root), layers="fc.weight", target=label)
    assert dm.targets.kind == dm.task_type == kind and dm.targets.names == names
    y = dm.encode_targets(dm.rows)
    values = [lab[label] for lab in dm.rows["labels"]]
    if kind == "multiclass":
        assert [names[i] for i in y] == [str(v) for v in values]
    elif kind == "multilabel":
        assert [{names[i] for i in row.nonzero().flatten()} for row in y] == [
            set(v) for v in values
        ]
    else:
        assert y.shape == (len(values), 1) and y[:, 0].tolist() == pytest.approx(values)


def test_labels_target_mixes_kinds_and_refuses_multilabel(labelled_zoo):
    dm = ModelZooDataModule(
        str(labelled_zoo.root), layers="fc.weight", target="labels", properties=["width", "score"]
    )
    assert [t.kind for t in dm.targets.labels] == ["multiclass", "regression"]
    with pytest.raises(ConfigError, match="label 'colours' is multi-label; target 'labels'"):
        ModelZooDataModule(
            str(labelled_zoo.root), layers="fc.weight", target="labels", properties=["colours"]
        )
