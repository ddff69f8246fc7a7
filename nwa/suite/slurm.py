"""The bench's runs as Slurm job arrays, through submitit: ``python -m nwa.bench --executor slurm``.

One array per run kind (aligners, whole-network graph encoders, the rest), one array task per
planned run, each with the kind's time limit; every task runs :func:`nwa.suite.execute.execute`
into the same run folder as the local executor, so skipping finished runs, resuming and the
report are the same. Submitit's files (the pickled call, each task's stdout and stderr) are in
``<out>/slurm/``. The command waits for the arrays (Ctrl-C cancels them) and prints each run as
it ends; a task that dies without a result (killed, out of memory, time limit) is reported as
failed and rerun by the next call.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nwa.suite.execute import Dashboard, execute, load_result, quiet
from nwa.suite.plan import CONCEPT, RunSpec

# minutes per run kind on a GPU or a few cores: aligners load a text encoder and train longest,
# graph encoders read whole networks
KIND_MINUTES = {"align": 120, "graph": 90, "default": 60}
GRAPH_METHODS = ("NWPA", "WeightNet")
_POLL_S = 2.0
_GONE_S = 30.0  # a task absent from squeue this long without a result has died


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of every array task (``--slurm.*`` options of ``nwa.bench``).

    Args:
        partition: Partition (default: the cluster's default).
        cpus: CPU cores per run (torch uses this many threads).
        gpus: GPUs per run.
        mem_gb: Memory per run, GB.
        minutes: Time limit per run; default per kind (:data:`KIND_MINUTES`).
        parallel: Array tasks running at once per array (default: as many as the cluster allows).
    """

    partition: str | None = None
    cpus: int = 2
    gpus: int = 0
    mem_gb: int = 8
    minutes: int | None = None
    parallel: int | None = None


def run_kind(spec: RunSpec) -> str:
    """``align``, ``graph`` or ``default``: the run's resources."""
    if spec.task == CONCEPT:
        return "align"
    return "graph" if spec.method in GRAPH_METHODS else "default"


def _task(spec: RunSpec, folder: Path, keep: bool, board: Dashboard | None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
    quiet()
    return execute(spec, folder, keep, board)


def _executor(out: Path, kind: str, opts: SlurmOptions) -> Any:
    import submitit

    ex = submitit.AutoExecutor(folder=str(out / "slurm" / "%j"), cluster="slurm")
    params: dict[str, Any] = {
        "name": f"nwa-bench-{kind}",
        "timeout_min": opts.minutes or KIND_MINUTES[kind],
        "cpus_per_task": opts.cpus,
        "mem_gb": opts.mem_gb,
        "tasks_per_node": 1,
        "nodes": 1,
    }
    if opts.gpus:
        params["gpus_per_node"] = opts.gpus
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.parallel:
        params["slurm_array_parallelism"] = opts.parallel
    ex.update_parameters(**params)
    return ex


def _queued(job_ids: Sequence[str]) -> set[str]:
    """Array task ids (``123_4``) still known to the controller (pending or running)."""
    r = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i", "-j", ",".join({j.split("_")[0] for j in job_ids})],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return set(r.stdout.split()) if r.returncode == 0 else set(job_ids)


def run_on_slurm(
    specs: Sequence[RunSpec],
    out: Path,
    opts: SlurmOptions,
    keep_checkpoints: bool = False,
    started: Callable[[RunSpec], None] | None = None,
    finished: Callable[[RunSpec, dict[str, Any]], None] | None = None,
    board: Dashboard | None = None,
) -> list[dict[str, Any]]:
    """Submit ``specs`` as one job array per run kind and wait for every task."""
    for spec in specs:  # an earlier attempt's result must not read as this one's
        (out / "runs" / spec.key / "result.json").unlink(missing_ok=True)
    pending: dict[Any, RunSpec] = {}
    for kind in ("align", "graph", "default"):
        chosen = [s for s in specs if run_kind(s) == kind]
        if not chosen:
            continue
        ex = _executor(out, kind, opts)
        folders = [out / "runs" / s.key for s in chosen]
        n = len(chosen)
        jobs = ex.map_array(_task, chosen, folders, [keep_checkpoints] * n, [board] * n)
        pending |= dict(zip(jobs, chosen))
        for spec in chosen:
            if started:
                started(spec)
    results: list[dict[str, Any]] = []
    gone: dict[Any, float] = {}
    try:
        while pending:
            time.sleep(_POLL_S)
            queued = _queued([j.job_id for j in pending])
            for job in list(pending):
                spec = pending[job]
                res = load_result(out / "runs" / spec.key)
                if job.job_id not in queued:
                    gone.setdefault(job, time.monotonic())
                done = res is not None and job.job_id not in queued
                died = res is None and time.monotonic() - gone.get(job, time.monotonic()) > _GONE_S
                if not (done or died):
                    continue
                if died:
                    res = spec.to_dict() | {
                        "error": f"Slurm task {job.job_id} ended without a result"
                    }
                del pending[job]
                results.append(res)
                if finished:
                    finished(spec, res)
    except KeyboardInterrupt:
        for job in pending:
            job.cancel(check=False)
        raise
    return results
