"""Runs that survive being killed: one folder per run, a checkpoint after every epoch, and
``--ckpt_path last`` to continue a run in its own folder and W&B run.

A run lives in ``<root>/<name>/<id>/``: ``root`` is ``--trainer.default_root_dir`` (default
``$NWA_RUNS``, else ``./runs``), ``name`` is ``--run_name`` (default: the recipe's file name),
``id`` is the W&B run id, drawn at launch (or ``$WANDB_RUN_ID`` when set, as Slurm jobs pin it).
The folder holds ``run.json`` (id, name, every launch and what it resumed from), ``config.yaml``,
``checkpoints/`` (``last.ckpt``, rewritten atomically after every training epoch, and the best
checkpoints), and the logger's files (``wandb/`` or ``metrics.csv``) unless the logger was given
a ``save_dir`` of its own.

``--ckpt_path`` chooses what to resume:

- ``last``: the run named ``--run_name`` under ``root`` whose ``last.ckpt`` is newest (with
  ``$WANDB_RUN_ID`` set: that run); none yet starts a new run, so a job can always pass it;
- a run folder, or a checkpoint in a run's ``checkpoints/``: that run;
- any other checkpoint file: its state, in a new run.

A resumed run continues in the same folder, logs to the same W&B run, and ends with the metrics an
uninterrupted run with the same seed reaches (on CPU): the training order and augmentations of an
epoch depend only on the seed and the epoch, and every epoch starts from random states reseeded
from them (:class:`EpochSeeds`).
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from nwa.atomic import atomic_write_text
from nwa.errors import ConfigError

RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_run_id() -> str:
    """A fresh W&B-style run id: 8 lowercase letters and digits."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def safe_name(name: str) -> str:
    """A run name usable as one folder name (path separators and odd characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._+=@-]+", "_", name).strip("._") or "run"


def global_rank() -> int:
    """This process's rank from the launcher's environment (0 when not distributed)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


@dataclass
class RunPlan:
    """Where a launch writes and what it resumes from.

    Attributes:
        folder: The run folder ``<root>/<name>/<id>``.
        run_id: The W&B run id (also the folder's name).
        name: The run name.
        ckpt: The checkpoint to resume from (``None``: start from scratch).
        epoch: The last finished epoch stored in ``ckpt``.
        note: One line telling the user what happens (empty for a plain new run).
        info: The run's ``run.json`` so far (empty for a new run).
    """

    folder: Path
    run_id: str
    name: str
    ckpt: Path | None = None
    epoch: int | None = None
    note: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def read_run(folder: Path) -> dict[str, Any]:
    """A run folder's ``run.json``.

    Raises:
        ConfigError: Missing or unreadable.
    """
    path = folder / RUN_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable run record ({e})") from None
    if not isinstance(info, dict) or not isinstance(info.get("id"), str):
        raise ConfigError(f"{path}: not a run record (no run id)")
    return info


def _progress(path: Path) -> tuple[int, int, int]:
    try:  # memory-mapped: only the few bytes read are loaded; never runs pickled code
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for damaged or foreign files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("epoch"), int):
        raise ConfigError(f"{path}: not a Lightning checkpoint (no epoch recorded)")
    step = int(ckpt.get("global_step") or 0)
    logged = [
        state.get("logged_metrics") or {}
        for state in (ckpt.get("callbacks") or {}).values()
        if isinstance(state, dict)
    ]
    log_step = next((int(m["step"]) for m in logged if "step" in m), step - 1)
    return int(ckpt["epoch"]), step, log_step


def checkpoint_epoch(path: Path) -> int:
    """The last finished epoch a Lightning checkpoint holds (read without running any code).

    Raises:
        ConfigError: The file is not a readable Lightning checkpoint.
    """
    return _progress(path)[0]


def checkpoint_log_step(path: Path) -> int:
    """The step a checkpoint's epoch metrics were logged at (see :func:`checkpoint_epoch`)."""
    return _progress(path)[2]


def latest_run(parent: Path, run_id: str | None = None) -> Path | None:
    """The run folder under ``parent`` (one run name) whose ``last.ckpt`` is newest, or the run
    ``run_id`` when given; ``None`` when there is none with a checkpoint."""
    if run_id is not None:
        folders = [parent / run_id]
    else:
        folders = [p for p in parent.glob("*") if (p / RUN_FILE).is_file()]
    found = [p for p in folders if (p / CHECKPOINTS / LAST).is_file()]
    return max(found, key=lambda p: (p / CHECKPOINTS / LAST).stat().st_mtime, default=None)


