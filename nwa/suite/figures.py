"""Figures of the benchmark report (PNG at 200 dpi and PDF, in :mod:`nwa.eval.style`).

Each function takes what the runs left on disk (outputs of :mod:`nwa.suite.execute`, CSV
histories) and returns the written PNG's path, or ``None`` when there is nothing to draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nwa.eval.plots import project_2d
from nwa.eval.style import (
    SEQUENTIAL,
    colour,
    figure,
    group_legend,
    log_if_wide,
    marker,
    save,
    styled,
)

Outputs = list[dict[str, np.ndarray]]  # one dict per seed


AXIS = {"pca": ("PC 1 (a.u.)", "PC 2 (a.u.)"), "tsne": ("t-SNE 1 (a.u.)", "t-SNE 2 (a.u.)")}


@styled
def embeddings(outputs: Mapping[str, Outputs], path: Path, colour: str, title: str) -> Path | None:
    """PCA and t-SNE of each method's representations (first seed), one row per method.

    ``colour``: ``tree`` (one colour per tree) or a property, the first target column.
    Test-split models are hollow markers, the others filled.
    """
    methods = [m for m, runs in outputs.items() if runs and "z" in runs[0]]
    if not methods:
        return None
    fig = figure(8.5, 3.2 * len(methods) + 0.6)
    fig.suptitle(title)
    axes = fig.subplots(len(methods), 2, squeeze=False)
    for row, m in zip(axes, methods):
        o = outputs[m][0]
        z = o["z"].reshape(len(o["z"]), -1)
        test = o["split"] == "test"
        for ax, how in zip(row, ("pca", "tsne")):
            xy = project_2d(z, how)
            if colour == "tree":
                _scatter_groups(ax, xy, o["tree"], test)
            else:
                sc = None
                for mask, mk in ((~test, "o"), (test, "x")):
                    if mask.any():
                        sc = ax.scatter(
                            *xy[mask].T, s=14, marker=mk, c=o["target"][mask, 0], cmap=SEQUENTIAL
                        )
                if sc is not None and how == "tsne":
                    fig.colorbar(sc, ax=ax, label=colour)
            ax.set_title(f"{m}: {'PCA' if how == 'pca' else 't-SNE'}")
            ax.set(xlabel=AXIS[how][0], ylabel=AXIS[how][1], xticks=[], yticks=[])
        if colour == "tree":
            group_legend(row[-1], len(set(o["tree"])), title="tree")
    return save(fig, path)


def _scatter_groups(ax: Any, xy: np.ndarray, groups: np.ndarray, test: np.ndarray) -> None:
    """One colour (and, beyond 8 groups, marker) per group, labelled; test models hollow."""
    for i, name in enumerate(sorted(set(groups))):
        idx = groups == name
        ax.scatter(*xy[idx & ~test].T, s=14, color=colour(i), marker=marker(i), label=name)
        if (idx & test).any():
            ax.scatter(
                *xy[idx & test].T, s=22, facecolors="none", edgecolors=colour(i), marker=marker(i)
            )


def _mean_curve(histories: Sequence[pd.DataFrame], metric: str) -> pd.DataFrame | None:
    parts = []
    for h in histories:
        if metric in h and "epoch" in h:
            c = h[["epoch", metric]].dropna().groupby("epoch")[metric].last()
            parts.append(c)
    if not parts:
        return None
    table = pd.concat(parts, axis=1)
    return pd.DataFrame({"mean": table.mean(axis=1), "std": table.std(axis=1).fillna(0.0)})


@styled
def curves(
    histories: Mapping[str, Sequence[pd.DataFrame]], metrics: Sequence[str], path: Path
) -> Path | None:
    """One panel per method, one line per metric over epochs: mean over seeds, ±1 std band;
    a log y axis where the values span two decades (a loss falling from 50,000)."""
    drawn = {label: {m: _mean_curve(h, m) for m in metrics} for label, h in histories.items() if h}
    drawn = {k: v for k, v in drawn.items() if any(c is not None for c in v.values())}
    if not drawn:
        return None
    ncols = min(4, len(drawn))
    nrows = math.ceil(len(drawn) / ncols)
    fig = figure(3.6 * ncols, 2.6 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (label, per_metric) in zip(axes, drawn.items()):
        shown = []
        for i, (metric, c) in enumerate(per_metric.items()):
            if c is None or c.empty:
                continue
            point = "o" if len(c) <= 3 else None  # a one-epoch method is a single point
            ax.plot(c.index, c["mean"], color=colour(i), marker=point, label=metric)
            ax.fill_between(
                c.index, c["mean"] - c["std"], c["mean"] + c["std"], color=colour(i), alpha=0.2
            )
            shown += c["mean"].tolist()
        log = log_if_wide(ax, shown)
        ax.set_title(label)
        ax.set(xlabel="epoch", ylabel="loss (log scale)" if log else "loss")
        ax.legend()
    for ax in axes[len(drawn) :]:
        ax.set_visible(False)
    return save(fig, path)


def _test_pairs(runs: Outputs, j: int) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted values of target column ``j`` over the test models of every seed."""
    t = [o["target"][o["split"] == "test", j] for o in runs]
    p = [o["pred"][o["split"] == "test", j] for o in runs]
    return np.concatenate(t), np.concatenate(p)


