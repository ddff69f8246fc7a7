"""Run a zoo plan: roots first, then members, over shards, worker processes and concurrent builders.

Layout of a zoo being built (see :mod:`nwa.zoo.manifest` for the finished format)::

    build/config.json     the config this folder is built from (a different one is refused)
    build/log.jsonl       one line per trained model and per run (timings, hosts, pids)
    build/claims/         which builder trains which model right now (see nwa.zoo.claims)
    roots/<id>.safetensors, roots/<id>.json    a root's tensors, then its record (written last)
    weights/<id>.safetensors, rows/<id>.json   a member's tensors, then its manifest row

A model is finished when its record or row exists; both are written atomically after the weights,
so a killed build leaves no half model and a rerun trains only what is missing. ``--shard I/N``
takes the members whose plan index is ``I`` mod ``N`` and the roots they need. Every model is
trained under a claim, so concurrent builders of one zoo (shards, array tasks, two jobs opening a
zoo on first use) train each model once: a builder skips what others hold, then waits for it. A
model's bytes depend only on the config, its id and the thread count (:func:`runner.job_context`),
never on the worker count, shard, order or resumes. The run that finds every model finished writes
``zoo.json`` and ``models.parquet`` (``merge`` does the same on demand).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nwa.errors import ConfigError, NwaError, ZooError
from nwa.weights.io import open_weights
from nwa.zoo.claims import create_exclusive
from nwa.zoo.datasets import nwa_home
from nwa.zoo.manifest import Zoo, ZooMeta, ZooWriter
from nwa.zoo.plan import Plan, ZooConfig, load_config, make_plan
from nwa.zoo.recipe import Job
from nwa.zoo.report import Reporter, build_info, read_log
from nwa.zoo.runner import (
    append_log,
    finished,
    job_runner,
    recover_log_lines,
    root_record,
    save_root,
)
from nwa.zoo.schedule import Scheduler

__all__ = [
    "BuildResult",
    "BuildStopped",
    "Terminated",
    "build",
    "finalize",
    "merge",
    "save_root",
    "zoo_dir",
]

log = logging.getLogger("nwa.zoo")
KILL_AFTER_ENV = "NWA_ZOO_KILL_AFTER"  # testing: SIGKILL this process after N trained models


class BuildStopped(NwaError):
    """Raised by :func:`build` when ``stop_after`` models were trained (the zoo stays resumable)."""


def zoo_dir(config: ZooConfig, home: str | Path | None = None) -> Path:
    """Default output folder: ``$NWA_HOME/zoos/<name>-<config hash>`` (or under ``home``)."""
    return Path(home or nwa_home()).expanduser() / "zoos" / f"{config.name}-{config.digest()}"


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (0 <= I < N), or ``"slurm"`` for this SLURM array task -> ``(I, N)``."""
    if text == "slurm":
        try:
            lo = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            return int(os.environ["SLURM_ARRAY_TASK_ID"]) - lo, int(
                os.environ["SLURM_ARRAY_TASK_COUNT"]
            )
        except (KeyError, ValueError):
            raise ConfigError(
                "--shard slurm: SLURM_ARRAY_TASK_ID/COUNT are not set (not a job array task)"
            ) from None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def _claim(out: Path, config: ZooConfig) -> None:
    """Record the config in ``build/config.json``; refuse a folder built from another one."""
    path = out / "build" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(config.to_dict(), indent=2, sort_keys=True)
    if not create_exclusive(path, body):
        old = load_config(json.loads(path.read_text()))
        if old.digest() != config.digest():
            raise ZooError(
                f"{out}: holds a zoo built from another config ({old.name}-{old.digest()}); choose another --out or delete it"
            )


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (Slurm requeue, time limit, ``scancel``): the build unwinds and can resume."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def _terminable() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` in the main thread, so claims are released on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated(signum)

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@dataclass
class BuildResult:
    """What one :func:`build` call did.

    Attributes:
        path: The zoo folder.
        zoo: The finished zoo, or ``None`` while other shards still have work.
        trained: Ids trained by this call (roots and members).
        skipped: Jobs of this shard that were already finished.
        seconds: Wall time of this call.
    """

    path: Path
    zoo: Zoo | None
    trained: list[str] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build(
    config: str | Path | dict[str, Any] | ZooConfig,
    out: str | Path | None = None,
    shard: str | tuple[int, int] = (0, 1),
    workers: int = 1,
    threads: int | None = None,
    progress: bool = False,
    stop_after: int | None = None,
) -> BuildResult:
    """Build (or resume) a zoo.

    Args:
        config: Config file, name in ``configs/zoo``, dict, or :class:`ZooConfig`.
        out: Zoo folder (default :func:`zoo_dir`).
        shard: ``(I, N)`` or ``"I/N"``: build members ``I`` mod ``N`` and the roots they need.
        workers: Processes training in parallel (1 trains in this process).
        threads: Torch threads per job (default 1; parallelism comes from ``workers``). A zoo
            is bitwise reproducible at equal thread counts, whatever the workers or shards.
        progress: Show a progress bar with ETA (log lines are always emitted).
        stop_after: Stop (raise :class:`BuildStopped`) after training this many models.

    Raises:
        ConfigError: Bad config, before any training.
        ZooError: ``out`` holds a zoo from another config.
    """
    t0 = time.perf_counter()
    index, count = parse_shard(shard) if isinstance(shard, str) else shard
    plan = make_plan(config)
    cfg = plan.config
    if workers < 1 or (threads is not None and threads < 1):
        raise ConfigError(f"--workers {workers} --threads {threads}: need at least 1 each")
    out = Path(out).expanduser() if out else zoo_dir(cfg)
    threads = threads or 1
    _claim(out, cfg)
    todo_roots, todo, skipped = _shard_jobs(plan, out, index, count)
    if skipped:
        recover_log_lines(out, plan, _finished_jobs(plan, out, index, count))
    log.info(
        "%s: %d roots and %d members to train, %d finished (shard %d/%d, %d workers x %d threads)",
        out,
        len(todo_roots),
        len(todo),
        skipped,
        index,
        count,
        workers,
        threads,
    )
    trained: list[str] = []
    kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)

    def on_trained(result: dict[str, Any]) -> None:
        trained.append(result["id"])
        if kill_after and len(trained) >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        if stop_after is not None and len(trained) >= stop_after:
            raise BuildStopped(f"{out}: stopped after {len(trained)} models; rerun to resume")

    with (
        _terminable(),
        Reporter(len(todo_roots) + len(todo), progress, cfg.name) as report,
        job_runner(plan, out, workers, threads) as submit,
    ):
        Scheduler(out, submit, workers, report, on_trained).run(todo_roots, todo)
    wall = time.perf_counter() - t0
    run = {"shard": f"{index}/{count}", "workers": workers, "threads": threads, "wall": wall}
    append_log(
        out,
        {"event": "run", "trained": len(trained), "config_file": cfg.where, **run}
        | {"host": platform.node(), "pid": os.getpid(), "time": time.time()},
    )
    zoo = finalize(out, plan)
    return BuildResult(out, zoo, trained, skipped, wall)


