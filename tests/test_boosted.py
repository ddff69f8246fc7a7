"""BoostedTreesModule: StatNN's LightGBM trees through ``nwa.fit``/``nwa.test``, with the metric
names of WeightModule, predictions in the task's output space, and checkpoint round trips."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from nwa.lit.boosted import FittedTrees
from nwa.metanets import StatNNBoosted
from tests.zoo_factory import write_chain_zoo

BOOSTED = {
    "class_path": "nwa.lit.boosted.BoostedTreesModule",
    "init_args": {"n_estimators": 30, "min_child_samples": 2},
}
STATNN_MLP = {
    "class_path": "nwa.lit.WeightModule",
    "init_args": {
        "encoder": {"class_path": "nwa.metanets.StatNNMLP", "init_args": {"hidden": [8]}}
    },
}
TARGETS = {
    "multilabel": {"target": "classes"},
    "regression": {"target": "properties", "properties": ["test_acc", "robustness"]},
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return write_chain_zoo(tmp_path_factory.mktemp("chains"))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr("sys.argv", ["pytest"])


def write_recipe(path: Path, zoo, data: dict, model: dict) -> Path:
    cfg = {
        "data": {
            "class_path": "nwa.data.ModelZooDataModule",
            "init_args": {"zoo": str(zoo.root), "layers": "*", "input": "stats", "batch_size": 8}
            | data,
        },
        "model": model,
        "trainer": {
            "max_epochs": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(
                path.parent
            ),  # a fast_dev_run has no logger: checkpoints go here
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(path.parent / "runs")},
            },
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def fit(tmp_path: Path, zoo, data: dict, model: dict, name: str) -> tuple[Path, pd.DataFrame]:
    from nwa.fit import run

    recipe = write_recipe(tmp_path / f"{name}.yaml", zoo, data, model)
    run(["--config", str(recipe), "--run_name", name])
    run_dir = tmp_path / "runs" / name / "version_0"
    return recipe, pd.read_csv(run_dir / "metrics.csv")


def metric_names(logged: pd.DataFrame) -> set[str]:
    return {c for c in logged.columns if c.startswith(("val/", "test/"))}


@pytest.mark.parametrize("kind", ["multilabel", "regression"])
def test_boosted_trees_log_weightmodule_metrics_and_round_trip(tmp_path, zoo, kind):
    from nwa.cli import main

    recipe, logged = fit(tmp_path, zoo, TARGETS[kind], BOOSTED, "boosted")
    _, reference = fit(tmp_path, zoo, TARGETS[kind], STATNN_MLP, "mlp")
    assert metric_names(logged) == metric_names(reference)
    assert "train/loss" in logged.columns
    if kind == "regression":
        # test_acc is a function of fc.weight's mean, one of the StatNN features
        assert "test/r2_test_acc" in logged.columns
        assert logged["val/r2_test_acc"].dropna().iloc[-1] > 0.5
    ckpt = next(tmp_path.glob("boosted/*/checkpoints/best-*.ckpt"))  # the run folder
    saved = torch.load(ckpt, weights_only=True)
    n_out = 2 if kind == "regression" else 6
    assert len(saved["boosted_trees"]["entries"]) == n_out
    cli = main("test", ["--config", str(recipe), "--ckpt_path", str(ckpt)])
    tested = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    fitted = logged.dropna(subset=["test/loss"]).iloc[-1]
    assert tested.keys() == {c for c in metric_names(logged) if c.startswith("test/")}
    for key, value in tested.items():
        assert value == pytest.approx(fitted[key], rel=1e-5, abs=1e-6), key
    # ... and they are the fitted trees' (an unfitted model predicts p = 0.5, or the mean)
    if kind == "regression":
        assert tested["test/r2_test_acc"] > 0.5
    else:
        assert tested["test/loss"] != pytest.approx(math.log(2), abs=1e-3)


def test_predictions_in_the_task_output_space():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    params = {"n_estimators": 20, "min_child_samples": 3, "n_jobs": 1}
    # multilabel (one label constant in training): sigmoid(logits) are the probabilities
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0, np.zeros(60)], axis=1).astype(int)
    model = StatNNBoosted(**params).fit(x, y, "multilabel")
    out = FittedTrees.from_statnn(model).outputs(x, 3)
    np.testing.assert_allclose(1 / (1 + np.exp(-out)), model.predict_proba(x).clip(1e-7), atol=1e-6)
    # multiclass with a class absent from training: log-probabilities, the absent one ~0
    labels = (x[:, 0] > 0).astype(int) * 2  # classes 0 and 2 of 3
    model = StatNNBoosted(**params).fit(x, labels, "multiclass")
    probs = np.exp(FittedTrees.from_statnn(model).outputs(x, 3))
    np.testing.assert_allclose(probs[:, [0, 2]], model.predict_proba(x), atol=1e-6)
    assert probs[:, 1].max() < 1e-6 and (probs.argmax(1) == labels).mean() > 0.9
    # regression: the values, and they survive the string round trip
    targets = np.stack([x[:, 0] * 2, x[:, 1]], axis=1)
    model = StatNNBoosted(**params).fit(x, targets, "regression")
    trees = FittedTrees.from_dict(FittedTrees.from_statnn(model).to_dict())
    np.testing.assert_allclose(trees.outputs(x, 2), model.predict(x), rtol=1e-6)
    # a constant target (or a single training model, which LightGBM refuses) predicts itself
    model = StatNNBoosted(**params).fit(x[:1], targets[:1], "regression")
    trees = FittedTrees.from_dict(FittedTrees.from_statnn(model).to_dict())
    np.testing.assert_allclose(trees.outputs(x, 2), np.broadcast_to(targets[:1], (60, 2)))
    np.testing.assert_allclose(model.predict(x), trees.outputs(x, 2))
    model = StatNNBoosted(**params).fit(x, np.stack([x[:, 0], np.full(60, 0.3)], 1), "regression")
    assert np.all(model.predict(x)[:, 1] == 0.3) and np.ptp(model.predict(x)[:, 0]) > 1


def test_boosted_trees_need_feature_inputs(tmp_path, zoo, capsys):
    from nwa.cli import main

    recipe = write_recipe(tmp_path / "bad.yaml", zoo, {"input": "matrix"}, BOOSTED)
    with pytest.raises(SystemExit) as e:
        main("fit", ["--config", str(recipe)])
    assert (
        e.value.code == 2
        and "BoostedTreesModule accepts data.input 'stats'" in capsys.readouterr().err
    )


def test_modules_built_in_python_record_their_arguments():
    """Built outside LightningCLI, the WeightModule subclasses still save every argument (as
    W&B and checkpoints need), through WeightModule's ``build`` hook."""
    from functools import partial

    from nwa.lit.boosted import BoostedTreesModule
    from nwa.lit.experts import MixtureOfTreeExperts
    from nwa.metanets import ProbeX
    from nwa.tasks import Targets
    from nwa.weights.spec import WeightShapes

    targets = Targets("regression", ("test_acc",))
    boosted = BoostedTreesModule(WeightShapes({}, stats_dim=14), targets, n_estimators=7)
    assert boosted.hparams.n_estimators == 7 and boosted.hparams.num_leaves == 31
    assert "lr" not in boosted.hparams  # no gradient training to configure
    assert boosted.hparams.targets == {"kind": "regression", "names": ("test_acc",), "labels": ()}
    mixture = MixtureOfTreeExperts(
        partial(ProbeX, rank_u=4, rank_v=4, dim=8),
        shapes=WeightShapes({"a": (8, 8), "b": (4, 8)}),
        targets=targets,
        lr=0.01,
        n_trees=2,
    )
    assert (mixture.hparams.lr, mixture.hparams.n_trees) == (0.01, 2)
    assert mixture.hparams.router_layer == "a"  # resolved: the first selected layer
    assert mixture.hparams.selection == "per_expert" and mixture.router.requested_trees == 2
