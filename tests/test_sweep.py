"""``python -m nwa.sweep``: one model per layer through the fit CLI, a table, the best layer."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

from nwa.sweep import best_row, layer_arg, main
from tests.zoo_factory import write_chain_zoo


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr("sys.argv", ["pytest"])


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    zoo = write_chain_zoo(root / "zoo")
    cfg = {
        "data": {
            "class_path": "nwa.data.ModelZooDataModule",
            "init_args": {"zoo": str(zoo.root), "layers": "*weight", "batch_size": 8},
        },
        "model": {
            "class_path": "nwa.lit.WeightModule",
            "init_args": {"encoder": {"class_path": "nwa.metanets.Dense", "init_args": {"dim": 8}}},
        },
        "trainer": {"max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False},
    }
    path = root / "dense.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_sweep_over_two_layers_writes_a_table_and_names_the_best(recipe, tmp_path, capsys):
    out = tmp_path / "table.csv"
    argv = ["--config", str(recipe), "--layers", "conv*.weight", "--out", str(out)]
    rows = main([*argv, "--save_dir", str(tmp_path / "runs"), "--trainer.max_epochs", "3"])
    table = pd.read_csv(out)
    assert list(table["layer"]) == ["conv1.weight", "conv2.weight"]
    assert list(table["shape"]) == ["4x9", "4x36"]
    assert {"val/acc", "test/acc", "test/f1", "test/loss"} <= set(table.columns)
    assert table["val/acc"].between(0, 1).all() and table["test/acc"].between(0, 1).all()
    assert "error" not in table.columns
    assert out.with_suffix(".md").read_text().count("\n") == 4  # header, rule, 2 rows
    best = table.loc[table["val/acc"].idxmax(), "layer"]
    assert f"best layer on validation: {best}" in capsys.readouterr().out
    for row in rows:  # each run trained on its own layer only, for the extra epochs given
        assert row["run"] == f"dense-{row['layer']}"
        ckpt = torch.load(row["checkpoint"], weights_only=True)
        assert list(ckpt["hyper_parameters"]["shapes"]["layers"]) == [row["layer"]]
        logged = pd.read_csv(tmp_path / "runs" / "dense" / row["run"] / "version_0" / "metrics.csv")
        assert logged.dropna(subset=["val/acc"])["epoch"].max() == 2
    # and on W&B (offline): one group per sweep, best validation value in the summary
    from nwa.runs import find_runs, load_run

    found = [load_run(p) for p in find_runs(tmp_path / "runs" / "dense" / "wandb")]
    assert sorted(r.name for r in found) == sorted(row["run"] for row in rows)
    for run in found:
        assert (run.group, run.job_type, run.tags) == ("dense", "layer-sweep", ["sweep:dense"])
        row = next(r for r in rows if r["run"] == run.name)
        assert run.summarized("val/acc", "max") == pytest.approx(row["val/acc"], rel=1e-6)


def test_sweep_defaults_to_the_recipes_layers_and_limits_them(recipe, tmp_path):
    argv = ["--config", str(recipe), "--max_layers", "1", "--out", str(tmp_path / "t.csv")]
    rows = main([*argv, "--save_dir", str(tmp_path), "--trainer.fast_dev_run", "true"])
    assert [r["layer"] for r in rows] == ["conv1.weight"] and "test/acc" in rows[0]


def test_sweep_rejects_unknown_layers_before_training(recipe, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--config", str(recipe), "--layers", "nope*", "--save_dir", str(tmp_path)])
    assert e.value.code == 2 and "nope*" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_layer_arg_and_best_row():
    assert layer_arg("blocks.0.attn.weight") == "blocks.0.attn.weight"
    assert layer_arg("w[0]") == "re:w\\[0\\]" and layer_arg("3") == "re:3"
    rows = [{"layer": "a", "m": 0.5}, {"layer": "b", "m": 0.7}, {"layer": "c", "error": "x"}]
    assert best_row(rows, "m", "max")["layer"] == "b"
    assert best_row(rows, "m", "min")["layer"] == "a"
    assert best_row(rows[2:], "m", "max") is None