Jobs = list[tuple[int, Job]]


def _shard(plan: Plan, index: int, count: int) -> tuple[Jobs, Jobs]:
    """Shard ``index`` of ``count``: the roots its members need, and its members."""
    mine = [m for k, m in enumerate(plan.members) if k % count == index]
    needed = {job.parent for _, job in mine}
    return [r for r in plan.roots if r[1].id in needed], mine


def _finished_jobs(plan: Plan, out: Path, index: int, count: int) -> list[tuple[str, int, Job]]:
    roots, mine = _shard(plan, index, count)
    jobs = [("root", i, j) for i, j in roots] + [("member", i, j) for i, j in mine]
    return [(k, i, j) for k, i, j in jobs if finished(out, k, j.id)]


def _shard_jobs(plan: Plan, out: Path, index: int, count: int) -> tuple[Jobs, Jobs, int]:
    """Shard ``index`` of ``count``: its unfinished roots (rotated, so shards start on different
    ones) and members, and how many of its models are finished already."""
    roots, mine = _shard(plan, index, count)
    roots = roots[index % max(1, len(roots)) :] + roots[: index % max(1, len(roots))]
    todo_roots = [r for r in roots if not finished(out, "root", r[1].id)]
    todo = [m for m in mine if not finished(out, "member", m[1].id)]
    return todo_roots, todo, len(roots) + len(mine) - len(todo_roots) - len(todo)


def missing(out: Path, plan: Plan) -> list[str]:
    """Ids of planned models not finished in ``out``."""
    writer = ZooWriter(out, ZooMeta(name=plan.config.name))
    gone = [job.id for _, job in plan.roots if not root_record(out, job.id).is_file()]
    rows = [r for _, job in plan.members for r in job.rows]
    return gone + [r for r in rows if not writer.has(r)]


def finalize(out: Path, plan: Plan) -> Zoo | None:
    """Write the manifest if every planned model is finished; else return ``None``.

    Concurrent finalizers write the same bytes, each by an atomic rename, so no lock is needed.
    """
    if missing(out, plan):
        return None
    writer = ZooWriter(out, ZooMeta(name=plan.config.name))
    planned = {r for _, job in plan.members for r in job.rows}
    rows = writer.rows()
    if extra := sorted({r["id"] for r in rows} - planned):
        raise ZooError(f"{out}: rows {extra[:3]} are not in the plan of {plan.config.where}")
    trees = {}
    for _, job in plan.roots:
        trees[job.tree] = json.loads(root_record(out, job.id).read_text())
    layout = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        if row["arch"] not in layout:
            with open_weights(out / row["path"]) as src:
                layout[row["arch"]] = src.names()
    threads = sorted({int(r["threads"]) for r in read_log(out) if "id" in r and "threads" in r})
    writer.meta = ZooMeta(
        name=plan.config.name,
        classes=list(plan.classes),
        trees=trees,
        label_schema={k: v for r in plan.recipes for k, v in r.label_schema().items()},
        build=build_info(plan, len(rows), threads),
        layout=layout,
        holdout_concepts=sorted({c for r in plan.recipes for c in r.holdout_concepts()}),
    )
    return writer.finalize(expected=len(planned))


def merge(out: str | Path) -> Zoo:
    """Finalize a sharded build from the config recorded in ``out``.

    Raises:
        ZooError: Not a zoo build folder, or models are still missing (names how many).
    """
    out = Path(out).expanduser()
    path = out / "build" / "config.json"
    if not path.is_file():
        raise ZooError(f"{out}: not a zoo build folder (no build/config.json)")
    plan = make_plan(json.loads(path.read_text()))
    if gone := missing(out, plan):
        raise ZooError(
            f"{out}: {len(gone)} models are not finished (e.g. {gone[:3]}); run the remaining shards first"
        )
    zoo = finalize(out, plan)
    assert zoo is not None
    return zoo
