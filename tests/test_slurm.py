"""The job scripts in jobs/ on a real Slurm cluster; skipped where no controller answers.

A single-node cluster on loopback is enough (see ``jobs/`` and the README). The jobs run from a
scratch folder holding a copy of ``jobs/`` and an empty ``runs/slurm/``, as a fresh clone does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _slurm_up() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "up" in out.stdout


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _slurm_up(), reason="no Slurm controller answers here"),
]


def _node_cpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0].rstrip("+"))


def _submit(folder: Path, *args: str) -> str:
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        ["sbatch", "--parsable", *args], cwd=folder, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def _states(job: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    return re.findall(r"JobState=(\w+)", out.stdout)


def _wait(job: str, timeout: float = 600) -> list[str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        states = _states(job)
        if states and all(
            s not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING") for s in states
        ):
            return states
        time.sleep(2)
    subprocess.run(["scancel", job])
    pytest.fail(f"Slurm job {job} did not finish in {timeout:.0f} s: {_states(job)}")


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs")
    shutil.copytree(ROOT / "runs" / "slurm", tmp_path / "runs" / "slurm")  # as a clone has it
    return tmp_path


def test_fit_job_trains_and_tests_with_two_ddp_processes(scratch, tiny_zoo):
    cpus = max(1, _node_cpus() // 2)
    job = _submit(
        scratch,
        *("--gpus-per-node=0", "--ntasks-per-node=2", f"--cpus-per-task={cpus}"),
        "jobs/fit.sbatch",
        str(ROOT / "configs" / "probex_vision.yaml"),
        *("--data.init_args.zoo", str(tiny_zoo), "--trainer.max_epochs", "2"),
        *("--trainer.logger", "false"),
    )
    assert _wait(job) == ["COMPLETED"]
    log = (scratch / "runs" / "slurm" / f"nwa-fit-{job}.out").read_text()
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log and "gloo" in log
    assert "test/acc" in log
    assert list((scratch / "runs" / "slurm" / job).rglob("*.ckpt")), "no checkpoint written"


def test_zoo_build_array_merges_the_shards_into_the_local_build(scratch, tmp_path, tiny_zoo):
    out = tmp_path / "zoo"
    job = _submit(
        scratch,
        "--array=0-1",
        "--cpus-per-task=1",
        "jobs/zoo_build.sbatch",
        str(ROOT / "configs" / "zoo" / "tiny.yaml"),
        *("--out", str(out), "--quiet"),
    )
    assert _wait(job, timeout=900) == ["COMPLETED", "COMPLETED"]
    built = json.loads((out / "zoo.json").read_text())
    local = json.loads((tiny_zoo / "zoo.json").read_text())
    assert built["build"]["n_models"] == local["build"]["n_models"] > 0
    # one thread per task, as the local build: the same tensors, bit for bit
    members = sorted(p.name for p in (tiny_zoo / "weights").glob("vision-*.safetensors"))
    assert members
    for name in members:
        a, b = load_file(out / "weights" / name), load_file(tiny_zoo / "weights" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    logs = sorted((scratch / "runs" / "slurm").glob(f"nwa-zoo-{job}_*.out"))
    assert len(logs) == 2 and any("zoo ready" in p.read_text() for p in logs)
