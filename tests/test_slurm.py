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
from collections import Counter
from pathlib import Path

import pytest
import torch

from nwa.errors import ConfigError
from nwa.resume import checkpoint_epoch
from nwa.runs import load_run
from nwa.zoo.report import file_hashes

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
    run = scratch / "runs" / "probex_vision" / f"nwa-{job}"  # the run folder, named by the job
    assert list(run.glob("checkpoints/*.ckpt")), "no checkpoint written"


def _finished_models(zoo: Path) -> int:
    return len(list(zoo.glob("rows/*.json"))) + len(list(zoo.glob("roots/*.json")))


def _wait_running(job: str, zoo: Path, models: int, timeout: float = 600) -> None:
    """Until both tasks run and ``models`` models are finished (the build is mid-way)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _states(job) == ["RUNNING", "RUNNING"] and _finished_models(zoo) >= models:
            return
        time.sleep(0.5)
    subprocess.run(["scancel", job])
    pytest.fail(f"{job} did not get mid-way in {timeout:.0f} s: {_states(job)}")


_FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "DEADLINE")


def _wait_releasing_requeued(job: str, timeout: float = 900) -> list[str]:
    """:func:`_wait`, starting requeued tasks at once (Slurm holds them about 2 min, BeginTime)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        held = subprocess.run(
            ["squeue", "-h", "-j", job, "-t", "PD", "-o", "%i %r"], capture_output=True, text=True
        ).stdout.split("\n")
        for task in (line.split()[0] for line in held if line.endswith(" BeginTime")):
            subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"])
        states = _states(job)
        if states and all(s in _FINAL for s in states):  # requeueing passes through others
            return states
        time.sleep(1)
    subprocess.run(["scancel", job])
    pytest.fail(f"Slurm job {job} did not finish in {timeout:.0f} s: {_states(job)}")


def test_zoo_build_array_requeued_mid_way_ends_with_the_local_build(scratch, tmp_path, tiny_zoo):
    """Task 0 is requeued by ``scontrol requeue``; task 1 gets the time-limit warning (SIGUSR1
    to the batch shell, as ``--signal=B:USR1@120`` sends it) and requeues itself. Both rerun their
    shard, and the zoo equals the local 2-worker build of tiny bit for bit, each model trained once."""
    out = tmp_path / "zoo"
    job = _submit(
        scratch,
        "--array=0-1",
        "--cpus-per-task=1",
        "jobs/zoo_build.sbatch",
        str(ROOT / "configs" / "zoo" / "tiny.yaml"),
        *("--out", str(out), "--quiet"),
    )
    _wait_running(job, out, models=4)
    subprocess.run(["scontrol", "requeue", f"{job}_0"], check=True)
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{job}_1"], check=True)
    assert _wait_releasing_requeued(job) == ["COMPLETED", "COMPLETED"]
    assert file_hashes(out) == file_hashes(tiny_zoo)
    lines = [json.loads(x) for x in (out / "build" / "log.jsonl").read_text().splitlines()]
    trained = Counter(r["id"] for r in lines if "id" in r)
    meta = json.loads((out / "zoo.json").read_text())["build"]
    assert len(trained) == meta["n_models"] + meta["n_roots"]
    assert set(trained.values()) == {1}
    logs = [(scratch / "runs" / "slurm" / f"nwa-zoo-{job}_{i}.out").read_text() for i in range(2)]
    assert all("start 1" in log and "start 2" in log for log in logs)  # appended, not truncated
    assert "near its time limit" in logs[1]
    assert any("zoo ready" in log for log in logs)


# ----- a fit job requeued mid-training ------------------------------------------------------------
def _scontrol(*args: str) -> str:
    out = subprocess.run(["scontrol", *args], capture_output=True, text=True)
    assert out.returncode == 0, f"scontrol {' '.join(args)}: {out.stderr}"
    return out.stdout


def _field(job: str, name: str) -> str:
    found = re.search(rf"\b{name}=(\S+)", _scontrol("show", "job", job))
    return found.group(1) if found else ""


