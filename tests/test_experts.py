"""Tree router (Ward clustering, dendrogram rule, routing, purity) and the mixture of tree experts
trained end to end through ``python -m nwa.fit`` / ``nwa.test``."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from nwa.data.reading import read_layers
from nwa.errors import ConfigError
from nwa.experts import TreeRouter, cluster_purity, count_trees
from tests.zoo_factory import write_chain_zoo


@pytest.fixture(scope="module")
def zoos(tmp_path_factory):
    return {k: write_chain_zoo(tmp_path_factory.mktemp(f"trees{k}"), trees=k) for k in (1, 2, 3)}


def layer_matrix(zoo, rows: pd.DataFrame, layer: str = "conv1.weight") -> torch.Tensor:
    return torch.stack([read_layers(zoo, r, [layer])[layer].flatten() for _, r in rows.iterrows()])


def held_out(zoo) -> pd.DataFrame:
    return zoo.table[zoo.table["split"] != "train"]


def test_router_recovers_two_trees_and_routes_held_out_models(zoos):
    zoo = zoos[2]
    train = zoo.split("train")
    router = TreeRouter()
    clusters = router.fit(layer_matrix(zoo, train), list(train["tree"]))
    assert router.n_trees == 2 and float(router.train_purity) == 1.0
    tree_of_cluster = {int(c): t for c, t in zip(clusters, train["tree"])}
    assert len(set(tree_of_cluster.values())) == 2  # one cluster per tree
    test = held_out(zoo)
    routed = router.route(layer_matrix(zoo, test)).tolist()
    assert [tree_of_cluster[c] for c in routed] == list(test["tree"])
    assert router.purity(routed, list(test["tree"])) == 1.0


@pytest.mark.parametrize("trees", [1, 2, 3])
@pytest.mark.parametrize("layer", ["conv1.weight", "fc.weight"])
def test_dendrogram_rule_finds_the_number_of_trees(zoos, trees, layer):
    zoo = zoos[trees]
    train = zoo.split("train")
    router = TreeRouter()
    router.fit(layer_matrix(zoo, train, layer), list(train["tree"]))
    assert router.n_trees == trees and float(router.train_purity) == 1.0


def test_count_trees_rule_and_override(zoos):
    within = [1.0, 1.1, 0.9, 1.2, 1.05, 0.95]
    assert count_trees(within) == 1
    assert count_trees([*within, 10.0]) == 2
    assert count_trees([*within, 10.0, 11.0]) == 3
    assert count_trees([0.0, 1e-9, *within]) == 1  # near-duplicates do not split a tree
    zoo = zoos[2]
    train = zoo.split("train")
    router = TreeRouter(n_trees=3)  # splitting a tree keeps every cluster pure
    router.fit(layer_matrix(zoo, train), list(train["tree"]))
    assert router.n_trees == 3 and float(router.train_purity) == 1.0


def test_cluster_purity():
    assert cluster_purity([0, 0, 1, 1], ["a", "a", "a", "b"]) == 0.75
    assert cluster_purity([0, 1, 2, 3], ["a", "a", "b", "b"]) == 1.0
    assert cluster_purity([0, 0, 0, 0], ["a", "a", "b", "b"]) == 0.5
    with pytest.raises(ValueError, match="cluster ids"):
        cluster_purity([0], ["a", "b"])


def test_router_state_round_trips_with_weights_only(zoos):
    zoo = zoos[3]
    router = TreeRouter()
    router.fit(layer_matrix(zoo, zoo.split("train")), list(zoo.split("train")["tree"]))
    buf = io.BytesIO()
    torch.save(router.state_dict(), buf)
    buf.seek(0)
    loaded = TreeRouter()
    loaded.load_state_dict(torch.load(buf, weights_only=True))
    x = layer_matrix(zoo, held_out(zoo))
    assert loaded.n_trees == 3 and torch.equal(loaded.route(x), router.route(x))


def test_router_bad_values():
    with pytest.raises(ConfigError, match="n_trees"):
        TreeRouter(n_trees=0)
    with pytest.raises(ConfigError, match="exceeds"):
        TreeRouter(n_trees=5).fit(torch.randn(3, 4))
    with pytest.raises(RuntimeError, match="fit"):
        TreeRouter().route(torch.randn(2, 4))


# ----- MixtureOfTreeExperts through the CLI -----
def write_recipe(
    tmp_path: Path, zoo, data: dict, model: dict, checkpoint: dict | None = None, **trainer
) -> Path:
    cfg = {
        "data": {
            "class_path": "nwa.data.ModelZooDataModule",
            "init_args": {"zoo": str(zoo.root), "batch_size": 8, **data},
        },
        "model": model,
        "trainer": {
            "max_epochs": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path),  # a fast_dev_run has no logger: checkpoints go here
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "runs")},
            },
            **trainer,
        },
    }
    if checkpoint is not None:
        cfg["checkpoint"] = checkpoint
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


MOTE = {
    "class_path": "nwa.lit.experts.MixtureOfTreeExperts",
    "init_args": {"encoder": {"class_path": "nwa.metanets.Dense", "init_args": {"dim": 8}}},
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr("sys.argv", ["pytest"])


def test_mixture_trains_through_the_cli_and_its_checkpoint_tests(tmp_path, zoos):
    from nwa.cli import main
    from nwa.fit import run

    monitor = {"monitor": "val/selected_loss"}
    recipe = write_recipe(tmp_path, zoos[2], {"layers": "*weight"}, MOTE, monitor, max_epochs=3)
    cli, _ = run(["--config", str(recipe), "--run_name", "mote"])
    run_dir = tmp_path / "runs" / "mote" / "version_0"
    logged = pd.read_csv(run_dir / "metrics.csv")
    for key in ("router/purity", "router/n_trees", "val/acc", "val/f1", "test/acc", "test/loss"):
        assert key in logged.columns, key
    # Each expert is kept at the epoch of its own lowest validation loss.
    val = logged.dropna(subset=["val/loss_expert0"]).set_index("epoch")
    for k in (0, 1):
        assert cli.model.best_epoch[k] == val[f"val/loss_expert{k}"].idxmin()
        assert float(cli.model.best_loss[k]) == pytest.approx(val[f"val/loss_expert{k}"].min())
    assert val["val/selected_loss"].is_monotonic_decreasing
    assert logged["router/purity"].dropna().eq(1.0).all()
    assert logged["router/n_trees"].dropna().eq(2.0).all()
    assert logged["test/router_purity"].dropna().eq(1.0).all()
    ckpt = next(tmp_path.glob("mote/*/checkpoints/best-*.ckpt"))  # the run folder
    saved = torch.load(ckpt, weights_only=True)
    assert saved["state_dict"]["router.centres"].shape == (2, 4 * 9)  # conv1.weight, 2 trees
    assert {k.split(".")[1] for k in saved["state_dict"] if k.startswith("experts.")} == {"0", "1"}
    assert saved["hyper_parameters"]["router_layer"] == "conv1.weight"
    assert saved["kept_experts"]["epoch"] == cli.model.best_epoch
    cli = main("test", ["--config", str(recipe), "--ckpt_path", str(ckpt)])
    tested = cli.trainer.callback_metrics
    last = logged.dropna(subset=["test/acc"]).iloc[-1]
    assert float(tested["test/acc"]) == pytest.approx(last["test/acc"])
    assert float(tested["test/loss"]) == pytest.approx(last["test/loss"], rel=1e-5)


@pytest.mark.slow
def test_mixture_keeps_the_same_experts_on_two_ddp_processes(tmp_path, zoos):
    from tests.test_cli import run_cli

    monitor = {"monitor": "val/selected_loss"}
    recipe = write_recipe(tmp_path, zoos[2], {"layers": "*weight"}, MOTE, monitor, max_epochs=3)
    ddp = ["--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    ddp += ["--trainer.strategy", "ddp_find_unused_parameters_true", "--run_name", "ddp"]
    r = run_cli(["nwa.fit", "--config", str(recipe), *ddp], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ddp" / "version_0"
    val = pd.read_csv(run_dir / "metrics.csv").dropna(subset=["val/loss_expert0"])
    saved = torch.load(next(tmp_path.glob("ddp/*/checkpoints/best-*.ckpt")), weights_only=True)
    # The experts' losses are summed over both processes' validation models before the choice.
    kept = saved["kept_experts"]
    for k in (0, 1):
        losses = val.set_index("epoch")[f"val/loss_expert{k}"]
        assert kept["epoch"][k] == losses.idxmin()
        assert float(kept["loss"][k]) == pytest.approx(losses.min())
    assert "test/acc" in r.stdout


def test_mixture_warns_when_the_checkpoint_does_not_monitor_the_kept_experts(tmp_path, zoos):
    from nwa.cli import main

    recipe = write_recipe(tmp_path, zoos[2], {"layers": "*weight"}, MOTE, fast_dev_run=True)
    with pytest.warns(UserWarning, match="set checkpoint.monitor: val/selected_loss"):
        main("fit", ["--config", str(recipe), "--checkpoint.monitor", "val/loss"])


def mixture(k: int = 2, **kw):
    from nwa.lit.experts import MixtureOfTreeExperts
    from nwa.metanets import Dense
    from nwa.tasks import Targets
    from nwa.weights.spec import WeightShapes

    mote = MixtureOfTreeExperts(
        encoder=lambda shapes: Dense(shapes, dim=3),
        shapes=WeightShapes(layers={"w": (2, 2)}),
        targets=Targets("multilabel", ("a", "b")),
        **kw,
    )
    mote.router.centres = torch.zeros(k, 4)  # as if fitted on k trees
    mote._build_experts(k)
    return mote


def mark(mote, value: float) -> None:
    """Set every parameter of every expert to ``value`` (stands for an epoch's weights)."""
    with torch.no_grad():
        for p in mote.experts.parameters():
            p.fill_(value)


def marks(mote) -> list[float]:
    return [float(next(e.parameters()).flatten()[0]) for e in mote.experts]


def test_keep_best_keeps_each_experts_lowest_epoch_and_weighs_the_mixture():
    mote = mixture()
    epochs = [
        ([0.5, 0.4], [3, 0]),
        ([0.3, 0.6], [3, 1]),
        ([0.4, 0.2], [3, 1]),
        ([0.35, 0.3], [3, 1]),
    ]
    selected = []
    for epoch, (losses, counts) in enumerate(epochs):
        mark(mote, float(epoch))
        selected.append(float(mote.keep_best(torch.tensor(losses), torch.tensor(counts), epoch)))
    # Expert 1 had no validation models at epoch 0: its 0.4 is not kept.
    assert mote.best_epoch == [1, 2]
    assert mote.best_loss.tolist() == pytest.approx([0.3, 0.2])
    assert selected == pytest.approx([0.5, (0.3 * 3 + 0.6) / 4, (0.3 * 3 + 0.2) / 4, 0.275])
    assert mixture().keep_best(torch.tensor([1.0, 1.0]), torch.tensor([0, 0]), 0) is None
    mark(mote, 9.0)
    mote.on_fit_end()  # the model left after training is the kept one
    assert marks(mote) == [1.0, 2.0]


def test_kept_experts_replace_the_trained_ones_when_a_checkpoint_is_evaluated(tmp_path):
    from types import SimpleNamespace

    mote = mixture()
    for epoch, losses in enumerate([[0.5, 0.5], [0.4, 0.6], [0.6, 0.7]]):
        mark(mote, float(epoch))
        mote.keep_best(torch.tensor(losses), torch.tensor([2, 2]), epoch)
    checkpoint = {"state_dict": mote.state_dict()}
    mote.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "c.ckpt")

    evaluated = mixture(k=1)  # the expert count comes from the checkpoint's router
    saved = torch.load(tmp_path / "c.ckpt", weights_only=True)
    evaluated.on_load_checkpoint(saved)
    evaluated.load_state_dict(saved["state_dict"])
    assert marks(evaluated) == [1.0, 0.0]
    assert evaluated.best_epoch == [1, 0]

    resumed = mixture()
    resumed._trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"))
    saved = torch.load(tmp_path / "c.ckpt", weights_only=True)
    resumed.on_load_checkpoint(saved)
    resumed.load_state_dict(saved["state_dict"])
    assert marks(resumed) == [2.0, 2.0]  # training goes on from the trained weights ...
    assert resumed.best_loss.tolist() == pytest.approx([0.4, 0.5])  # ... and the kept ones
    resumed.on_fit_end()
    assert marks(resumed) == [1.0, 0.0]

    shared = mixture(selection="shared")  # evaluates the trained weights of one epoch
    saved = torch.load(tmp_path / "c.ckpt", weights_only=True)
    shared.on_load_checkpoint(saved)
    shared.load_state_dict(saved["state_dict"])
    assert marks(shared) == [2.0, 2.0]


