"""``python -m nwa.compare RUN [RUN ...] [--metrics val/acc test/acc ...] [--out DIR] [--x epoch]``:
compare training runs side by side.

Each RUN is a run folder (``runs/<run_name>/<id>``), a W&B run folder
(``<run folder>/wandb/offline-run-*``) or a CSV logger folder (with ``metrics.csv``); see
:mod:`nwa.runs`. The table has
one column per run: its name and group (the naming scheme is in :mod:`nwa.runs`: ``--run_name``
or the config's stem; ``--group`` or the zoo), the config fields that differ between the runs,
then the final and the best value of every metric the runs share (best is the maximum for
accuracy-like metrics, the minimum for losses and errors; see :func:`nwa.runs.metric_goal`).

It is printed, and written to ``DIR`` (default ``compare/``) as ``comparison.md`` (the same
layout), ``comparison.csv`` (one row per run) and ``curves.png`` (one subplot per metric,
x = epoch or step, one line per run).

Examples::

    python -m nwa.compare runs/probex_vision/* runs/dense_vision/*
    python -m nwa.compare runs/probex_vision/ab12cd34 logs/dense/version_0 --metrics val/acc test/acc
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pandas as pd

from nwa.atomic import atomic_write_text
from nwa.errors import NwaError
from nwa.runs import AXES, Run, load_runs, metric_goal
from nwa.tables import markdown_table, write_rows

# Fields that differ between any two runs without changing what was trained.
IGNORED_CONFIG = (
    "trainer.logger",
    "trainer.default_root_dir",
    "run_name",
    "group",
    "ckpt_path",
    "checkpoint.dirpath",
)
IDENTITY = ("group", "logger", "id")
_WIDTH = 48  # longest config value shown in the terminal and in Markdown


@dataclass
class Comparison:
    """Runs compared side by side.

    Args:
        runs: The runs, in the order given.
        labels: A unique label per run (its name, with the id added where names repeat).
        metrics: The metrics compared.
        differences: ``config field -> value per run`` for the fields that differ.
        table: One row per run: ``run, group, logger, id, path``, the differing config fields,
            then ``<metric> final`` and ``<metric> best`` for each metric.
    """

    runs: list[Run]
    labels: list[str]
    metrics: list[str]
    differences: dict[str, list[Any]]
    table: pd.DataFrame

    def side_by_side(self) -> pd.DataFrame:
        """Fields as rows, one column per run, values as display strings."""
        rows = [*IDENTITY, *self.differences, *_metric_columns(self.metrics)]
        frame = self.table.set_index("run")[rows].T
        return frame.apply(lambda column: column.map(_fmt))  # DataFrame.map needs pandas 2.1

    def to_markdown(self) -> str:
        """The side-by-side table as GitHub Markdown."""
        frame = self.side_by_side()
        rows = [[field, *values] for field, values in frame.iterrows()]
        return markdown_table(["field", *self.labels], rows) + "\n"

    def to_rich(self) -> Any:
        """The side-by-side table as a ``rich`` table; the best run per metric row in bold."""
        from rich.table import Table

        table = Table(title=f"{len(self.runs)} runs", show_lines=False)
        table.add_column("field", style="cyan", no_wrap=True)
        for label in self.labels:
            table.add_column(label, justify="right")
        frame = self.side_by_side()
        last = {IDENTITY[-1], *(list(self.differences)[-1:])}
        for field, values in frame.iterrows():
            cells = list(values)
            winner = self._winner(str(field))
            if winner is not None:
                cells[winner] = f"[bold green]{cells[winner]}[/]"
            table.add_row(str(field), *cells, end_section=field in last)
        return table

    def _winner(self, column: str) -> int | None:
        """Index of the run with the best value in a metric column (``None`` if undecided)."""
        metric = column.rsplit(" ", 1)[0]
        goal = metric_goal(metric)
        if column not in _metric_columns(self.metrics) or goal is None or len(self.runs) < 2:
            return None
        values = pd.to_numeric(self.table[column], errors="coerce")
        if values.isna().all() or values.nunique() < 2:
            return None
        return int(values.idxmax() if goal == "max" else values.idxmin())

    def plot(self, path: str | Path, x: str = "epoch") -> Path:
        """:func:`plot_curves` of the compared runs and metrics."""
        return plot_curves(self.runs, self.metrics, path, x=x, labels=self.labels)

    def write(self, out: str | Path, x: str = "epoch") -> dict[str, Path]:
        """Write ``comparison.md``, ``comparison.csv`` and ``curves.png`` (+ ``curves.pdf``) into
        ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "markdown": out / "comparison.md",
            "csv": out / "comparison.csv",
            "plot": out / "curves.png",
        }
        atomic_write_text(paths["markdown"], self.to_markdown())
        write_rows(self.table.to_dict("records"), paths["csv"])
        self.plot(paths["plot"], x=x)
        return paths


