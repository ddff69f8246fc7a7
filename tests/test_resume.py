"""Runs survive being killed: run folders, last.ckpt after every epoch, ``--ckpt_path last``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from nwa.data.sampling import EpochShuffle
from nwa.errors import ConfigError
from nwa.fit import run as fit
from nwa.resume import checkpoint_epoch, plan_run, record_launch
from nwa.runs import load_run
from tests.test_cli import write_config
from tests.zoo_factory import write_chain_zoo

ROOT = Path(__file__).resolve().parents[1]
PYTHON_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def chain_zoo(tmp_path_factory):
    return write_chain_zoo(tmp_path_factory.mktemp("resume-chains"))


def recipe(path: Path, zoo: Path, epochs: int) -> list[str]:
    """ProbeX on the chain zoo, 3 batches per epoch, CSV logs in the run folder."""
    cfg = write_config(path, zoo, batch_size=4)
    csv = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger"]
    return ["--config", str(cfg), "--trainer.max_epochs", str(epochs), *csv]


def state(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def same_state(a: Path, b: Path) -> bool:
    sa, sb = state(a), state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def only_run(root: Path, name: str) -> Path:
    runs = [p for p in (root / name).iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


# ----- planning ---------------------------------------------------------------------------------
def test_epoch_order_depends_only_on_seed_and_epoch():
    data = list(range(50))
    a, b = EpochShuffle(data, seed=3), EpochShuffle(data, seed=3, epoch=4)
    first = list(a)
    a.set_epoch(4)
    assert list(a) == list(b) != first and sorted(first) == data
    assert list(EpochShuffle(data, seed=4)) != first


def test_plan_run_finds_or_refuses(tmp_path):
    root = tmp_path / "runs"
    fresh = plan_run(root, "probex/vision", "last", None)  # nothing to resume: a new run
    assert fresh.ckpt is None and fresh.folder.parent == root / "probex_vision"
    assert "no run 'probex_vision' to resume" in fresh.note
    with pytest.raises(ConfigError, match="no such checkpoint"):
        plan_run(root, "x", str(tmp_path / "missing.ckpt"), None)
    record_launch(fresh, {})
    ckpt = fresh.folder / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(ConfigError, match="last.ckpt: not a readable checkpoint") as e:
        plan_run(root, "probex/vision", "last", None)
    assert "\n" not in str(e.value)
    torch.save({"epoch": 4, "global_step": 20, "state_dict": {}}, ckpt)
    again = plan_run(root, "probex/vision", "last", None)
    assert (again.folder, again.run_id, again.epoch) == (fresh.folder, fresh.run_id, 4)
    assert "epoch 4 done, continuing at epoch 5" in again.note
    assert plan_run(root, "other", str(ckpt), None).folder == fresh.folder  # a run's checkpoint
    assert plan_run(root, "other", str(fresh.folder), None).ckpt == ckpt  # a run folder
    outside = tmp_path / "copy.ckpt"
    outside.write_bytes(ckpt.read_bytes())
    new = plan_run(root, "other", str(outside), None)
    assert new.ckpt == outside and new.folder.parent == root / "other" and "new run" in new.note
    # a pinned id (a Slurm job's) whose run has checkpoints is resumed, never overwritten
    with pytest.raises(ConfigError, match="already has checkpoints"):
        plan_run(root, "probex/vision", None, fresh.run_id)
    assert plan_run(root, "probex/vision", "last", fresh.run_id).ckpt == ckpt


# ----- resuming in process ----------------------------------------------------------------------
def test_interrupted_save_keeps_the_previous_last_checkpoint(chain_zoo, tmp_path, monkeypatch):
    """A run that dies while writing a checkpoint leaves last.ckpt whole (write, then rename);
    resuming from it ends where an unbroken run ends, with the CSV history of both launches."""
    monkeypatch.chdir(tmp_path)
    cfg = recipe(tmp_path / "probex.yaml", chain_zoo.root, epochs=4)
    fit([*cfg, "--run_name", "unbroken"])
    save = Trainer.save_checkpoint
    calls = []

    def dies_on_the_fourth_save(self, filepath, weights_only=False, storage_options=None):
        calls.append(filepath)
        if len(calls) == 4:
            Path(filepath).write_bytes(b"half a checkpoint")
            raise RuntimeError("killed while saving")
        return save(self, filepath, weights_only, storage_options)

    monkeypatch.setattr(Trainer, "save_checkpoint", dies_on_the_fourth_save)
    with pytest.raises(RuntimeError, match="killed while saving"):
        fit([*cfg, "--run_name", "broken"])
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    run = only_run(tmp_path / "runs", "broken")
    last = run / "checkpoints" / "last.ckpt"
    assert all(Path(c).name.endswith(".partial") for c in calls)  # nothing written in place
    done = checkpoint_epoch(last)
    assert done in (0, 1)  # the epoch before the failed save, readable
    fit([*cfg, "--run_name", "broken", "--ckpt_path", "last"])
    assert only_run(tmp_path / "runs", "broken") == run
    reference = only_run(tmp_path / "runs", "unbroken")
    assert same_state(last, reference / "checkpoints" / "last.ckpt")
    a, b = load_run(run), load_run(reference)
    assert list(a.values("val/loss")) == list(b.values("val/loss"))  # each epoch once, equal
    assert a.final("test/loss") == b.final("test/loss")
    launches = json.loads((run / "run.json").read_text())["launches"]
    assert [x["epoch"] for x in launches] == [None, done]


# ----- a real process, killed ---------------------------------------------------------------------
def _fit_process(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nwa.fit", *args],
        cwd=cwd,
        env=os.environ | PYTHON_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_epoch(run_parent: Path, epoch: int, proc: subprocess.Popen, timeout: float) -> int:
    """Poll until some run under ``run_parent`` has ``last.ckpt`` at ``epoch`` or later."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        for last in run_parent.glob("*/checkpoints/last.ckpt"):
            try:
                if (done := checkpoint_epoch(last)) >= epoch:
                    return done
            except ConfigError:
                pass  # not there yet
        time.sleep(0.02)
    out = proc.stdout.read() if proc.poll() is not None else ""
    pytest.fail(f"no checkpoint at epoch {epoch} in {timeout:.0f} s: {out[-2000:]}")


