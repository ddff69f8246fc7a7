"""Training one job at a time, in this process or in a pool of spawned workers.

Each job runs under a claim (:mod:`nwa.zoo.claims`), so concurrent builders never train one model
twice, and in a fixed context (:func:`job_context`): the torch thread count, deterministic
algorithms, and every global random generator seeded from the job's id, so a model's bytes depend
on nothing that ran before it in the same process. Roots are recorded in ``roots/<id>.json`` after
their tensors; members by :meth:`ZooWriter.add` after theirs. Every trained model appends a timing
line to ``build/log.jsonl``.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nwa.atomic import atomic_write_text, save_safetensors
from nwa.errors import ZooError
from nwa.weights.io import open_weights
from nwa.zoo.claims import Claims
from nwa.zoo.classifiers import stable_seed
from nwa.zoo.manifest import ZooMeta, ZooWriter
from nwa.zoo.plan import Plan, make_plan
from nwa.zoo.recipe import Job
from nwa.zoo.report import read_log

Submit = Callable[[str, int, Job], "Future[dict[str, Any]]"]


@contextlib.contextmanager
def job_context(seed: int, threads: int) -> Iterator[None]:
    """Train the same bytes in any process: fixed threads, deterministic algorithms, seeded RNGs.

    Why: a worker runs many jobs; without this, a model would depend on the global random state
    and settings the jobs before it left behind (which differ with the worker count and resumes).
    """
    before = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])


def save_root(
    writer: ZooWriter,
    root_id: str,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> str:
    """Save a root's tensors as ``roots/<id>.safetensors`` (layout order kept); return the relative path."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    target = writer.root / "roots" / f"{root_id}.safetensors"
    save_safetensors(target, tensors, {"nwa.layout": json.dumps(list(tensors))} | (metadata or {}))
    return str(target.relative_to(writer.root))


def root_record(out: Path, root_id: str) -> Path:
    """Where a finished root's record (its ``ZooMeta.trees`` entry) lives."""
    return out / "roots" / f"{root_id}.json"