def common_metrics(runs: Sequence[Run]) -> list[str]:
    """The metrics every run logged, sorted."""
    if not runs:
        return []
    shared = set(runs[0].metrics).intersection(*(r.metrics for r in runs[1:]))
    return sorted(shared)


def config_differences(
    runs: Sequence[Run], ignore: Iterable[str] = IGNORED_CONFIG
) -> dict[str, list[Any]]:
    """``field -> value per run`` for flattened config fields that differ (missing is ``None``).

    ``ignore`` holds field names, their prefixes (``trainer.logger`` covers its arguments) or globs.
    """
    ignore = tuple(ignore)
    flat = [r.flat_config for r in runs]
    keys = dict.fromkeys(k for f in flat for k in f)
    out = {}
    for key in keys:
        if any(key == p or key.startswith(p + ".") or fnmatch(key, p) for p in ignore):
            continue
        values = [f.get(key) for f in flat]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            out[key] = values
    return out


def compare_runs(
    runs: Sequence[Run],
    metrics: Sequence[str] | None = None,
    ignore: Iterable[str] = IGNORED_CONFIG,
) -> Comparison:
    """Compare runs: names, groups, config differences, final and best metric values.

    Args:
        runs: Runs from :func:`nwa.runs.load_run`.
        metrics: Metrics to compare (default: every metric all runs logged).
        ignore: Config fields left out of the differences (see :func:`config_differences`).

    Raises:
        NwaError: No runs, a run without metrics, a requested metric no run logged, or no
            metric shared by all runs.
    """
    runs = list(runs)
    metrics = _pick_metrics(runs, metrics)
    differences = config_differences(runs, ignore)
    labels = _unique_labels(runs)
    rows = []
    for label, run in zip(labels, runs):
        row = {"run": label, "group": run.group, "logger": run.kind, "id": run.run_id}
        row |= {"path": str(run.path)} | {k: v[len(rows)] for k, v in differences.items()}
        for m in metrics:
            row |= {f"{m} final": run.final(m), f"{m} best": run.best(m)}
        rows.append(row)
    return Comparison(runs, labels, metrics, differences, pd.DataFrame(rows))


def _pick_metrics(runs: list[Run], metrics: Sequence[str] | None) -> list[str]:
    """The requested metrics, or those all runs share; errors name what is missing."""
    if not runs:
        raise NwaError("no runs to compare")
    for run in runs:
        if not run.metrics:
            # wandb-core writes the log asynchronously, even for a moment after wandb.finish()
            still = " yet (still being written?)" if run.finished is False else ""
            raise NwaError(f"{run.path}: no metric logged{still}")
    logged = sorted({m for r in runs for m in r.metrics})
    missing = [m for m in metrics or [] if m not in logged]
    if missing:
        raise NwaError(f"no run logged {missing}; they log {logged}")
    picked = list(metrics or common_metrics(runs))
    if not picked:
        raise NwaError(f"the runs share no metric; pick some with --metrics from {logged}")
    return picked


def compare(
    paths: Iterable[str | Path],
    metrics: Sequence[str] | None = None,
    out: str | Path | None = None,
    x: str = "epoch",
) -> Comparison:
    """Load runs from ``paths`` and compare them; with ``out``, write the files there too."""
    comparison = compare_runs(load_runs(paths), metrics)
    if out is not None:
        comparison.write(out, x=x)
    return comparison


