"""Progress display and build records for :mod:`nwa.zoo.build`."""

from __future__ import annotations

import json
import logging
import math
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nwa

if TYPE_CHECKING:
    from nwa.zoo.plan import Plan

log = logging.getLogger("nwa.zoo")


class Reporter:
    """A rich progress bar with ETA plus one log line per finished model.

    Args:
        total: Models this run will train.
        show: Draw the bar and print lines on the console; otherwise lines go to the
            ``nwa.zoo`` logger only.
        title: Bar title.
    """

    def __init__(self, total: int, show: bool, title: str) -> None:
        self.total, self.show, self.title, self.count = total, show, title, 0
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Reporter:
        if self.show:
            from nwa.progress import count_bar

            self._progress = count_bar("[bold]{task.description}")
            self._progress.__enter__()
            self._task = self._progress.add_task(self.title, total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def _emit(self, line: str) -> None:
        if self._progress is not None:
            stamp = time.strftime("%H:%M:%S")
            self._progress.console.print(
                f"{stamp} {line}", markup=False, highlight=False, soft_wrap=True
            )
        else:
            log.info(line)

    def done(self, result: dict[str, Any]) -> None:
        """One model finished: print its line and advance the bar."""
        self.count += 1
        acc = result.get("test_acc")
        acc_text = f" test_acc={acc:.3f}" if isinstance(acc, float) and not math.isnan(acc) else ""
        self._emit(
            f"[{self.count}/{self.total}] {result['kind']:<6} {result['id']} ({result.get('arch', '')}) "
            f"{result['seconds']:.1f}s{acc_text}"
        )
        if self._progress is not None:
            self._progress.advance(self._task)

    def skip(self, result: dict[str, Any]) -> None:
        """A job another shard finished meanwhile."""
        self.count += 1
        self._emit(
            f"[{self.count}/{self.total}] {result['kind']:<6} {result['id']} finished elsewhere"
        )
        if self._progress is not None:
            self._progress.advance(self._task)


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape a zoo."""
    out = {"python": platform.python_version(), "nwa": nwa.__version__}
    for name in ("torch", "timm", "numpy", "diffusers", "peft"):
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = __import__(name)
            except ImportError:
                continue
        out[name] = getattr(mod, "__version__", "?")
    return out


def build_info(out: Path, plan: Plan, n_models: int) -> dict[str, Any]:
    """``ZooMeta.build``: config, seed, the data each recipe read, versions, and timings gathered
    from ``build/log.jsonl``.

    ``timings.per_model`` maps ``recipe/kind/arch`` to the count, mean wall and CPU seconds of
    the latest training of each model (CPU seconds show the cost on a loaded machine); ``timings.wall_seconds`` sums the wall time of every run (shards
    running at once are counted each).
    """
    per_model: dict[str, dict[str, Any]] = {}
    runs = []
    path = out / "build" / "log.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if rec.get("event") == "run":
            runs.append(rec)
        elif "id" in rec:
            per_model[rec["id"]] = rec
    groups: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    for rec in per_model.values():
        key = f"{rec['recipe']}/{rec['kind']}/{rec.get('arch') or '-'}"
        groups[key].append(float(rec["seconds"]))
        cpu[key].append(float(rec.get("cpu_seconds") or "nan"))
    return {
        "config": plan.config.to_dict(),
        "config_file": plan.config.where,
        "config_hash": plan.config.digest(),
        "seed": plan.config.seed,
        "n_models": n_models,
        "n_roots": len(plan.roots),
        # the images behind the labels: a zoo from other data never passes for this one
        "data": [
            {"recipe": plan.recipe_name(i)} | record
            for i, r in enumerate(plan.recipes)
            if (record := r.data_record())
        ],
        "versions": versions(),
        "timings": {
            "per_model": {
                k: {
                    "n": len(v),
                    "mean_s": sum(v) / len(v),
                    "mean_cpu_s": sum(cpu[k]) / len(v),
                    "total_s": sum(v),
                }
                for k, v in sorted(groups.items())
            },
            "train_seconds": sum(sum(v) for v in groups.values()),
            "wall_seconds": sum(float(r.get("wall", 0.0)) for r in runs),
            "runs": runs,
        },
    }
