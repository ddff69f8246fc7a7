"""Figures of the benchmark report (PNG, drawn headless on Agg canvases).

Each function takes what the runs left on disk (outputs of :mod:`nwa.suite.execute`, CSV
histories) and returns the written path, or ``None`` when there is nothing to draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nwa.eval.plots import project_2d

Outputs = list[dict[str, np.ndarray]]  # one dict per seed


def _figure(w: float, h: float, **kw: Any) -> Figure:
    fig = Figure(figsize=(w, h), layout="constrained", **kw)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def embeddings(outputs: Mapping[str, Outputs], path: Path, colour: str, title: str) -> Path | None:
    """PCA and t-SNE of each method's representations (first seed), one row per method.

    ``colour``: ``tree`` (one colour per tree) or a property, the first target column.
    Test-split models are crosses, the others dots.
    """
    methods = [m for m, runs in outputs.items() if runs and "z" in runs[0]]
    if not methods:
        return None
    fig = _figure(8.5, 3.2 * len(methods) + 0.6)
    fig.suptitle(title, fontsize=10)
    axes = fig.subplots(len(methods), 2, squeeze=False)
    for row, m in zip(axes, methods):
        o = outputs[m][0]
        z = o["z"].reshape(len(o["z"]), -1)
        test = o["split"] == "test"
        if colour == "tree":
            names = sorted(set(o["tree"]))
            c = np.array([names.index(t) for t in o["tree"]])
            kw: dict[str, Any] = {"c": c, "cmap": "tab10", "vmin": 0, "vmax": 9}
        else:
            kw = {"c": o["target"][:, 0], "cmap": "viridis"}
        for ax, how in zip(row, ("pca", "tsne")):
            xy = project_2d(z, how)
            sc = None
            for mask, marker in ((~test, "o"), (test, "x")):
                if mask.any():
                    sc = ax.scatter(*xy[mask].T, s=14, marker=marker, **{**kw, "c": kw["c"][mask]})
            ax.set_title(f"{m}: {'PCA' if how == 'pca' else 't-SNE'}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        if colour != "tree" and sc is not None:
            fig.colorbar(sc, ax=row[-1], label=colour)
    return _save(fig, path)


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


def curves(
    histories: Mapping[str, Sequence[pd.DataFrame]], metrics: Sequence[str], path: Path
) -> Path | None:
    """One panel per method, one line per metric over epochs: mean over seeds, ±1 std band."""
    drawn = {label: {m: _mean_curve(h, m) for m in metrics} for label, h in histories.items() if h}
    drawn = {k: v for k, v in drawn.items() if any(c is not None for c in v.values())}
    if not drawn:
        return None
    ncols = min(4, len(drawn))
    nrows = math.ceil(len(drawn) / ncols)
    fig = _figure(3.6 * ncols, 2.6 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (label, per_metric) in zip(axes, drawn.items()):
        for i, (metric, c) in enumerate(per_metric.items()):
            if c is None or c.empty:
                continue
            marker = "o" if len(c) <= 3 else None  # a one-epoch method is a single point
            ax.plot(c.index, c["mean"], color=f"C{i}", marker=marker, label=metric)
            ax.fill_between(
                c.index, c["mean"] - c["std"], c["mean"] + c["std"], color=f"C{i}", alpha=0.2
            )
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(drawn) :]:
        ax.set_visible(False)
    return _save(fig, path)


def _test_pairs(runs: Outputs, j: int) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted values of target column ``j`` over the test models of every seed."""
    t = [o["target"][o["split"] == "test", j] for o in runs]
    p = [o["pred"][o["split"] == "test", j] for o in runs]
    return np.concatenate(t), np.concatenate(p)


def predicted_vs_true(
    outputs: Mapping[str, Outputs], properties: Sequence[str], path: Path
) -> Path | None:
    """Predicted against true value per property and method (test models of all seeds)."""
    methods = [m for m, r in outputs.items() if r]
    if not methods:
        return None
    fig = _figure(3.2 * len(properties), 3.0 * len(methods))
    axes = fig.subplots(len(methods), len(properties), squeeze=False)
    for row, m in zip(axes, methods):
        for j, (ax, prop) in enumerate(zip(row, properties)):
            t, p = _test_pairs(outputs[m], j)
            ax.scatter(t, p, s=10, alpha=0.6)
            lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
            ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
            ax.set_title(f"{m}: {prop}", fontsize=9)
            ax.set_xlabel("true", fontsize=8)
            ax.set_ylabel("predicted", fontsize=8)
    return _save(fig, path)


def error_histograms(
    outputs: Mapping[str, Outputs], properties: Sequence[str], path: Path
) -> Path | None:
    """Histogram of prediction errors (predicted - true) per property, methods overlaid."""
    methods = [m for m, r in outputs.items() if r]
    if not methods:
        return None
    fig = _figure(3.4 * len(properties), 3.0)
    axes = fig.subplots(1, len(properties), squeeze=False)[0]
    for j, (ax, prop) in enumerate(zip(axes, properties)):
        errors = {m: np.subtract(*_test_pairs(outputs[m], j)[::-1]) for m in methods}
        edges = np.histogram_bin_edges(np.concatenate(list(errors.values())), bins=20)
        for i, (m, e) in enumerate(errors.items()):
            ax.hist(e, bins=edges, alpha=0.5, color=f"C{i}", label=m)
        ax.set_title(f"error: {prop}", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


def metric_bars(
    values: Mapping[str, Sequence[Sequence[float]]],
    groups: Sequence[str],
    title: str,
    path: Path,
    labels: Mapping[str, str] | None = None,
) -> Path | None:
    """Grouped bars: for each group, one bar per method (mean over seeds, std as error bar)."""
    if not values:
        return None
    fig = _figure(max(4.0, 1.1 * len(groups) * len(values) / 2 + 2), 3.4)
    ax = fig.subplots()
    width = 0.8 / len(values)
    x = np.arange(len(groups))
    for i, (m, per_group) in enumerate(values.items()):
        means = [np.nanmean(v) if len(v) else np.nan for v in per_group]
        stds = [np.nanstd(v, ddof=1) if len(v) > 1 else 0.0 for v in per_group]
        ax.bar(x + i * width, means, width, yerr=stds, capsize=3, label=(labels or {}).get(m, m))
    ax.set_xticks(x + width * (len(values) - 1) / 2, groups, fontsize=8, rotation=15)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


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
    fig = _figure(4.8, 4.4)
    ax = fig.add_subplot(projection="polar")
    angles = np.linspace(0, 2 * np.pi, len(axes_names), endpoint=False).tolist()
    for i, (m, a) in enumerate(arrays.items()):
        r = np.clip(a, floor, 1.0).tolist()
        ax.plot(angles + angles[:1], r + r[:1], color=f"C{i}", marker="o", label=m)
        ax.fill(angles + angles[:1], r + r[:1], color=f"C{i}", alpha=0.15)
    ax.set_xticks(angles, axes_names, fontsize=8)
    ax.set_ylim(floor, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.25, -0.1))
    return _save(fig, path)