@styled
def predicted_vs_true(
    outputs: Mapping[str, Outputs], properties: Sequence[str], path: Path
) -> Path | None:
    """Predicted against true value per property and method (test models of all seeds)."""
    methods = [m for m, r in outputs.items() if r]
    if not methods:
        return None
    fig = figure(3.2 * len(properties), 3.0 * len(methods))
    axes = fig.subplots(len(methods), len(properties), squeeze=False)
    for i, (row, m) in enumerate(zip(axes, methods)):
        for j, (ax, prop) in enumerate(zip(row, properties)):
            t, p = _test_pairs(outputs[m], j)
            ax.scatter(t, p, s=10, alpha=0.6, color=colour(i))
            lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
            ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="y = x")
            ax.set_title(f"{m}: {prop}")
            ax.set(xlabel=f"true {prop} (fraction)", ylabel=f"predicted {prop} (fraction)")
    return save(fig, path)


@styled
def error_histograms(
    outputs: Mapping[str, Outputs], properties: Sequence[str], path: Path
) -> Path | None:
    """Histogram of prediction errors (predicted - true) per property, methods overlaid."""
    methods = [m for m, r in outputs.items() if r]
    if not methods:
        return None
    fig = figure(3.4 * len(properties), 3.0)
    axes = fig.subplots(1, len(properties), squeeze=False)[0]
    for j, (ax, prop) in enumerate(zip(axes, properties)):
        errors = {m: np.subtract(*_test_pairs(outputs[m], j)[::-1]) for m in methods}
        edges = np.histogram_bin_edges(np.concatenate(list(errors.values())), bins=20)
        for i, (m, e) in enumerate(errors.items()):
            ax.hist(e, bins=edges, alpha=0.5, color=colour(i), label=m)
        ax.set_title(f"error: {prop}")
        ax.set(xlabel=f"predicted - true {prop} (fraction)", ylabel="test models")
        ax.legend()
    return save(fig, path)


@styled
def metric_bars(
    values: Mapping[str, Sequence[Sequence[float]]],
    groups: Sequence[str],
    title: str,
    path: Path,
    labels: Mapping[str, str] | None = None,
    ylabel: str | None = None,
    xlabel: str = "",
) -> Path | None:
    """Grouped bars: for each group, one bar per method (mean over seeds, std as error bar).

    ``ylabel`` (default: the title up to its first parenthesis) names the metric and its unit.
    """
    if not values:
        return None
    fig = figure(max(4.0, 1.1 * len(groups) * len(values) / 2 + 2), 3.4)
    ax = fig.subplots()
    width = 0.8 / len(values)
    x = np.arange(len(groups))
    for i, (m, per_group) in enumerate(values.items()):
        means = [np.nanmean(v) if len(v) else np.nan for v in per_group]
        stds = [np.nanstd(v, ddof=1) if len(v) > 1 else 0.0 for v in per_group]
        ax.bar(
            x + i * width,
            means,
            width,
            yerr=stds,
            capsize=3,
            color=colour(i),
            label=(labels or {}).get(m, m),
        )
    ax.set_xticks(x + width * (len(values) - 1) / 2, groups, rotation=15)
    ax.set_title(title)
    ax.set(ylabel=ylabel or title.split(" (")[0], xlabel=xlabel or "group")
    ax.legend()
    ax.grid(axis="x", visible=False)
    return save(fig, path)


@styled
def radar(
    values: Mapping[str, Sequence[float]], axes_names: Sequence[str], title: str, path: Path
) -> Path | None:
    """A radar chart: one axis per name, one polygon per method.

    The radius runs from ``min(0, lowest value)`` (at most down to -1; lower values are drawn at
    -1, and the title says so) to 1, so negative R² stays visible instead of vanishing at 0.
    """
    if not values:
        return None
    arrays = {m: np.nan_to_num(np.asarray(v, dtype=float), nan=-1.0) for m, v in values.items()}
    lowest = min(float(a.min()) for a in arrays.values())
    floor = max(-1.0, min(0.0, np.floor(lowest * 4) / 4))
    if lowest < -1.0:
        title += "\n(values below -1 drawn at -1)"
    fig = figure(5.6, 4.6)
    ax = fig.add_subplot(projection="polar")
    angles = np.linspace(0, 2 * np.pi, len(axes_names), endpoint=False).tolist()
    for i, (m, a) in enumerate(arrays.items()):
        r = np.clip(a, floor, 1.0).tolist()
        ax.plot(angles + angles[:1], r + r[:1], color=colour(i), marker=marker(i), label=m)
        ax.fill(angles + angles[:1], r + r[:1], color=colour(i), alpha=0.15)
    ax.set_xticks(angles, axes_names)
    ax.tick_params(axis="x", pad=12)  # the names sit outside the outer ring, clear of it
    ax.set_ylim(floor, 1)
    ax.set_rlabel_position(90 / max(len(axes_names), 1))  # radius labels between two axes
    ax.set_title(title, pad=18)
    ax.legend(loc="upper left", bbox_to_anchor=(1.08, 1.0))
    return save(fig, path)
