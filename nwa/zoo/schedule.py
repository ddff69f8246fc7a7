"""Run a build's jobs: roots before their members, other builders' claimed models waited for.

A job another builder holds comes back ``busy``; the scheduler carries on with the rest and then
polls (every 0.5 s at first, backing off to 5 s: cheap ``stat`` calls, never a hot loop) until each
busy model is finished by its holder, or its claim expired and it is trained here. A member waits
for its root, wherever that is being trained.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from nwa.errors import ZooError
from nwa.zoo.claims import Claims
from nwa.zoo.recipe import Job
from nwa.zoo.report import Reporter
from nwa.zoo.runner import Submit, finished

Item = tuple[str, int, Job]
MIN_POLL, MAX_POLL = 0.5, 5.0


class Scheduler:
    """Feeds jobs to ``submit`` as they become ready and collects the results.

    Args:
        out: The zoo folder.
        submit: From :func:`nwa.zoo.runner.job_runner`.
        capacity: Jobs in flight at once (the worker count).
        report: Progress display.
        on_trained: Called with the result of every model trained here.
    """

    def __init__(
        self,
        out: Path,
        submit: Submit,
        capacity: int,
        report: Reporter,
        on_trained: Callable[[dict[str, Any]], None],
    ) -> None:
        self.out, self.submit, self.capacity = out, submit, capacity
        self.report, self.on_trained = report, on_trained
        self.claims = Claims(out)
        self.ready: deque[Item] = deque()
        self.blocked: dict[str, list[Item]] = {}
        self.busy: dict[str, tuple[Item, str]] = {}
        self.running: dict[Future[dict[str, Any]], Item] = {}
        self.poll = MIN_POLL

    def run(self, roots: list[tuple[int, Job]], members: list[tuple[int, Job]]) -> None:
        """Train ``roots`` and ``members`` (unfinished ones), each member after its root."""
        self.ready.extend(("root", i, job) for i, job in roots)
        for i, job in members:
            if job.parent and not finished(self.out, "root", job.parent):
                self.blocked.setdefault(job.parent, []).append(("member", i, job))
            else:
                self.ready.append(("member", i, job))
        while self.ready or self.running or self.busy or self.blocked:
            while self.ready and len(self.running) < self.capacity:
                item = self.ready.popleft()
                self.running[self.submit(*item)] = item
            changed = self._collect()
            changed |= self._check_busy()
            if not changed and not self.ready:
                if not self.running:
                    time.sleep(self.poll)
                self.poll = min(MAX_POLL, self.poll * 1.5)
            else:
                self.poll = MIN_POLL
            if self.blocked and not (self.ready or self.running or self.busy):
                lost = sorted(self.blocked)
                raise ZooError(f"{self.out}: members wait for roots no builder trains: {lost[:3]}")

    def _collect(self) -> bool:
        """Handle finished futures (waiting up to one poll for the first); whether any finished."""
        if not self.running:
            return False
        # with models busy elsewhere, wake up every poll to look at them; otherwise block
        timeout = self.poll if self.busy else None
        done, _ = wait(self.running, timeout=timeout, return_when=FIRST_COMPLETED)
        for fut in done:
            item = self.running.pop(fut)
            result = fut.result()
            if result.get("busy"):
                self.busy[item[2].id] = (item, result["busy"])
                continue
            if result.get("skipped"):
                self.report.skip(result)
            else:
                self.report.done(result)
                self.on_trained(result)
            self._unblock(item[2].id)
        return bool(done)

    def _unblock(self, model_id: str) -> None:
        self.ready.extend(self.blocked.pop(model_id, []))

    def _check_busy(self) -> bool:
        """Busy models finished elsewhere are done; expired or released ones are ours again."""
        changed = False
        for model_id, (item, _) in list(self.busy.items()):
            if finished(self.out, item[0], model_id):
                del self.busy[model_id]
                self.report.skip({"id": model_id, "kind": item[0]})
                self._unblock(model_id)
                changed = True
            elif self.claims.holder(model_id) is None:
                del self.busy[model_id]
                self.ready.append(item)
                changed = True
        if self.busy:
            self.report.waiting({k: holder for k, (_, holder) in self.busy.items()})
        return changed
