"""``python -m nwa.bench --executor slurm`` on a real Slurm cluster (``.ci/slurm-up`` starts one;
skipped where no controller answers): every run finished, the same results as the local executor,
finished runs skipped on a rerun."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nwa.suite.plan import RunSpec
from nwa.suite.slurm import run_kind
from tests.test_slurm import _slurm_up

METRICS = ["acc", "f1", "precision", "recall", "exact", "loss", "best_val", "epochs", "params"]


def test_run_kinds():
    spec = RunSpec("classes", "ProbeX", "forest", 0, ())
    assert run_kind(spec) == "default"
    assert run_kind(RunSpec("concept", "ProbeX", "lora", 0, ())) == "align"
    assert run_kind(RunSpec("properties", "NWPA", "resnet trees", 0, ())) == "graph"


def _bench(zoo: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nwa.bench", "--quick", "--vision-zoo", str(zoo)]
    cmd += ["--lora-zoo", str(zoo), "--seeds", "1", "--epochs", "2", "--methods", "ProbeX"]
    cmd += ["--tasks", "classes", "--property-zoo", "none", "--mixed-zoo", "none"]
    cmd += ["--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=out.parent)


def _tables(report: Path) -> list[str]:
    """The report's result lines, without timings and dates."""
    skip = ("wall", "written", "command", "s / epoch", "| ProbeX | 5", "| classes-")  # timings
    lines = re.sub(r" +", " ", report.read_text()).splitlines()  # column padding aside
    return [ln for ln in lines if not any(s in ln for s in skip)]


@pytest.mark.slow
@pytest.mark.skipif(not _slurm_up(), reason="no Slurm controller answers here")
def test_bench_on_slurm_equals_the_local_executor(tiny_zoo, tmp_path):
    slurm = _bench(tiny_zoo, tmp_path / "slurm", "--executor", "slurm", "--slurm.cpus", "1")
    assert "2 runs finished; none failed or missing" in slurm.stdout, slurm.stderr[-3000:]
    assert len(list((tmp_path / "slurm" / "slurm").glob("*_0"))) == 1  # one array for both runs
    local = _bench(tiny_zoo, tmp_path / "local")  # two workers with one thread each
    assert "2 runs finished" in local.stdout, local.stderr[-3000:]
    a = pd.read_csv(tmp_path / "local" / "results.csv").set_index("key")[METRICS]
    b = pd.read_csv(tmp_path / "slurm" / "results.csv").set_index("key")[METRICS]
    pd.testing.assert_frame_equal(a, b)
    assert _tables(tmp_path / "local" / "report.md") == _tables(tmp_path / "slurm" / "report.md")
    again = _bench(tiny_zoo, tmp_path / "slurm", "--executor", "slurm")
    assert "2 already finished" in again.stdout
    assert len(list((tmp_path / "slurm" / "slurm").glob("*_0"))) == 1  # nothing submitted
