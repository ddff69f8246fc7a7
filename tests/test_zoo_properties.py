"""The property zoo recipe (small CNNs and MLPs from scratch, several checkpoints per run) and
its export to the Small CNN Zoo's public layout."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nwa.errors import ConfigError
from nwa.zoo.__main__ import main
from nwa.zoo.adapters.small_cnn_zoo import open_small_cnn_zoo
from nwa.zoo.build import BuildStopped, build
from nwa.zoo.manifest import Zoo
from nwa.zoo.plan import make_plan
from nwa.zoo.report import file_hashes

RUN = {"optimizer": ["adam"], "lr": [0.003, 0.01], "eval_images": 120}
CONFIG = {
    "name": "props_tiny",
    "seed": 0,
    "recipes": [
        {
            "class_path": "nwa.zoo.properties.PropertyRecipe",
            "init_args": {"archs": ["small_cnn", "small_mlp"], "runs_per_arch": 3}
            | {"checkpoints": [1, 2], "train_fraction": [0.1, 0.2], "splits": [0.34, 0.33, 0.33]}
            | RUN,
        },
        {  # learning rates no network survives: diverged runs, kept and flagged
            "class_path": "nwa.zoo.properties.PropertyRecipe",
            "init_args": {"name": "blowup", "runs_per_arch": 1, "checkpoints": [1, 2]}
            | {"optimizer": ["sgd"], "lr": [1000.0, 2000.0], "init": ["normal"]}
            | {"init_std": [1.0, 2.0], "train_fraction": [0.1, 0.1], "eval_images": 120},
        },
    ],
}


@pytest.fixture(scope="module")
def props_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("props") / "zoo"
    assert build(CONFIG, out, threads=1).zoo is not None
    return out


def test_runs_are_kept_at_every_checkpoint_in_one_split(props_zoo: Path) -> None:
    zoo = Zoo.open(props_zoo)
    t = zoo.table
    assert len(t) == 2 * (2 * 3 + 1)
    assert set(t["arch"]) == {"small_cnn", "small_mlp"}
    assert t.groupby("tree")["split"].nunique().max() == 1  # a run never straddles splits
    assert set(t["split"]) == {"train", "val", "test"}
    epochs = t["labels"].map(lambda lb: lb["epoch"])
    assert sorted(set(epochs)) == [1.0, 2.0]
    with zoo.open_model(t.iloc[0]) as src:
        assert src.names() == [
            f"conv2d{s}.{k}" for s in ("", "_1", "_2") for k in ("weight", "bias")
        ] + [
            "dense.weight",
            "dense.bias",
        ]
    hp = t["hparams"].iloc[0]
    assert {"optimizer", "lr", "init", "init_std", "l2", "dropout", "train_fraction"} <= set(hp)
    assert t["test_acc"].between(0, 1).all()
    assert {"diverged", "epoch", "gen_gap"} <= set(zoo.meta.label_schema)


def test_diverged_runs_are_kept_and_flagged(props_zoo: Path) -> None:
    zoo = Zoo.open(props_zoo)
    t = zoo.table
    flagged = t[t["labels"].map(lambda lb: lb["diverged"] == 1.0)]
    assert set(flagged["tree"]) == {"blowup-small_cnn-r0000"}
    for _, row in t.iterrows():
        with zoo.open_model(row) as src:
            finite = all(torch.isfinite(src.get(n)).all() for n in src.names())
        assert finite == (row["labels"]["diverged"] == 0.0), row["id"]


def test_property_zoo_rebuilds_bit_identically_in_shards_and_resumes(
    props_zoo: Path, tmp_path: Path
) -> None:
    """A run that writes several checkpoints is one job: shards, a stop and a resume give the
    same bytes as the one-process build."""
    out = tmp_path / "zoo"
    assert build(CONFIG, out, shard="0/2", threads=1).zoo is None
    with pytest.raises(BuildStopped):
        build(CONFIG, out, shard="1/2", threads=1, stop_after=1)
    assert build(CONFIG, out, shard="1/2", threads=1).zoo is not None
    assert file_hashes(out) == file_hashes(props_zoo)


def test_plan_seeds_each_run_from_its_id() -> None:
    """Adding runs leaves the earlier runs' hyperparameters as they were."""
    more = copy.deepcopy(CONFIG)
    more["recipes"][0]["init_args"]["runs_per_arch"] = 5
    jobs = {j.id: j for _, j in make_plan(CONFIG).members}
    grown = {j.id: j for _, j in make_plan(more).members}
    assert all(grown[k].params == v.params for k, v in jobs.items())
    assert all(len(j.rows) == 2 and j.rows[-1] == j.id for j in jobs.values())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"checkpoints": [2, 1]}, "checkpoints"),
        ({"lr": [0.1, 0.01]}, "lr"),
        ({"optimizer": ["lbfgs"]}, "optimizer"),
        ({"dropout": [0.0, 1.0]}, "dropout"),
        ({"archs": ["resnet18"]}, "archs"),
    ],
)
def test_bad_values_are_refused_before_training(change: dict, message: str) -> None:
    bad = copy.deepcopy(CONFIG)
    bad["recipes"][0]["init_args"].update(change)
    with pytest.raises(ConfigError, match=message):
        make_plan(bad)


def test_export_reads_back_through_the_small_cnn_zoo_adapter(
    props_zoo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "public"
    assert main(["export", "--format", "small_cnn_zoo", str(props_zoo), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["small_cnn", "small_mlp"]
    assert not list(out.rglob("*.tmp"))
    zoo = Zoo.open(props_zoo)
    for arch in ("small_cnn", "small_mlp"):
        public = open_small_cnn_zoo(out / arch, step=None)
        mine = zoo.table[zoo.table["arch"] == arch].sort_values("id").reset_index(drop=True)
        theirs = public.table.reset_index(drop=True)
        assert len(theirs) == len(mine)
        assert theirs["split"].tolist() == mine["split"].tolist()
        np.testing.assert_allclose(theirs["test_acc"], mine["test_acc"])
        np.testing.assert_allclose(theirs["train_acc"], mine["train_acc"])
        lr = [h["learning_rate"] for h in theirs["hparams"]]
        np.testing.assert_allclose(lr, [h["lr"] for h in mine["hparams"]])
        for (_, a), (_, b) in zip(mine.iterrows(), theirs.iterrows()):
            with zoo.open_model(a) as src, public.open_model(b) as dst:
                assert dst.names() == src.names()
                for name in src.names():
                    torch.testing.assert_close(dst.get(name), src.get(name), equal_nan=True)
    metrics = pd.read_csv(out / "small_cnn" / "metrics.csv.gz")
    assert {"config.learning_rate", "config.optimizer", "modeldir", "step", "nwa_id"} <= set(
        metrics.columns
    )
    assert metrics["diverged"].sum() == 2  # the blow-up run's two checkpoints, NaN weights kept


def test_export_refuses_bad_input_in_one_line(
    props_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "o")]) == 2
    assert main(["export", str(props_zoo), str(tmp_path / "o"), "--arch", "vit"]) == 2
    assert main(["export", "--format", "onnx", str(props_zoo), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("nwa: ") for line in err)
    assert not (tmp_path / "o").exists()


def test_default_properties_config_plans(tmp_path: Path) -> None:
    plan = make_plan("default_properties")
    rows = [r for _, j in plan.members for r in j.rows]
    assert len(rows) == 5000 and len(set(rows)) == 5000
    lrs = [j.params["hparams"]["lr"] for _, j in plan.members]
    assert np.log10(max(lrs) / min(lrs)) >= 2.5
    assert json.dumps(plan.config.to_dict())