def plan_run(root: Path, name: str, ckpt_path: str | None, pinned_id: str | None) -> RunPlan:
    """Decide the run folder and the checkpoint to resume from (reads only; see the module
    docstring for what ``ckpt_path`` may be).

    Raises:
        ConfigError: No such checkpoint, an unreadable one, or a pinned id whose run already
            has checkpoints while no resume was asked for.
    """
    name = safe_name(name)
    parent = root / name
    if ckpt_path is None:
        plan = RunPlan(parent / (pinned_id or new_run_id()), pinned_id or "", name)
        plan.run_id = plan.folder.name
        if (plan.folder / CHECKPOINTS / LAST).is_file():
            raise ConfigError(
                f"{plan.folder}: this run already has checkpoints; resume it with --ckpt_path last "
                "or start another with a different --run_name"
            )
        return plan
    if ckpt_path == "last":
        folder = latest_run(parent, pinned_id)
        if folder is None:
            plan = plan_run(root, name, None, pinned_id)
            plan.note = f"no run {name!r} to resume under {root}; starting {plan.folder}"
            return plan
        return _resume_plan(folder, folder / CHECKPOINTS / LAST)
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        ckpt = path / CHECKPOINTS / LAST
        if not ckpt.is_file():
            raise ConfigError(f"{path}: no {CHECKPOINTS}/{LAST} to resume from")
        return _resume_plan(path, ckpt)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint")
    run = path.parent.parent
    if path.parent.name == CHECKPOINTS and (run / RUN_FILE).is_file():
        return _resume_plan(run, path)
    plan = plan_run(root, name, None, pinned_id)
    plan.ckpt, plan.epoch = path, checkpoint_epoch(path)
    plan.note = (
        f"starting {plan.folder} from {path} (epoch {plan.epoch} done; the file belongs to no "
        "run folder, so this is a new run)"
    )
    return plan


def _resume_plan(folder: Path, ckpt: Path) -> RunPlan:
    info = read_run(folder)
    epoch = checkpoint_epoch(ckpt)
    name = str(info.get("name") or folder.parent.name)
    note = (
        f"resuming run {folder} from {_relative(ckpt, folder)}: "
        f"epoch {epoch} done, continuing at epoch {epoch + 1} (W&B run {info['id']})"
    )
    plan = RunPlan(folder, info["id"], name, ckpt, epoch, note)
    plan.info = info
    return plan


