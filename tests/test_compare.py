"""nwa.runs and python -m nwa.compare on real runs: a CSV run and a W&B offline run of nwa.fit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from nwa.compare import compare_runs, main
from nwa.errors import NwaError
from nwa.runs import RunError, find_runs, load_run, metric_goal, wandb_records
from tests.zoo_factory import write_chain_zoo

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("val/acc", "val/f1", "val/loss", "train/loss", "test/acc", "test/loss")


def write_recipe(path: Path, zoo: Path, logger: dict | list | None = None) -> Path:
    trainer = {"max_epochs": 3, "enable_progress_bar": False, "enable_model_summary": False}
    cfg = {
        "seed_everything": 0,
        "trainer": {**trainer, "log_every_n_steps": 1, **({"logger": logger} if logger else {})},
        "model": {
            "class_path": "nwa.lit.WeightModule",
            "init_args": {
                "encoder": {
                    "class_path": "nwa.metanets.ProbeX",
                    "init_args": {"rank_u": 4, "rank_v": 4, "dim": 8},
                }
            },
        },
        "data": {
            "class_path": "nwa.data.ModelZooDataModule",
            "init_args": {"zoo": str(zoo), "layers": "fc.weight", "batch_size": 8},
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short runs: CSV only (lr 0.01), and W&B offline with a CSV twin of its metrics."""
    import wandb

    from nwa.fit import run as fit

    tmp = tmp_path_factory.mktemp("compare")
    zoo = write_chain_zoo(tmp / "zoo").root
    csv_recipe = write_recipe(tmp / "probex.yaml", zoo)
    csv = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger"]
    fit(
        ["--config", str(csv_recipe), *csv, "--trainer.logger.save_dir", str(tmp / "logs")]
        + ["--trainer.default_root_dir", str(tmp), "--model.init_args.lr", "0.01"]
        + ["--run_name", "csv-run"]
    )
    wb = {"project": "nwa", "save_dir": str(tmp / "runs"), "offline": True, "name": "wb-run"}
    twin = {"save_dir": str(tmp / "twin"), "name": "wb-run"}
    loggers = [
        {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": wb},
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": twin},
    ]
    wb_recipe = write_recipe(tmp / "probex_wb.yaml", zoo, loggers)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.chdir(tmp)
        fit(["--config", str(wb_recipe), "--run_name", "wb-run", "--group", "exp"])
        wandb.finish()
    wait_for_exit_record(tmp / "runs" / "wandb")
    return {
        "root": tmp,
        "csv": tmp / "logs" / "csv-run" / "version_0",
        "wandb": next((tmp / "runs" / "wandb").glob("offline-run-*")),
        "twin": tmp / "twin" / "wb-run" / "version_0" / "metrics.csv",
        "zoo": zoo,
    }


def wait_for_exit_record(wandb_dir: Path, timeout: float = 60.0) -> None:
    """wandb-core writes the .wandb log asynchronously, even after ``wandb.finish()`` returns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = list(wandb_dir.glob("offline-run-*/run-*.wandb"))
        if logs and load_run(logs[0].parent).finished:
            return
        time.sleep(0.2)
    raise AssertionError(f"no finished W&B run under {wandb_dir} after {timeout} s")


def expected(metrics_csv: Path, metric: str) -> tuple[float, float]:
    """Final and best value of a metric, straight from a CSV logger's file."""
    values = pd.read_csv(metrics_csv)[metric].dropna()
    best = values.max() if metric_goal(metric) == "max" else values.min()
    return float(values.iloc[-1]), float(best)


def test_compare_writes_table_markdown_and_plots_with_correct_values(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(runs["wandb"]), str(runs["csv"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wb-run" in printed and "csv-run" in printed and "val/acc best" in printed
    table = pd.read_csv(out / "comparison.csv").set_index("run")
    assert list(table.index) == ["wb-run", "csv-run"]
    assert list(table["group"]) == ["exp", "chains"]  # --group, else the zoo's name
    assert list(table["logger"]) == ["wandb", "csv"]
    # Only what was trained differently is a difference (logger and names are ignored).
    assert list(table["model.init_args.lr"]) == [0.001, 0.01]
    assert not any(c.startswith(("trainer.logger", "run_name", "group.")) for c in table.columns)
    for run, source in (("wb-run", runs["twin"]), ("csv-run", runs["csv"] / "metrics.csv")):
        for metric in CHECKED:
            final, best = expected(source, metric)
            assert table.loc[run, f"{metric} final"] == pytest.approx(final, rel=1e-6), metric
            assert table.loc[run, f"{metric} best"] == pytest.approx(best, rel=1e-6), metric
    markdown = re.sub(r" +", " ", (out / "comparison.md").read_text())  # column padding aside
    assert markdown.startswith("| field | wb-run | csv-run |")
    assert "| model.init_args.lr | 0.001 | 0.01 |" in markdown
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_wandb_history_matches_its_csv_twin_row_for_row(runs):
    run = load_run(runs["wandb"])
    assert (run.name, run.group, run.kind) == ("wb-run", "exp", "wandb")
    assert run.config["model"]["class_path"] == "nwa.lit.WeightModule"
    twin = pd.read_csv(runs["twin"])
    for metric in ("val/acc", "train/loss", "test/f1"):
        got = run.curve(metric)
        want = twin.dropna(subset=[metric])
        assert list(got["epoch"]) == list(want["epoch"])
        assert got[metric].tolist() == pytest.approx(want[metric].tolist(), rel=1e-6)
    assert run.summary["test/acc"] == pytest.approx(run.final("test/acc"))


def test_checkpoint_folder_reads_its_wandb_run_and_runs_are_found(runs):
    wandb_run = load_run(runs["wandb"])
    ckpt_dir = runs["root"] / "runs" / "wb-run" / wandb_run.run_id  # the run folder
    assert (ckpt_dir / "checkpoints").is_dir()
    from_ckpt = load_run(ckpt_dir)
    assert from_ckpt.run_id == wandb_run.run_id
    assert from_ckpt.final("val/acc") == wandb_run.final("val/acc")
    found = find_runs(runs["root"])
    assert runs["csv"] in found and runs["wandb"] in found


def test_compare_runs_picks_metrics_and_rejects_unknown_ones(runs):
    both = [load_run(runs["wandb"]), load_run(runs["csv"])]
    both[1].config["trainer"]["max_epochs"] = 5  # an int field and a list field differ too
    both[1].config["data"]["init_args"]["layers"] = ["fc.weight", "conv1.weight"]
    comparison = compare_runs(both, metrics=["test/acc", "val/loss"])
    assert comparison.metrics == ["test/acc", "val/loss"]
    table = comparison.side_by_side()
    assert list(table.loc["trainer.max_epochs"]) == ["3", "5"]
    assert list(table.loc["data.init_args.layers"]) == ["fc.weight", '["fc.weight","conv1.weight"]']
    assert list(comparison.side_by_side().index[-4:]) == [
        "test/acc final",
        "test/acc best",
        "val/loss final",
        "val/loss best",
    ]
    with pytest.raises(NwaError, match="no run logged"):
        compare_runs(both, metrics=["val/nope"])


def test_a_path_that_is_not_a_run_exits_2_with_one_line(runs, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for bad in (runs["zoo"], tmp_path / "missing"):
        r = subprocess.run(
            [sys.executable, "-m", "nwa.compare", str(runs["csv"]), str(bad)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert r.returncode == 2
        assert r.stderr.startswith("nwa: ") and r.stderr.count("\n") == 1, r.stderr
        assert str(bad) in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "compare").exists()  # nothing written


def test_metric_goals_and_damaged_wandb_logs(tmp_path, runs):
    assert [metric_goal(m) for m in ("val/acc", "test/r2_test_acc", "val/loss", "test/rmse")] == [
        "max",
        "max",
        "min",
        "min",
    ]
    assert metric_goal("test/kendall_gen_gap") == "max" and metric_goal("epoch") is None
    log = next(runs["wandb"].glob("run-*.wandb")).read_bytes()
    n = sum(1 for _ in wandb_records(next(runs["wandb"].glob("run-*.wandb"))))
    (tmp_path / "cut.wandb").write_bytes(log[: len(log) // 2])  # a run still writing
    assert 0 < sum(1 for _ in wandb_records(tmp_path / "cut.wandb")) < n
    (tmp_path / "bad.wandb").write_bytes(b"not a wandb log")
    with pytest.raises(RunError, match="not a W&B run log"):
        list(wandb_records(tmp_path / "bad.wandb"))
    (tmp_path / "writing").mkdir()
    (tmp_path / "writing" / "run-abc.wandb").write_bytes(log[:7])  # header only, so far
    with pytest.raises(NwaError, match="no metric logged yet"):
        compare_runs([load_run(runs["csv"]), load_run(tmp_path / "writing")])
    flipped = bytearray(log)
    flipped[200] ^= 0xFF
    (tmp_path / "flip.wandb").write_bytes(bytes(flipped))
    with pytest.raises(RunError, match="corrupt record"):
        list(wandb_records(tmp_path / "flip.wandb"))
