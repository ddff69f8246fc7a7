"""Progress display and build records for :mod:`nwa.zoo.build`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import platform
import time
from collections import defaultdict
from importlib import metadata
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
        self._waiting: tuple[str, ...] = ()
        self._waiting_at = 0.0

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
        """A job another builder finished meanwhile."""
        self.count += 1
        self._emit(
            f"[{self.count}/{self.total}] {result['kind']:<6} {result['id']} finished elsewhere"
        )
        if self._progress is not None:
            self._progress.advance(self._task)

    def waiting(self, busy: dict[str, str]) -> None:
        """Models other builders hold (id -> holder): a line when the set changes, else each minute."""
        key = tuple(sorted(busy))
        if key == self._waiting and time.monotonic() - self._waiting_at < 60:
            return
        self._waiting, self._waiting_at = key, time.monotonic()
        shown = ", ".join(f"{k} ({v})" for k, v in sorted(busy.items())[:3])
        more = f" and {len(busy) - 3} more" if len(busy) > 3 else ""
        self._emit(f"waiting for {len(busy)} models claimed by other builders: {shown}{more}")


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape a zoo (from package metadata: importing
    diffusers and peft only to read their versions would cost seconds)."""
    import torch  # its own version string names the build (+cpu, +cu130), its metadata does not

    out = {"python": platform.python_version(), "nwa": nwa.__version__, "torch": torch.__version__}
    for name in ("timm", "numpy", "diffusers", "peft"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def read_log(out: Path) -> list[dict[str, Any]]:
    """The records of ``build/log.jsonl`` (a line cut by a kill is skipped)."""
    path = Path(out) / "build" / "log.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def build_info(plan: Plan, n_models: int, threads: list[int]) -> dict[str, Any]:
    """``ZooMeta.build``: what determines the zoo's bytes, and nothing that varies between builds.

    Timings, hosts and the config file's path go to ``build/log.jsonl`` instead (see
    :func:`timings`), so two builds of one config give the same ``zoo.json``. Every model is
    trained with a fixed thread count, deterministic algorithms and seeds from its id; on the CPU
    (every recipe's ``device``) that makes the files bit-identical across runs, worker counts,
    shards and resumes on one machine and library versions (``versions``): ``deterministic``.
    GPU kernels (atomics, autotuned algorithms) do not promise that, so a zoo with a GPU recipe
    says ``deterministic: false`` and its files agree across builds only to a tolerance.
    """
    devices = sorted({r.device for r in plan.recipes})
    return {
        "config": plan.config.to_dict(),
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
        "device": ",".join(devices),
        "threads": threads,
        "deterministic": devices == ["cpu"],
    }


def timings(out: Path) -> dict[str, Any]:
    """Build timings gathered from ``build/log.jsonl``.

    ``per_model`` maps ``recipe/kind/arch`` to the count, mean wall and CPU seconds of the latest
    training of each model (CPU seconds show the cost on a loaded machine); ``trainings`` counts
    every training logged (more than the models when concurrent builders duplicated work);
    ``wall_seconds`` sums the wall time of every run (shards running at once are counted each).
    """
    per_model: dict[str, dict[str, Any]] = {}
    runs, trainings = [], 0
    for rec in read_log(out):
        if rec.get("event") == "run":
            runs.append(rec)
        elif "id" in rec:
            per_model[rec["id"]] = rec
            trainings += 1
    groups: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    for rec in per_model.values():
        if rec.get("seconds") is None:  # recovered: trained by a builder killed before it logged
            continue
        key = f"{rec['recipe']}/{rec['kind']}/{rec.get('arch') or '-'}"
        groups[key].append(float(rec["seconds"]))
        cpu[key].append(float(rec.get("cpu_seconds") or "nan"))
    return {
        "per_model": {
            k: {
                "n": len(v),
                "mean_s": sum(v) / len(v),
                "mean_cpu_s": sum(cpu[k]) / len(v),
                "total_s": sum(v),
            }
            for k, v in sorted(groups.items())
        },
        "trainings": trainings,
        "train_seconds": sum(sum(v) for v in groups.values()),
        "wall_seconds": sum(float(r.get("wall", 0.0)) for r in runs),
        "runs": runs,
    }


def file_hashes(zoo: str | Path) -> dict[str, str]:
    """SHA-256 of every file a build leaves in ``zoo`` (weights, roots, rows, ``zoo.json``,
    ``models.parquet``; not ``build/`` or caches), by relative path: equal for two builds of one
    config and seed (see :func:`build_info`)."""
    zoo = Path(zoo)
    keep = ("weights", "roots", "rows", "zoo.json", "models.parquet")
    return {
        str(p.relative_to(zoo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(zoo.rglob("*"))
        if p.is_file() and p.relative_to(zoo).parts[0] in keep
    }