def _seconds(text: str) -> int:
    """Slurm's ``[D-]HH:MM:SS`` as seconds."""
    days, _, clock = text.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def _wait_for(what: str, check, job: str, timeout: float = 300) -> float:
    """Poll ``check()`` until it is true; the seconds it took. Fails if the job ends first."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        if _states(job) and _states(job)[0] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            break
        time.sleep(0.5)
    subprocess.run(["scancel", job])
    pytest.fail(f"job {job}: {what} did not happen in {timeout:.0f} s (state {_states(job)})")


def _epoch(run: Path) -> int:
    try:
        return checkpoint_epoch(run / "checkpoints" / "last.ckpt")
    except ConfigError:
        return -1  # no checkpoint yet


def _start_now(job: str, *fields: str) -> float:
    """Wait until the requeued job is pending, then let it start: Slurm holds a requeued job for
    two minutes before it may run again, which the test does not wait out. Returns the seconds
    from the call until the job runs again."""
    start = time.monotonic()
    _wait_for("requeue", lambda: _states(job) == ["PENDING"], job, timeout=120)
    _scontrol("update", f"jobid={job}", "StartTime=now", *fields)
    _wait_for("restart", lambda: _states(job) == ["RUNNING"], job, timeout=120)
    return time.monotonic() - start


def test_fit_job_requeued_by_scontrol_and_by_its_time_limit_resumes_its_run(scratch, tiny_zoo):
    """A jobs/fit.sbatch job is requeued twice mid-training: by ``scontrol requeue``, then by
    the time-limit signal (``--signal=SIGUSR1@90``: the test shortens the job's time limit so the
    signal is due). Each launch resumes from the last finished epoch with the same W&B run id,
    and the job ends with the weights and test metrics of an unbroken job."""
    args = [
        str(ROOT / "configs" / "probex_vision.yaml"),
        *("--data.init_args.zoo", str(tiny_zoo), "--data.init_args.batch_size", "2"),
        *("--trainer.max_epochs", "120", "--trainer.enable_progress_bar", "false"),
    ]
    opts = ("--gpus-per-node=0", "--cpus-per-task=1")
    ref = _submit(scratch, *opts, "jobs/fit.sbatch", *args)
    job = _submit(
        scratch, *opts, "jobs/fit.sbatch", *args, "--trainer.callbacks+=tests.pacing.Pace"
    )
    run = scratch / "runs" / "probex_vision" / f"nwa-{job}"
    log = scratch / "runs" / "slurm" / f"nwa-fit-{job}.out"

    _wait_for("epoch 3", lambda: _epoch(run) >= 3, job)
    _scontrol("requeue", job)
    restart_s = _start_now(job)
    first = json.loads((run / "run.json").read_text())["launches"]
    _wait_for("a resumed epoch", lambda: _epoch(run) >= 8, job)
    # due now: fit.sbatch asks for SIGUSR1 90 s before the limit; Slurm checks every 30 s
    limit = -(-(_seconds(_field(job, "RunTime")) + 45) // 60)
    _scontrol("update", f"jobid={job}", f"TimeLimit={limit}")
    signal_s = _wait_for(
        "the time-limit signal",
        lambda: log.is_file() and "nwa: Slurm time limit near" in log.read_text(),
        job,
        timeout=120,
    )
    _start_now(job, "TimeLimit=30")
    assert _wait(job) == ["COMPLETED"] and _wait(ref) == ["COMPLETED"]
    print(f"restart after scontrol requeue {restart_s:.1f} s, signal {signal_s:.1f} s after update")

    info = json.loads((run / "run.json").read_text())
    epochs = [launch["epoch"] for launch in info["launches"]]
    assert len(first) == 1 and len(epochs) == 3 and epochs[0] is None and 3 <= epochs[1] < epochs[2]
    text = log.read_text()
    for n in (1, 2, 3):
        assert f"launch {n}, run id nwa-{job}" in text
    resumed = re.findall(r"nwa: resuming run .* epoch (\d+) done, .*\(W&B run (\S+)\)", text)
    assert [(int(e), i) for e, i in resumed] == [(e, f"nwa-{job}") for e in epochs[1:]]
    assert len(list((run / "wandb").glob(f"offline-run-*-nwa-{job}"))) == 3  # one W&B run
    reference = scratch / "runs" / "probex_vision" / f"nwa-{ref}"
    a, b = (
        torch.load(r / "checkpoints" / "last.ckpt", weights_only=True) for r in (run, reference)
    )
    assert a["epoch"] == b["epoch"] == 119
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])
    got, want = load_run(run), load_run(reference)
    tests = [k for k in want.summary if k.startswith("test/")]
    assert tests and {k: got.summary[k] for k in tests} == {k: want.summary[k] for k in tests}
    assert list(got.values("val/loss")) == list(want.values("val/loss"))
