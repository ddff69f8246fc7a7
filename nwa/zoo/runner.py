"""Training one job at a time, in this process or in a pool of spawned workers.

Roots are trained under a per-root ``fcntl`` lock and recorded in ``roots/<id>.json`` after their
tensors; members are recorded by :meth:`ZooWriter.add` after theirs. Every trained model appends a
timing line to ``build/log.jsonl``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from nwa.atomic import atomic_path, atomic_write_text
from nwa.errors import ZooError
from nwa.weights.io import open_weights
from nwa.zoo.manifest import ZooMeta, ZooWriter
from nwa.zoo.plan import Plan, make_plan
from nwa.zoo.recipe import Job


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path`` (created), held for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def save_root(
    writer: ZooWriter,
    root_id: str,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> str:
    """Save a root's tensors as ``roots/<id>.safetensors`` (layout order kept); return the relative path."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    target = writer.root / "roots" / f"{root_id}.safetensors"
    with atomic_path(target) as tmp:
        save_file(
            tensors, str(tmp), metadata={"nwa.layout": json.dumps(list(tensors))} | (metadata or {})
        )
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


class Executor:
    """Trains one job at a time, in the main process or in a pool worker."""

    def __init__(self, plan: Plan, out: Path) -> None:
        self.plan, self.out = plan, out
        self.writer = ZooWriter(out, ZooMeta(name=plan.config.name))
        self._cache: tuple[str, dict[str, torch.Tensor]] | None = None

    def __call__(self, kind: str, index: int, job: Job) -> dict[str, Any]:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            result = self._root(index, job) if kind == "root" else self._member(index, job)
        except Exception as e:
            if hasattr(e, "add_note"):
                e.add_note(f"while building {job.id} ({self.plan.recipe_name(index)})")
            raise
        if result.get("skipped"):
            return result
        result |= {
            "id": job.id,
            "kind": kind,
            "recipe": self.plan.recipe_name(index),
            "seconds": time.perf_counter() - start,
        }
        result["cpu_seconds"] = time.process_time() - cpu
        keys = ("id", "kind", "recipe", "arch", "seconds", "cpu_seconds")
        append_log(
            self.out, {k: result.get(k) for k in keys} | {"threads": torch.get_num_threads()}
        )
        return result

    def _root(self, index: int, job: Job) -> dict[str, Any]:
        record = root_record(self.out, job.id)
        with file_lock(self.out / "roots" / f".{job.id}.lock"):
            if record.is_file():
                return {"id": job.id, "kind": "root", "skipped": True}
            info = self.plan.recipes[index].run(job, self.writer, None)
            if (
                not isinstance(info, dict)
                or not info.get("path")
                or not (self.out / info["path"]).exists()
            ):
                raise ZooError(f"{self.out}: root {job.id} returned no existing 'path' ({info!r})")
            entry = {
                "root": job.id,
                "tree": job.tree,
                "recipe": self.plan.recipe_name(index),
                **info,
            }
            atomic_write_text(record, json.dumps(entry, sort_keys=True, default=str))
        return {"arch": info.get("arch", ""), "test_acc": info.get("test_acc")}

    def _root_tensors(self, root_id: str) -> dict[str, torch.Tensor]:
        if self._cache is None or self._cache[0] != root_id:
            entry = json.loads(root_record(self.out, root_id).read_text())
            with open_weights(self.out / entry["path"]) as src:
                self._cache = (root_id, {name: src.get(name) for name in src.names()})
        return self._cache[1]

    def _member(self, index: int, job: Job) -> dict[str, Any]:
        root = self._root_tensors(job.parent) if job.parent else None
        row = dict(self.plan.recipes[index].run(job, self.writer, root))
        if row.setdefault("id", job.id) != job.id:
            raise ZooError(f"{self.out}: recipe returned row id {row['id']!r} for job {job.id!r}")
        for key in ("tree", "parent", "split"):
            row[key] = row.get(key) or getattr(job, key)
        remap = self.plan.remap[index]
        row["classes"] = [remap[int(c)] for c in row.get("classes", []) or []]
        self.writer.add(row)
        return {"arch": row.get("arch", ""), "test_acc": row.get("test_acc")}


_WORKER: Executor | None = None


def _init_worker(config: dict[str, Any], out: str, threads: int) -> None:
    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = Executor(make_plan(config), Path(out))


def _work(kind: str, index: int, job: Job) -> dict[str, Any]:
    assert _WORKER is not None
    return _WORKER(kind, index, job)


@contextlib.contextmanager
def job_runner(plan: Plan, out: Path, workers: int, threads: int) -> Iterator[Any]:
    """Yield ``run(kind, jobs) -> iterator of results`` backed by this process or a spawn pool."""
    if workers == 1:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        executor = Executor(plan, out)
        try:
            yield lambda kind, jobs: (executor(kind, i, job) for i, job in jobs)
        finally:
            torch.set_num_threads(before)
        return
    ctx = get_context("spawn")
    pool = ProcessPoolExecutor(
        workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(plan.config.to_dict(), str(out), threads),
    )

    def run(kind: str, jobs: list[tuple[int, Job]]) -> Iterator[dict[str, Any]]:
        pending: set[Future] = {pool.submit(_work, kind, i, job) for i, job in jobs}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield fut.result()

    try:
        yield run
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