def plot_curves(
    runs: Sequence[Run],
    metrics: Sequence[str],
    path: str | Path,
    x: str = "epoch",
    labels: Sequence[str] | None = None,
) -> Path:
    """One subplot per metric and one colour per run, as PNG (200 dpi) and PDF: a curve over
    ``x`` (epoch or step), or one bar per run for metrics logged once (test metrics); a log y
    axis where a metric spans two decades. Beyond 8 runs, colours repeat with another marker.
    """
    from matplotlib.lines import Line2D

    from nwa.eval.style import colour, figure, marker, save, styled

    labels = list(labels or _unique_labels(runs))

    @styled
    def draw() -> Path:
        ncols = min(3, max(1, len(metrics)))
        nrows = math.ceil(len(metrics) / ncols)
        fig = figure(4.2 * ncols, 3.0 * nrows + 0.8)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, metric in zip(axes, metrics):
            _draw_metric(ax, [r.curve(metric, x) for r in runs], metric, x)
        for ax in axes[len(metrics) :]:
            ax.set_visible(False)
        handles = [
            Line2D([], [], color=colour(i), marker=marker(i), label=lb)
            for i, lb in enumerate(labels)
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)))
        return save(fig, path)

    return draw()


def _draw_metric(ax: Any, curves: list[pd.DataFrame], metric: str, x: str) -> None:
    from matplotlib.ticker import MaxNLocator

    from nwa.eval.style import colour, log_if_wide, marker

    ax.set_title(metric)
    ax.set_ylabel(_metric_label(metric))
    if all(len(c) <= 1 for c in curves):  # a single value per run: bars side by side
        values = [c[metric].iloc[0] if len(c) else math.nan for c in curves]
        for i, v in enumerate(values):
            ax.bar(i, v, color=colour(i), hatch=None if i < 8 else "//")
        log_if_wide(ax, values)
        ax.set_xticks([])
        ax.set_xlabel("run (see legend)")
        return
    shown: list[float] = []
    for i, c in enumerate(curves):
        if len(c):
            xs = c.iloc[:, 0] if c.shape[1] > 1 else range(len(c))
            ax.plot(
                xs, c[metric], marker=marker(i) if len(c) < 2 or i >= 8 else None, color=colour(i)
            )
            shown += c[metric].tolist()
    if log_if_wide(ax, shown):
        ax.set_ylabel(_metric_label(metric) + " (log scale)")
    ax.set_xlabel(x)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _metric_label(metric: str) -> str:
    """The y label of ``metric``: its name and unit (fractions for accuracy-like metrics)."""
    name = metric.rsplit("/", 1)[-1]
    if metric_goal(metric) == "max" and not name.startswith(("r2", "kendall")):
        return f"{metric} (fraction)"
    return f"{metric} (unitless)" if metric_goal(metric) else metric


def _metric_columns(metrics: Sequence[str]) -> list[str]:
    return [f"{m} {kind}" for m in metrics for kind in ("final", "best")]


def _unique_labels(runs: Sequence[Run]) -> list[str]:
    """Run names; where names repeat, with the run id; then with a counter if still equal."""
    names = [r.name for r in runs]
    labels = [f"{r.name} [{r.run_id}]" if names.count(r.name) > 1 else r.name for r in runs]
    return [f"{lb} #{i + 1}" if labels.count(lb) > 1 else lb for i, lb in enumerate(labels)]


def _fmt(value: Any) -> str:
    """A short display string: 4 significant digits, ``-`` for missing, long values cut."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(_cell(value))
    return text if len(text) <= _WIDTH else text[: _WIDTH - 3] + "..."


def _cell(value: Any) -> Any:
    """Lists and dicts as compact JSON (for CSV and display); anything else unchanged."""
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nwa.compare",
        description="Compare training runs: a side-by-side table and metric curves.",
    )
    p.add_argument("runs", nargs="+", help="W&B run folders, CSV log folders or checkpoint folders")
    p.add_argument("--metrics", nargs="+", default=None, help="metrics (default: all shared)")
    p.add_argument("--out", default="compare", help="folder for the .md, .csv and .png files")
    p.add_argument("--x", choices=AXES, default="epoch", help="x axis of the curves")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for a bad run or metric)."""
    from rich.console import Console

    args = _parser().parse_args(argv)
    try:
        comparison = compare_runs(load_runs(args.runs), args.metrics)
        Console().print(comparison.to_rich())
        written = comparison.write(args.out, x=args.x)
    except NwaError as e:
        print(f"nwa: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"nwa: cannot write to {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
