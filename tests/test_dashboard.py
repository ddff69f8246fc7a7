"""The bench on the W&B dashboard: offline runs read back with their group, job type, tags,
best-value summaries, and the suite's summary run with its table and figures; nwa.compare's best
values equal the W&B summaries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nwa.compare import compare_runs
from nwa.dashboard import summary_kinds, zoo_fingerprint
from nwa.runs import load_run, metric_goal, wandb_records

ROOT = Path(__file__).resolve().parents[1]


def test_summary_kinds_follow_each_metrics_goal():
    assert summary_kinds("val/acc") == "max,last"
    assert summary_kinds("val/r2_test_acc") == "max,last"
    assert summary_kinds("val/loss") == "min,last"
    assert summary_kinds("val/rmse_gen_gap") == "min,last"
    assert summary_kinds("test/acc") == "last"
    assert summary_kinds("train/loss") == "last"


def test_lightnings_dryrun_mode_is_offline(monkeypatch):
    from nwa.dashboard import wandb_mode

    # Lightning's offline WandbLogger writes WANDB_MODE=dryrun into the process environment,
    # which every later run and subprocess inherits
    for value, mode in (("dryrun", "offline"), ("offline", "offline"), ("disabled", "disabled")):
        monkeypatch.setenv("WANDB_MODE", value)
        assert wandb_mode() == mode
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")
    assert wandb_mode() == "offline"


@pytest.mark.slow  # builds the session's tiny zoo (about 30 s)
def test_zoo_fingerprint_follows_the_manifest(tiny_zoo, tmp_path):
    import shutil

    first = zoo_fingerprint(tiny_zoo)
    assert first == zoo_fingerprint(tiny_zoo) and len(first) == 12
    copy = tmp_path / "copy"
    shutil.copytree(tiny_zoo, copy)
    assert zoo_fingerprint(copy) == first  # the content, not the folder's path
    meta = json.loads((copy / "zoo.json").read_text())
    meta["classes"] = [*meta["classes"][:-1], "renamed"]
    (copy / "zoo.json").write_text(json.dumps(meta))
    assert zoo_fingerprint(copy) != first


@pytest.fixture(scope="module")
def bench(tiny_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("dash") / "bench"
    cmd = [sys.executable, "-m", "nwa.bench", "--quick", "--vision-zoo", str(tiny_zoo)]
    cmd += ["--lora-zoo", str(tiny_zoo), "--out", str(out), "--seeds", "1", "--epochs", "3"]
    cmd += ["--methods", "ProbeX", "--tasks", "classes", "properties"]
    cmd += ["--property-zoo", "none", "--mixed-zoo", "none"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=out.parent)
    assert "report:" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_bench_runs_carry_group_job_type_tags_and_summaries(bench, tiny_zoo):
    results = pd.read_csv(bench / "results.csv")
    assert (
        set(results["status"]) == {"done"} and len(results) == 3
    )  # ProbeX: classes, properties, forest
    digest = zoo_fingerprint(tiny_zoo)
    for _, row in results.iterrows():
        run = load_run(bench / "runs" / row["key"])
        assert run.kind == "wandb" and run.finished
        assert (run.name, run.group, run.job_type) == (row["key"], "bench-quick", row["task"])
        assert run.tags == [
            "method:ProbeX",
            f"tree:{row['subset']}",
            "zoo:tiny",
            f"zoo-hash:{digest}",
            f"seed:{row['seed']}",
        ]
        logged = {}  # every config update of the run, the dashboard's fields among them
        for record in wandb_records(next(run.path.glob("run-*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind in ("run", "config"):
                update = record.run.config.update if kind == "run" else record.config.update
                logged |= {i.key: json.loads(i.value_json) for i in update if i.key}
        assert (logged["method"], logged["tree"], logged["seed"]) == (
            "ProbeX",
            row["subset"],
            row["seed"],
        )
        assert logged["seed_everything"] == row["seed"]
        csv = load_run(bench / "runs" / row["key"] / row["key"] / "version_0")
        for metric in [m for m in csv.metrics if m.startswith("val/")]:
            kind = metric_goal(metric)
            if kind is None or not csv.values(metric).notna().any():
                continue
            # the W&B summary's best equals the CSV twin's best and nwa.runs' best
            assert run.summarized(metric, kind) == pytest.approx(csv.best(metric), rel=1e-6)
            assert run.summarized(metric, "last") == pytest.approx(csv.final(metric), rel=1e-6)
        tested = [m for m in csv.metrics if m.startswith("test/")]
        assert tested
        for metric in tested:
            want = json.loads((bench / "runs" / row["key"] / "result.json").read_text())
            assert run.summarized(metric, "last") == pytest.approx(
                want["metrics"][metric], rel=1e-6, nan_ok=True
            )


@pytest.mark.slow
def test_compare_on_the_group_gives_the_wandb_summaries(bench):
    runs = [load_run(p) for p in sorted((bench / "runs").glob("classes-*"))]
    assert len(runs) == 2 and {r.group for r in runs} == {"bench-quick"}
    comparison = compare_runs(runs, metrics=["val/acc", "val/loss", "test/acc"])
    table = comparison.table.set_index("id")
    for run in runs:
        assert table.loc[run.run_id, "val/acc best"] == pytest.approx(
            run.summarized("val/acc", "max"), rel=1e-6
        )
        assert table.loc[run.run_id, "val/loss best"] == pytest.approx(
            run.summarized("val/loss", "min"), rel=1e-6
        )
        assert table.loc[run.run_id, "test/acc final"] == pytest.approx(
            run.summarized("test/acc", "last"), rel=1e-6
        )


@pytest.mark.slow
def test_the_suite_summary_run_holds_results_and_figures(bench):
    found = list((bench / "wandb").glob("offline-run-*-report-*"))
    assert len(found) == 1
    run = load_run(found[0])
    assert (run.group, run.job_type, run.name) == ("bench-quick", "report", "bench-quick-report")
    assert run.summary["results/_type"] == "table-file"
    table = json.loads((found[0] / "files" / run.summary["results/path"]).read_text())
    results = pd.read_csv(bench / "results.csv")
    assert table["columns"] == list(results.columns)
    assert sorted(r[table["columns"].index("key")] for r in table["data"]) == sorted(results["key"])
    figures = sorted(p.stem for p in (bench / "figures").glob("*.png"))
    assert figures
    for stem in figures:
        assert run.summary[f"figures/{stem}/_type"] == "image-file"
        assert (found[0] / "files" / run.summary[f"figures/{stem}/path"]).is_file()
    assert (found[0] / "files" / "report.md").is_file()
