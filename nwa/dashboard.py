"""Runs laid out for the W&B dashboard: a logger with best-value summaries, run tags, a zoo's
content hash, and the summary run of a bench suite.

Every run of ``python -m nwa.bench`` and ``python -m nwa.sweep`` logs twice: to W&B (offline
unless the user is logged in; ``wandb sync`` uploads later) and to CSV (no account needed). On
W&B a suite is one **group**, the task (``classes``, ``properties``, ``concept``) the
**job type**, and the **tags** name the method, the models (tree or subset), the zoo, the zoo's
content hash and the seed; the run config also holds ``method``, ``tree`` and ``seed`` so the
dashboard compares runs without set-up: group by ``method``, x = ``seed``, y = ``test/acc.last``.

Summaries: every validation metric keeps its best value (``val/acc.max`` for accuracy-like
metrics, ``val/loss.min`` for losses and errors, :func:`nwa.runs.metric_goal`) and its last
(``.last``); test metrics keep their final value (``test/acc.last``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from nwa.runs import metric_goal

WANDB_STEP = "trainer/global_step"  # the x axis Lightning's WandbLogger declares


def summary_kinds(metric: str) -> str:
    """The W&B summary of ``metric``: ``max,last`` or ``min,last`` for a validation metric
    with a known goal (its best value and its last), ``last`` otherwise."""
    goal = metric_goal(metric)
    if metric.startswith("val/") and goal is not None:
        return f"{goal},last"
    return "last"


class DashboardLogger(WandbLogger):
    """Lightning's ``WandbLogger`` with a job type, tags and best-value summaries.

    Each metric is declared with ``define_metric`` before its first value is logged, so the run
    summary holds the best value (``val/acc.max``, ``val/loss.min``) and the last (``.last``)
    from the first epoch on, without a list of metric names in the config.

    Args:
        job_type: W&B job type (the bench: the task, ``classes``, ``properties`` ...).
        tags: W&B tags (the bench: ``method:ProbeX``, ``tree:...``, ``zoo:...``, ``seed:0``).
        **kwargs: ``WandbLogger``'s arguments (``project``, ``name``, ``group``, ``save_dir``,
            ``config``: fields to group and plot by on the dashboard, beside the CLI config ...).
    """

    def __init__(
        self, job_type: str | None = None, tags: list[str] | None = None, **kwargs: Any
    ) -> None:
        extra = {k: v for k, v in (("job_type", job_type), ("tags", tags)) if v}
        super().__init__(**kwargs, **extra)
        self._declared: set[str] = set()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for name in metrics:
            if name not in self._declared and name != WANDB_STEP and not name.startswith("_"):
                self.experiment.define_metric(
                    name, step_metric=WANDB_STEP, step_sync=True, summary=summary_kinds(name)
                )
                self._declared.add(name)
        super().log_metrics(metrics, step)


def zoo_fingerprint(path: str | Path) -> str:
    """A short content hash of a zoo: its manifest (every member, its labels and files) and its
    description (``zoo.json``); equal for bit-identical rebuilds, different once a member,
    label or file name changes.

    Raises:
        ZooError: The folder is not a zoo.
    """
    from nwa.zoo.adapters import open_zoo

    path = Path(path)
    h = hashlib.sha256(open_zoo(path).table.to_csv(index=False).encode())
    meta = path / "zoo.json"
    if meta.is_file():
        h.update(meta.read_bytes())
    return h.hexdigest()[:12]


def run_tags(method: str, subset: str, zoo: str, zoo_hash: str, seed: int) -> list[str]:
    """The tags of one bench run (W&B allows 64 characters a tag)."""
    tags = [f"method:{method}", f"tree:{subset}", f"zoo:{zoo}", f"zoo-hash:{zoo_hash}"]
    return [t[:64] for t in (*tags, f"seed:{seed}")]


def wandb_mode() -> str:
    """``online`` when the user is logged in to W&B, else ``offline`` (runs sync later);
    ``WANDB_MODE`` wins where set (``dryrun``, which Lightning's offline logger writes into the
    environment, is ``offline``)."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode:
        return {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def project() -> str:
    return os.environ.get("WANDB_PROJECT", "nwa")


def twin_loggers(
    save_dir: Path,
    name: str,
    group: str,
    job_type: str | None = None,
    tags: Sequence[str] = (),
    version: str | None = "0",
    fields: Mapping[str, Any] | None = None,
) -> str:
    """``--trainer.logger`` value of a run logged to W&B and, with the same metrics, to CSV
    (``<save_dir>/<name>/version_<version>/metrics.csv``; ``None``: the next free version);
    W&B writes ``<save_dir>/wandb/``."""
    wandb = {
        "project": project(),
        "save_dir": str(save_dir),
        "offline": wandb_mode() == "offline",
        "name": name,
        "group": group,
        "job_type": job_type,
        "tags": list(tags),
        "config": dict(fields or {}),
        "log_model": False,
    }
    csv = {"save_dir": str(save_dir), "name": name, "version": version}
    return json.dumps(
        [
            {"class_path": "nwa.dashboard.DashboardLogger", "init_args": wandb},
            {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": csv},
        ]
    )


def finish_run() -> None:
    """Close the W&B run this process has open (Lightning leaves it open after a fit, and the
    next ``WandbLogger`` of the process would log into it)."""
    import wandb

    if wandb.run is not None:
        wandb.finish()


def log_suite(
    out: Path, table: Any, figures: Sequence[Path], group: str, meta: Mapping[str, Any]
) -> str:
    """The summary run of a suite: ``results`` (one row per run) as a ``wandb.Table``, every
    report figure as a ``wandb.Image`` and ``report.md`` as a run file, in ``group`` with job type
    ``report``. Its id is fixed per output folder, so a rewritten report updates the same run.

    Returns:
        The run id.
    """
    import pandas as pd
    import wandb

    finish_run()
    run_id = "report-" + hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:10]
    frame = pd.DataFrame(table).astype(object)
    frame = frame.where(frame.notna(), None).map(_table_cell)
    run = wandb.init(
        project=project(),
        dir=str(out),
        group=group,
        job_type="report",
        name=f"{group}-report",
        id=run_id,
        resume="allow",
        mode=wandb_mode(),
        config=dict(meta),
        tags=["report"],
    )
    try:
        images = {f"figures/{p.stem}": wandb.Image(str(p)) for p in figures if p.is_file()}
        run.log({"results": wandb.Table(dataframe=frame), **images})
        report = out / "report.md"
        if report.is_file():
            run.save(str(report), base_path=str(out), policy="now")
    finally:
        run.finish()
    return run_id


def _table_cell(v: Any) -> Any:
    # a W&B table column has one type: numbers stay numbers, anything else is text
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)