def test_mixture_regression_fits_one_scaler_and_pca_per_tree(tmp_path, zoos):
    from nwa.cli import main

    model = {
        "class_path": "nwa.lit.experts.MixtureOfTreeExperts",
        "init_args": {
            "encoder": {"class_path": "nwa.metanets.PCAEncoder", "init_args": {"n_components": 3}},
            "router_layer": "conv2.weight",
        },
    }
    data = {
        "layers": "*weight",
        "input": "flat",
        "target": "properties",
        "properties": ["test_acc"],
    }
    recipe = write_recipe(tmp_path, zoos[2], data, model, fast_dev_run=True)
    cli = main("fit", ["--config", str(recipe)])
    mote = cli.model
    train = zoos[2].split("train")
    assert mote.router.n_trees == 2 and mote.hparams.router_layer == "conv2.weight"
    for expert in mote.experts:
        assert bool(expert["encoder"].fitted)
    # Each expert's target scaler is its own tree's mean, not the whole zoo's.
    means = sorted(float(e["task"].y_mean[0]) for e in mote.experts)
    expected = sorted(train.groupby("tree")["test_acc"].mean().tolist())
    assert means == pytest.approx(expected, abs=1e-5)
    assert abs(means[0] - means[1]) > 1e-3


def test_mixture_rejects_bad_router_layer_and_input_before_training(tmp_path, zoos, capsys):
    from nwa.cli import main

    model = {"class_path": MOTE["class_path"], "init_args": {**MOTE["init_args"]}}
    model["init_args"]["router_layer"] = "fc.bias"
    recipe = write_recipe(tmp_path, zoos[2], {"layers": "*weight"}, model)
    with pytest.raises(SystemExit) as e:
        main("fit", ["--config", str(recipe)])
    assert e.value.code == 2 and "router_layer 'fc.bias' is not among" in capsys.readouterr().err
    recipe = write_recipe(tmp_path, zoos[2], {"layers": "*weight", "input": "stats"}, MOTE)
    with pytest.raises(SystemExit):
        main("fit", ["--config", str(recipe)])
    assert "MixtureOfTreeExperts accepts data.input 'matrix' or 'flat'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))
    recipe = write_recipe(tmp_path, zoos[2], {"layers": "*weight"}, MOTE)
    with pytest.raises(SystemExit):  # nothing to evaluate without training or a checkpoint
        main("test", ["--config", str(recipe)])
    assert "no router or experts yet" in capsys.readouterr().err