def record_launch(plan: RunPlan, extra: dict[str, Any]) -> None:
    """Write (or extend) the run's ``run.json`` with this launch and ``extra`` fields, atomically.

    Raises:
        ConfigError: The run folder cannot be written.
    """
    launch = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "resumed_from": _relative(plan.ckpt, plan.folder) if plan.ckpt else None,
        "epoch": plan.epoch,
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
    }
    launches = [*(plan.info.get("launches") or []), launch]
    info = {**plan.info, "id": plan.run_id, "name": plan.name, **extra, "launches": launches}
    try:
        plan.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(plan.folder / RUN_FILE, json.dumps(info, indent=2) + "\n")
    except OSError as e:
        raise ConfigError(
            f"{plan.folder}: cannot write the run folder ({e.strerror or e}); set "
            "--trainer.default_root_dir (or NWA_RUNS) to a writable folder"
        ) from None


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when inside it (run folders can be moved), else as is."""
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (best checkpoints by the monitored metric), plus ``last.ckpt``
    after every training epoch; every file is written to a temporary name and renamed, so a
    kill during a save leaves the previous file whole.

    Lightning rewrites ``last.ckpt`` only when it also saves a best checkpoint; a run killed after
    its best epoch would resume from there. Here ``last.ckpt`` follows every epoch (after that
    epoch's validation, so it also records the best checkpoint so far), once the loggers have
    written what they hold. Every epoch's metrics go into the checkpoint too, and a resumed run
    logs them again before it trains: Lightning logs an epoch's training metrics after this
    hook, and W&B's offline writer, killed, loses the records it has not written yet (on a busy
    machine, all of a short launch), so the interrupted launch's log may miss any of them. The
    CSV log, saved before each checkpoint, gets back only the checkpoint's own epoch.
    """

    _relog: list[dict[str, float]] | None = None
    _history: dict[int, dict[str, float]] | None = None  # epoch -> its logged metrics

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Any]) -> None:
        return  # written in on_train_epoch_end, after every epoch

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return
        for logger in trainer.loggers:
            logger.save()  # CSV keeps rows in memory for 100 steps; a kill would lose them
        path = os.path.join(str(self.dirpath), self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        self.last_model_path = path  # before saving: the checkpoint records it
        self._save_checkpoint(trainer, path)

    def state_dict(self) -> dict[str, Any]:
        history = list((self._history or {}).values())
        logged = history[-1] if history else {}
        return {**super().state_dict(), "logged_metrics": logged, "logged_history": history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # checkpoints written before the whole history was kept hold only their own epoch's row
        rows = state_dict.get("logged_history") or [state_dict.get("logged_metrics") or {}]
        rows = [dict(r) for r in rows if r]
        self._history = {int(r.get("epoch", i)): r for i, r in enumerate(rows)}
        self._relog = rows or None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self._relog and trainer.is_global_zero:
            for logger in trainer.loggers:
                rows = self._relog[-1:] if isinstance(logger, CSVLogger) else self._relog
                for row in rows:
                    metrics = dict(row)
                    step = int(metrics.pop("step", trainer.global_step))
                    logger.log_metrics(metrics, step=step)
                logger.save()
        self._relog = None

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        if "://" in str(filepath):  # remote storage: no rename there
            return super()._save_checkpoint(trainer, filepath)
        folder, base = os.path.split(filepath)
        partial = os.path.join(folder, f".{base}.partial")
        # the epoch's aggregated metrics (Lightning logs the training ones after this hook)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if _scalar(v)}
        # the step Lightning logs an epoch's metrics at (it steps back one at epoch end)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped - 1
        if self._history is None:
            self._history = {}
        row = {**metrics, "epoch": trainer.current_epoch, "step": step}
        self._history[trainer.current_epoch] = row  # a best and a last save of one epoch: one row
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero:
            fd = os.open(partial, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(partial, filepath)
        trainer.strategy.barrier("nwa.checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float) or (torch.is_tensor(value) and value.numel() == 1)


class EpochSeeds(Callback):
    """Reseeds Python, NumPy and torch at the start of every training epoch from the run's seed
    and the epoch, so an epoch draws the same random numbers (dropout, noise) whether the run
    went through unbroken or was resumed before it.

    Args:
        seed: The run's seed (``seed_everything``); ``None`` leaves the random states alone.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.seed is None:
            return
        s = int(np.random.SeedSequence([self.seed, trainer.current_epoch]).generate_state(1)[0])
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)  # every device, CUDA included


class SlurmRequeue(Callback):
    """On Slurm's time-limit signal (``#SBATCH --signal=SIGUSR1@90``), requeue the job; the
    requeued job resumes from ``last.ckpt`` (``jobs/fit.sbatch`` passes ``--ckpt_path last``).

    Lightning's own handler would save a mid-epoch checkpoint first; resuming from the end of the
    last finished epoch instead keeps the resumed run's results equal to an unbroken run's.
    """

    def __init__(self, signum: int = signal.SIGUSR1) -> None:
        self.signum = signum
        self.previous: Any = None
        self.trainer: Trainer | None = None

    @staticmethod
    def wanted() -> bool:
        """Inside a Slurm batch job (not an interactive allocation)."""
        name = os.environ.get("SLURM_JOB_NAME", "")
        return "SLURM_JOB_ID" in os.environ and name not in ("bash", "interactive")

    def install(self) -> None:
        """Set the handler now: Lightning installs its own only where none is set yet."""
        self.previous = signal.signal(self.signum, self._handle)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.trainer = trainer

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.previous is not None:
            signal.signal(self.signum, self.previous)
            self.previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        if global_rank() != 0:
            return
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = (
            f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]
        )
        epoch = self.trainer.current_epoch if self.trainer is not None else "?"
        print(
            f"nwa: Slurm time limit near (signal {signum}) during epoch {epoch}: requeueing job "
            f"{job}; it resumes from the last finished epoch",
            file=sys.stderr,
            flush=True,
        )
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode:
            print(f"nwa: scontrol requeue {job} failed: {result.stderr.strip()}", file=sys.stderr)