@pytest.mark.slow
def test_sigkilled_fit_resumes_its_run_and_matches_an_unbroken_one(tiny_zoo, tmp_path):
    """``python -m nwa.fit --config configs/probex_vision.yaml`` killed with SIGKILL mid-training
    continues with ``--ckpt_path last`` from its last epoch, in the same run folder and W&B run,
    and ends with the weights and metrics of an unbroken run."""
    epochs = 12
    base = [
        *("--config", str(ROOT / "configs" / "probex_vision.yaml")),
        *("--data.init_args.zoo", str(tiny_zoo), "--data.init_args.batch_size", "2"),
        *("--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false"),
        *("--trainer.default_root_dir", str(tmp_path / "runs")),
    ]
    unbroken = _fit_process([*base, "--run_name", "unbroken"], tmp_path)
    killed = _fit_process(base, tmp_path)
    done = _wait_for_epoch(tmp_path / "runs" / "probex_vision", 2, killed, timeout=240)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    run = only_run(tmp_path / "runs", "probex_vision")
    at_kill = checkpoint_epoch(run / "checkpoints" / "last.ckpt")
    assert done <= at_kill < epochs - 1, "killed after the last epoch: nothing left to resume"
    # W&B's offline writer, killed, loses what it has not written yet (on a busy machine, the
    # whole launch): keep only the first bytes of the killed launch's log, as such a kill does
    (log,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    log.write_bytes(log.read_bytes()[:64])
    resumed = subprocess.run(
        [sys.executable, "-m", "nwa.fit", *base, "--ckpt_path", "last"],
        cwd=tmp_path,
        env=os.environ | PYTHON_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert unbroken.wait(timeout=600) == 0, unbroken.stdout.read()[-2000:]
    info = json.loads((run / "run.json").read_text())
    line = next(x for x in resumed.stdout.splitlines() if x.startswith("nwa: resuming"))
    assert f"epoch {at_kill} done, continuing at epoch {at_kill + 1}" in line
    assert f"W&B run {info['id']}" in line and str(run) in line
    assert only_run(tmp_path / "runs", "probex_vision") == run  # the same folder
    assert len(info["launches"]) == 2 and info["launches"][1]["epoch"] == at_kill
    segments = sorted((run / "wandb").glob(f"offline-run-*-{info['id']}"))
    assert len(segments) == 2  # one W&B run, logged by two launches
    reference = only_run(tmp_path / "runs", "unbroken")
    assert checkpoint_epoch(run / "checkpoints" / "last.ckpt") == epochs - 1
    assert same_state(run / "checkpoints" / "last.ckpt", reference / "checkpoints" / "last.ckpt")
    a, b = load_run(run), load_run(reference)
    assert a.run_id == info["id"] and a.finished
    assert list(a.values("val/loss")) == list(b.values("val/loss"))
    tests = [k for k in b.summary if k.startswith("test/")]
    assert tests and {k: a.summary[k] for k in tests} == {k: b.summary[k] for k in tests}