def append_log(out: Path, record: dict[str, Any]) -> None:
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(out / "build" / "log.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def logged_ids(out: Path) -> set[str]:
    """The models ``build/log.jsonl`` has a line for."""
    return {r["id"] for r in read_log(out) if "id" in r}


def recovered_line(kind: str, model_id: str, recipe: str) -> dict[str, Any]:
    """The log line of a model finished by a builder killed before it logged (no timings)."""
    return {"id": model_id, "kind": kind, "recipe": recipe, "recovered": True, "pid": os.getpid()}


def recover_log_lines(out: Path, plan: Plan, jobs: list[tuple[str, int, Job]]) -> int:
    """Log the finished ``(kind, recipe index, job)`` that have no line, each under its claim
    (a live builder logs while it holds the claim, so a line missing then is lost for good);
    returns how many were recovered."""
    logged = logged_ids(out)
    lost = [(k, i, j) for k, i, j in jobs if j.id not in logged]
    if not lost:
        return 0
    claims, count = Claims(out), 0
    for kind, index, job in lost:
        with claims.hold(job.id) as other:
            if other is None and job.id not in logged_ids(out):
                append_log(out, recovered_line(kind, job.id, plan.recipe_name(index)))
                count += 1
    return count


def finished(out: Path, kind: str, model_id: str) -> bool:
    """Whether a root's record or a member's row exists (both are written last)."""
    done = root_record(out, model_id) if kind == "root" else out / "rows" / f"{model_id}.json"
    return done.is_file()


class Executor:
    """Trains one job at a time, in the main process or in a pool worker.

    Args:
        plan: The zoo's plan.
        out: The zoo folder.
        threads: Torch threads per job.
    """

    def __init__(self, plan: Plan, out: Path, threads: int = 1) -> None:
        self.plan, self.out, self.threads = plan, out, threads
        self.writer = ZooWriter(out, ZooMeta(name=plan.config.name))
        self.claims = Claims(out)
        self._cache: tuple[str, dict[str, torch.Tensor]] | None = None
        self._logged: set[str] = set()  # ids with a log line, read again only on a miss

    def __call__(self, kind: str, index: int, job: Job) -> dict[str, Any]:
        """Train ``job`` unless it is finished (``skipped``) or another builder holds it (``busy``)."""
        head = {"id": job.id, "kind": kind}
        recipe = self.plan.recipe_name(index)
        # the log line is written while the claim is held: a finished job found under our claim
        # without its line was finished by a builder killed before it logged
        with self.claims.hold(job.id) as other:
            if other is not None:
                return head | {"busy": other.describe()}
            if finished(self.out, kind, job.id):  # by another builder, before our claim
                if job.id not in self._logged and job.id not in self._reread_log():
                    append_log(self.out, recovered_line(kind, job.id, recipe))
                return head | {"skipped": True}
            start, cpu = time.perf_counter(), time.process_time()
            try:
                with job_context(stable_seed(self.plan.config.seed, job.id), self.threads):
                    result = self._root(index, job) if kind == "root" else self._member(index, job)
            except Exception as e:
                e.add_note(f"while building {job.id} ({recipe})")
                raise
            result |= head | {"recipe": recipe}
            result |= {
                "seconds": time.perf_counter() - start,
                "cpu_seconds": time.process_time() - cpu,
            }
            keys = ("id", "kind", "recipe", "arch", "seconds", "cpu_seconds")
            record = {k: result.get(k) for k in keys} | {
                "threads": self.threads,
                "pid": os.getpid(),
            }
            append_log(self.out, record)
        return result

    def _reread_log(self) -> set[str]:
        self._logged = logged_ids(self.out)
        return self._logged

    def _root(self, index: int, job: Job) -> dict[str, Any]:
        info = self.plan.recipes[index].run(job, self.writer, None)
        if (
            not isinstance(info, dict)
            or not info.get("path")
            or not (self.out / info["path"]).exists()
        ):
            raise ZooError(f"{self.out}: root {job.id} returned no existing 'path' ({info!r})")
        entry = {"root": job.id, "tree": job.tree, "recipe": self.plan.recipe_name(index), **info}
        atomic_write_text(
            root_record(self.out, job.id), json.dumps(entry, sort_keys=True, default=str)
        )
        return {"arch": info.get("arch", ""), "test_acc": info.get("test_acc")}

    def _root_tensors(self, root_id: str) -> dict[str, torch.Tensor]:
        if self._cache is None or self._cache[0] != root_id:
            entry = json.loads(root_record(self.out, root_id).read_text())
            with open_weights(self.out / entry["path"]) as src:
                self._cache = (root_id, {name: src.get(name) for name in src.names()})
        return self._cache[1]

    def _member(self, index: int, job: Job) -> dict[str, Any]:
        root = self._root_tensors(job.parent) if job.parent else None
        made = self.plan.recipes[index].run(job, self.writer, root)
        rows = [dict(r) for r in (made if isinstance(made, list) else [made])]
        if len(rows) == 1:
            rows[0].setdefault("id", job.id)
        if [r.get("id") for r in rows] != list(job.rows):
            got = [r.get("id") for r in rows]
            raise ZooError(f"{self.out}: recipe returned rows {got} for job {job.id!r}")
        remap = self.plan.remap[index]
        for row in rows:  # in order: the job's own row, which marks it finished, comes last
            for key in ("tree", "parent", "split"):
                row[key] = row.get(key) or getattr(job, key)
            row["classes"] = [remap[int(c)] for c in row.get("classes", []) or []]
            self.writer.add(row)
        return {"arch": rows[-1].get("arch", ""), "test_acc": rows[-1].get("test_acc")}


_WORKER: Executor | None = None
_BUSY = threading.Event()


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (Slurm requeue, time limit, scancel) unwinds the job, so its claim is released."""
    raise SystemExit(128 + signum)


def _exit_with_parent(parent: int) -> None:
    """Exit when the builder that started this worker is gone (a pool worker would wait forever).

    A job in progress is interrupted first, as by SIGTERM, so its claim and temporary files go.
    """
    while os.getppid() == parent:
        time.sleep(1.0)
    if _BUSY.is_set():
        _thread.interrupt_main(signal.SIGTERM)
        for _ in range(50):  # up to 5 s for the job to unwind in the main thread
            if not _BUSY.is_set():
                break
            time.sleep(0.1)
    os._exit(1)


def _init_worker(config: dict[str, Any], out: str, threads: int) -> None:
    global _WORKER
    signal.signal(signal.SIGTERM, _terminate)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    _WORKER = Executor(make_plan(config), Path(out), threads)


def _work(kind: str, index: int, job: Job) -> dict[str, Any]:
    assert _WORKER is not None
    _BUSY.set()
    try:
        return _WORKER(kind, index, job)
    finally:
        _BUSY.clear()


@contextlib.contextmanager
def job_runner(plan: Plan, out: Path, workers: int, threads: int) -> Iterator[Submit]:
    """Yield ``submit(kind, index, job) -> Future`` backed by this process or a spawn pool.

    In this process a job runs when submitted and its future is already done.
    """
    if workers == 1:
        executor = Executor(plan, out, threads)

        def run_here(kind: str, index: int, job: Job) -> Future[dict[str, Any]]:
            fut: Future[dict[str, Any]] = Future()
            try:
                fut.set_result(executor(kind, index, job))
            except Exception as e:
                fut.set_exception(e)
            return fut

        yield run_here
        return
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(plan.config.to_dict(), str(out), threads),
    )
    try:
        yield lambda kind, index, job: pool.submit(_work, kind, index, job)
    except BaseException:
        # stopped (SIGTERM, Ctrl-C, an error): the workers' jobs unwind too, releasing their
        # claims, instead of running to their end
        for child in multiprocessing.active_children():
            child.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
