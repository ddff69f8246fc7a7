"""Where a run's outputs go, decided from its config before anything is built.

Everything of a fit goes into its run folder ``<default_root_dir>/<run_name>/<id>``
(:mod:`nwa.resume`): checkpoints, ``config.yaml``, ``run.json``, and the files of every logger
whose ``save_dir`` was left at its default (W&B's ``wandb/`` folder, CSV's ``metrics.csv``). A
logger given its own ``save_dir`` writes there in its own layout (``<save_dir>/<name>/version_N``
for CSV); ``run.json`` records the folder it chose, so a resumed run appends to the same files.
``default_root_dir`` defaults to ``$NWA_RUNS``, else ``runs`` in the current folder; nothing else
is written in the current folder.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger

from nwa.errors import ConfigError
from nwa.resume import (
    CHECKPOINTS,
    EpochSeeds,
    RunPlan,
    SlurmRequeue,
    checkpoint_log_step,
    global_rank,
    plan_run,
)

_UNSET_SAVE_DIRS = (None, ".", "")


def default_root() -> str:
    """``$NWA_RUNS``, else ``runs`` (in the current folder)."""
    return os.environ.get("NWA_RUNS") or "runs"


def check_trainer_args(trainer: Any) -> None:
    """Refuse trainer values Lightning would reject with a traceback, before any data is read.

    Raises:
        ConfigError: A negative epoch or step limit other than -1.
    """
    for key in ("max_epochs", "max_steps"):
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < -1:
            raise ConfigError(
                f"trainer.{key} must be -1 (no limit) or a non-negative integer, got {value}"
            )
    for key in ("min_epochs", "min_steps"):
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"trainer.{key} must be a non-negative integer, got {value}")


def _loggers(cfg: Any) -> Iterator[tuple[str, Any]]:
    """``(class_path, init_args)`` of each logger configured (none for ``logger: false``)."""
    logger = cfg.get("trainer", {}).get("logger")
    for entry in logger if isinstance(logger, list) else [logger]:
        if isinstance(entry, dict) and "class_path" in entry:
            yield entry["class_path"], entry.setdefault("init_args", {})
        elif hasattr(entry, "class_path") and getattr(entry, "init_args", None) is not None:
            yield entry.class_path, entry.init_args


def _is_wandb(class_path: str) -> bool:
    return class_path.rsplit(".", 1)[-1] in ("WandbLogger", "DashboardLogger")


def _pinned_id(cfg: Any) -> str | None:
    """A run id the user fixed: the W&B logger's ``id``/``version``, else ``$WANDB_RUN_ID``."""
    for class_path, args in _loggers(cfg):
        if _is_wandb(class_path):
            for key in ("id", "version"):
                if key in args and args[key]:
                    return str(args[key])
    return os.environ.get("WANDB_RUN_ID") or None


def plan_launch(cfg: Any) -> RunPlan:
    """The run folder of this fit and the checkpoint it resumes from (``cfg['ckpt_path']`` is
    rewritten to that file). Processes that Lightning's DDP launcher starts take rank 0's plan.

    Raises:
        ConfigError: See :func:`nwa.resume.plan_run`.
    """
    root = Path(str(cfg["trainer"].get("default_root_dir") or default_root())).expanduser()
    logger_name = next((a.get("name") for _, a in _loggers(cfg) if a.get("name")), None)
    name = cfg.get("run_name") or logger_name or "run"
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get("NWA_RUN_FOLDER"):
        folder = Path(os.environ["NWA_RUN_FOLDER"])
        resume = os.environ.get("NWA_RUN_RESUME") or None
        plan = RunPlan(folder, folder.name, folder.parent.name, Path(resume) if resume else None)
    else:
        plan = plan_run(root, str(name), cfg.get("ckpt_path"), _pinned_id(cfg))
        # children of Lightning's DDP launcher re-run this command: they must not draw a new id
        os.environ["NWA_RUN_FOLDER"] = str(plan.folder)
        os.environ["NWA_RUN_RESUME"] = str(plan.ckpt or "")
    cfg["ckpt_path"] = str(plan.ckpt) if plan.ckpt else None
    return plan


def route_outputs(cfg: Any, plan: RunPlan | None) -> None:
    """Point the checkpoints and every logger at the run folder (or, without one, at
    ``default_root_dir``), and give loggers the run's name, group and id."""
    root = str(cfg.get("trainer", {}).get("default_root_dir") or default_root())
    folder = str(plan.folder) if plan is not None else root
    ckpt = cfg.get("checkpoint")
    if plan is not None and ckpt is not None and not ckpt.get("dirpath"):
        ckpt["dirpath"] = str(plan.folder / CHECKPOINTS)
    versions = (plan.info.get("logger_versions") or []) if plan is not None else []
    for k, (class_path, args) in enumerate(_loggers(cfg)):
        own_dir = args.get("save_dir") not in (*_UNSET_SAVE_DIRS, default_root())
        if not own_dir and "save_dir" in args:
            args["save_dir"] = folder
        if cfg.get("run_name") and "name" in args:
            args["name"] = cfg["run_name"]
        if cfg.get("group") and "group" in args:
            args["group"] = cfg["group"]
        if plan is None:
            continue
        if _is_wandb(class_path):
            args["id"] = plan.run_id  # the same W&B run on every resume (resume="allow")
        elif "version" in args and not own_dir:
            args["name"], args["version"] = "", ""  # files straight in the run folder
        elif "version" in args and args.get("version") is None and k < len(versions):
            args["version"] = versions[k]  # the log folder the run's first launch chose


def run_callbacks(plan: RunPlan, trainer_config: dict[str, Any], seed: Any) -> list[Callback]:
    """The callbacks a fit with a run folder needs: per-epoch seeds, Slurm's requeue signal, and
    the CSV history of a resumed run."""
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    callbacks: list[Callback] = [EpochSeeds(seed)]
    if SlurmRequeue.wanted():
        requeue = SlurmRequeue()
        requeue.install()
        callbacks.append(requeue)
    if plan.ckpt is not None and global_rank() == 0:
        step = checkpoint_log_step(plan.ckpt)
        loggers = trainer_config.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(logger, CSVLogger):
                callbacks.append(CsvHistory(logger, step))
    return callbacks


class CsvHistory(Callback):
    """Keeps a resumed run's CSV log: Lightning's CSVLogger empties ``metrics.csv`` of a folder it
    opens again; the rows logged before the checkpoint's step are written back (the checkpoint's
    own epoch is logged again from the checkpoint, later rows belong to the interrupted epoch,
    which is trained again).

    Args:
        logger: The run's CSV logger.
        step: The step the checkpoint's epoch was logged at (its rows are logged again).
    """

    def __init__(self, logger: CSVLogger, step: int) -> None:
        self.logger = logger
        self.path = Path(logger.log_dir) / "metrics.csv"
        self.keys: list[str] = []
        self.rows: list[dict[str, str]] = []
        if self.path.is_file():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.keys = list(reader.fieldnames or [])
                self.rows = [r for r in reader if _step(r) < step]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.keys:
            return
        writer = self.logger.experiment  # opening it empties the file
        with self.path.open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=self.keys)
            out.writeheader()
            out.writerows(self.rows)
        writer.metrics_keys = sorted(set(writer.metrics_keys) | set(self.keys))


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0
