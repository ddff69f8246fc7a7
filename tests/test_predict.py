"""``python -m nwa.predict``: a run's test metrics reproduced from its checkpoint alone, single
files with classes and calibrated properties, conformal coverage, trees, concepts, bad input."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nwa.calibration import conformal_quantile, tree_threshold
from nwa.fit import run as fit
from nwa.predict import main
from nwa.predict import run as predict
from nwa.zoo.manifest import Zoo

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LAYER, SHAPE = "layer4.0.conv2.weight", [64, 64, 3, 3]


def _fit(root: Path, zoo: Path, recipe: str, *args: str) -> tuple:
    cli, results = fit(
        [
            *("--config", str(CONFIGS / f"{recipe}.yaml"), *args),
            *("--data.init_args.zoo", str(zoo)),
            *("--trainer.logger", "lightning.pytorch.loggers.CSVLogger"),
            *("--trainer.logger.save_dir", str(root), "--trainer.default_root_dir", str(root)),
            *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
        ]
    )
    return Path(cli.trainer.checkpoint_callback.best_model_path), results[0]


@pytest.fixture(scope="module")
def runs(tiny_zoo, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """ProbeX on every ResNet of the tiny zoo (pretrained trees and forest): classes, and the
    three properties; 3 epochs each."""
    common = ("--data.init_args.trees", '["*"]', "--trainer.max_epochs", "3")
    regression = ("--config", str(CONFIGS / "shared" / "regression.yaml"))
    return {
        "classes": _fit(tmp_path_factory.mktemp("classes"), tiny_zoo, "probex_vision", *common),
        "properties": _fit(
            tmp_path_factory.mktemp("props"), tiny_zoo, "probex_vision", *regression, *common
        ),
    }


def _member_file(zoo: Path, split: str = "test", arch: str = "resnet_micro") -> Path:
    z = Zoo.open(zoo)
    row = z.table[(z.table["split"] == split) & (z.table["arch"] == arch)].iloc[0]
    return z.path_of(row)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["classes", "properties"])
def test_the_runs_test_metrics_are_reproduced_exactly(runs, tiny_zoo, kind):
    ckpt, tested = runs[kind]
    result = predict(["--ckpt_path", str(ckpt), str(tiny_zoo), "--split", "test", "--quiet"])
    rows, (found,) = result.rows, result.metrics
    z = Zoo.open(tiny_zoo)
    assert len(rows) == ((z.table["arch"] == "resnet_micro") & (z.table["split"] == "test")).sum()
    expected = {k: v for k, v in tested.items() if k != "test/loss"}
    assert expected and set(expected) <= set(found)
    for key, value in expected.items():
        assert found[key] == value or (math.isnan(found[key]) and math.isnan(value)), key


@pytest.mark.slow
def test_a_run_that_split_the_zoo_its_own_way_is_predicted_on_its_own_splits(tiny_zoo, tmp_path):
    split = "{fractions: [0.5, 0.25, 0.25], seed: 3}"
    ckpt, tested = _fit(
        tmp_path,
        tiny_zoo,
        "probex_vision",
        *("--config", str(CONFIGS / "shared" / "regression.yaml")),
        *("--data.init_args.trees", '["*"]', "--trainer.max_epochs", "2"),
        *("--data.init_args.split", split),
    )
    own = torch.load(ckpt, weights_only=True)["ModelZooDataModule"]["model_splits"]
    z = Zoo.open(tiny_zoo)
    manifest = dict(zip(z.table["id"], z.table["split"]))
    assert set(own.values()) == {"train", "val", "test"}
    assert any(manifest[i] != s for i, s in own.items())  # the run's split is not the zoo's
    result = predict(["--ckpt_path", str(ckpt), str(tiny_zoo), "--split", "test", "--quiet"])
    assert sorted(r["model"] for r in result.rows) == sorted(
        i for i, s in own.items() if s == "test"
    )
    assert all(r["split"] == "test" for r in result.rows)
    (found,) = result.metrics
    for key, value in tested.items():
        if key != "test/loss":
            assert found[key] == value or (math.isnan(found[key]) and math.isnan(value)), key
    stored = torch.load(ckpt, weights_only=True)["nwa_calibration"]["residuals"]
    rows = predict(["--ckpt_path", str(ckpt), str(tiny_zoo), "--split", "val", "--quiet"]).rows
    for prop, residuals in stored.items():
        mine = sorted(abs(r[f"true_{prop}"] - r[prop]) for r in rows)
        assert mine == pytest.approx(residuals, abs=1e-6), prop


@pytest.mark.slow
def test_a_single_file_gets_classes_and_accuracy_with_an_interval(runs, tiny_zoo, tmp_path, capsys):
    member, out = _member_file(tiny_zoo), tmp_path / "preds.csv"
    args = ["--ckpt_path", str(runs["classes"][0]), "--ckpt_path", str(runs["properties"][0])]
    rows = predict([*args, str(member), "--coverage", "0.5", "--out", str(out)]).rows
    printed = capsys.readouterr().out
    assert "classes" in printed and "test_acc" in printed and "models/s" in printed
    (row,) = rows
    probs = {k[2:-1]: v for k, v in row.items() if k.startswith("p(")}
    assert len(probs) >= 2 and all(0 <= p <= 1 for p in probs.values())
    assert row["classes"] == ", ".join(
        f"{n} ({p:.2f})" for n, p in sorted(probs.items(), key=lambda kv: -kv[1]) if p >= 0.5
    )
    for prop in ("test_acc", "gen_gap", "robustness"):
        assert row[f"{prop}_lo"] <= row[prop] <= row[f"{prop}_hi"] < math.inf
    with open(out) as f:
        (saved,) = list(csv.DictReader(f))
    assert float(saved["test_acc_hi"]) == pytest.approx(row["test_acc_hi"])


@pytest.mark.slow
def test_intervals_come_from_the_validation_models_and_coverage_is_reported(runs, tiny_zoo):
    ckpt = runs["properties"][0]
    stored = torch.load(ckpt, weights_only=True)["nwa_calibration"]
    rows = predict(["--ckpt_path", str(ckpt), str(tiny_zoo), "--split", "val", "--quiet"]).rows
    for prop, residuals in stored["residuals"].items():
        mine = sorted(abs(r[f"true_{prop}"] - r[prop]) for r in rows)
        assert mine == pytest.approx(residuals, abs=1e-6), prop
    result = predict(
        ["--ckpt_path", str(ckpt), str(tiny_zoo), "--split", "test", "--coverage", "0.5", "--quiet"]
    )
    rows, (found,) = result.rows, result.metrics
    for prop, residuals in stored["residuals"].items():
        half = conformal_quantile(residuals, 0.5)
        assert all(r[f"{prop}_hi"] - r[prop] == pytest.approx(half) for r in rows)
        inside = [r[f"{prop}_lo"] <= r[f"true_{prop}"] <= r[f"{prop}_hi"] for r in rows]
        assert found[f"test/coverage_{prop}"] == pytest.approx(sum(inside) / len(inside))


def test_conformal_intervals_cover_as_promised():
    """Split conformal on exchangeable scores: 90 % intervals from 30 calibration models cover
    ceil(31 * 0.9) / 31 = 90.3 % of new models on average."""
    rng = random.Random(0)
    covered = []
    for _ in range(2000):
        calib = [abs(rng.gauss(0, 1)) for _ in range(30)]
        q = conformal_quantile(calib, 0.9)
        covered += [abs(rng.gauss(0, 1)) <= q for _ in range(30)]
    assert 0.895 <= sum(covered) / len(covered) <= 0.912
    assert conformal_quantile([3, 1, 2], 0.5) == 2  # ceil(4 * 0.5) = 2nd smallest
    assert conformal_quantile(range(5), 0.9) == math.inf  # too few for 90 %
    assert tree_threshold({"tree_distances": [1.0, 2.0]}, 0.95) == 2.0  # falls back to the largest
    assert tree_threshold({}, 0.95) == math.inf


@pytest.mark.slow
def test_the_checkpoint_stores_what_reading_new_models_needs(runs):
    ckpt = torch.load(runs["classes"][0], weights_only=True)  # plain containers only
    data = ckpt["ModelZooDataModule"]
    assert data["tensors"] == {LAYER: SHAPE} and data["layers"] == [LAYER]
    assert data["input"] == "matrix" and data["trees"] == ["*"] and data["arch"] == "resnet_*"
    assert isinstance(data["normalize"]["mean"][LAYER], float)
    assert "nwa_calibration" not in ckpt  # classification runs have no property to calibrate


@pytest.mark.slow
def test_bad_models_and_checkpoints_end_with_one_line(runs, tiny_zoo, tmp_path, capsys):
    ckpt = str(runs["classes"][0])
    missing = tmp_path / "other.safetensors"
    save_file(
        {
            "conv1.weight": torch.randn(8, 3, 3, 3),
            "layer4.0.conv1.weight": torch.randn(64, 64, 3, 3),
        },
        missing,
    )
    narrow = tmp_path / "narrow.safetensors"
    save_file({LAYER: torch.randn(32, 64, 3, 3)}, narrow)
    nan = tmp_path / "nan.safetensors"
    save_file({LAYER: torch.full((64, 64, 3, 3), float("nan"))}, nan)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "nwa_config": "x", "x": Zoo}, evil)  # a class: refused unpickled
    out = tmp_path / "out.csv"
    cases = [
        (
            [ckpt, str(missing)],
            [LAYER, "[64, 64, 3, 3]", "this model has none", "layer4.0.conv1.weight"],
        ),
        ([ckpt, str(narrow)], ["expects shape [64, 64, 3, 3], this model has [32, 64, 3, 3]"]),
        ([ckpt, str(nan)], ["NaN or Inf", LAYER]),
        ([str(evil), str(narrow)], ["not a checkpoint nwa can read safely"]),
        ([str(tmp_path / "none.ckpt"), str(narrow)], ["no such checkpoint"]),
    ]
    for (path, model), needles in cases:
        with pytest.raises(SystemExit) as e:
            main(["--ckpt_path", path, model, "--out", str(out), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("nwa: ") and "\n" not in err, err
        assert all(n in err for n in needles), err
        assert not out.exists()
    rows = predict(
        ["--ckpt_path", ckpt, str(narrow), str(_member_file(tiny_zoo)), "--skip_bad", "--quiet"]
    ).rows
    assert len(rows) == 1
    assert "skipped" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--ckpt_path", ckpt, str(narrow), "--concepts", "a coat", "--quiet"])
    assert "--concepts needs a weight-to-text run" in capsys.readouterr().err


@pytest.mark.slow
def test_tree_experts_name_a_tree_or_none_of_them(tiny_zoo, tmp_path):
    ckpt, _ = _fit(tmp_path, tiny_zoo, "experts_vision", "--trainer.max_epochs", "2")
    rows = predict(["--ckpt_path", str(ckpt), str(tiny_zoo), "--trees", "*", "--quiet"]).rows
    assert {r["split"] for r in rows} >= {"train", "test"}
    threshold = tree_threshold(torch.load(ckpt, weights_only=True)["nwa_calibration"], 0.95)
    for r in rows:
        if r["zoo_tree"].startswith("forest"):  # random inits, far from every pretrained tree
            assert r["tree"] == "none of the known trees", r
        else:  # the router's cluster is the model's tree
            assert r["nearest_tree"] == r["zoo_tree"], r
        known = r["tree_distance"] <= threshold
        assert r["tree"] == (r["nearest_tree"] if known else "none of the known trees")


@pytest.mark.slow
def test_an_aligner_ranks_training_and_free_text_concepts(tiny_zoo, tmp_path):
    epochs = ("--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1")
    ckpt, _ = _fit(tmp_path, tiny_zoo, "probex_sd", *epochs)
    lora = _member_file(tiny_zoo, "test_holdout", "unet_lora")
    rows = predict(["--ckpt_path", str(ckpt), str(lora), "--top_k", "2", "--quiet"]).rows
    names = [c.split(" (")[0] for c in rows[0]["concepts"].split(", ")]
    assert len(names) == 2 and all(n in Zoo.open(tiny_zoo).table["concept"].tolist() for n in names)
    free = ["a red sneaker", "a blue coat", "a green dress"]
    rows = predict(["--ckpt_path", str(ckpt), str(lora), "--concepts", *free, "--quiet"]).rows
    ranked = rows[0]["concepts"].split(", ")
    assert len(ranked) == 3 and {c.split(" (")[0] for c in ranked} == set(free)
    assert sum(float(c.split("(")[1][:-1]) for c in ranked) == pytest.approx(1.0, abs=0.02)
