"""Figures of the "Neural Weight Archeology across architectures" section (the seed's figures):
classification and regression comparison bars, per-property R^2, a 2-D map of the weight
patterns coloured by architecture family, and the networks' training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nwa.eval.style import figure, save, styled
from nwa.suite.archeology_labels import (
    CLASS_LABELS,
    CLASS_METRICS,
    METHODS,
    NETWORKS,
    VALUE_LABELS,
)
from nwa.suite.execute import OUTPUTS, log_dir
from nwa.suite.figures import curves


def _stats(df: pd.DataFrame, method: str, column: str) -> tuple[float, float]:
    sel = df[(df["method"] == method) & (df["status"] == "done")]
    v = sel[column].dropna().to_numpy(float) if column in sel else np.array([])
    if len(v) == 0:
        return float("nan"), 0.0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _bars(ax, df: pd.DataFrame, methods: Sequence[str], columns: Sequence[str], ticks) -> None:
    """Grouped bars: one group per column, one bar per method, ±1 std over seeds."""
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(columns))
    for i, m in enumerate(methods):
        stats = [_stats(df, m, c) for c in columns]
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            [s[0] for s in stats],
            width,
            yerr=[s[1] for s in stats],
            label=m,
            color=f"C{i}",
            capsize=2,
        )
    ax.set_xticks(x, ticks, fontsize=8)
    ax.grid(axis="y", alpha=0.3)


@styled
def classification_bars(df: pd.DataFrame, methods: Sequence[str], path: Path) -> Path:
    fig = figure(4.2 * len(CLASS_LABELS), 3.2)
    for ax, label in zip(fig.subplots(1, len(CLASS_LABELS), squeeze=False)[0], CLASS_LABELS):
        _bars(ax, df, methods, [f"test/{label}_{k}" for k in CLASS_METRICS], CLASS_METRICS)
        ax.set_title(f"{label}", fontsize=9)
        ax.set_ylim(0, 1.05)
    fig.axes[0].legend(fontsize=7)
    return save(fig, path)


@styled
def regression_bars(df: pd.DataFrame, methods: Sequence[str], path: Path) -> Path:
    """MSE and MAE per property (their own scales: one panel each)."""
    fig = figure(3.2 * len(VALUE_LABELS), 3.0)
    axes = fig.subplots(1, len(VALUE_LABELS), squeeze=False)[0]
    for ax, prop in zip(axes, VALUE_LABELS):
        _bars(ax, df, methods, [f"test/{prop}_mse", f"test/{prop}_mae"], ["MSE", "MAE"])
        ax.set_title(prop, fontsize=9)
    axes[0].legend(fontsize=7)
    return save(fig, path)


@styled
def r2_bars(df: pd.DataFrame, methods: Sequence[str], path: Path) -> Path:
    fig = figure(5.5, 3.2)
    ax = fig.subplots()
    _bars(ax, df, methods, [f"test/{p}_r2" for p in VALUE_LABELS], VALUE_LABELS)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("test R^2")
    ax.set_title("per-property R^2", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, path)


def _family_names(out: Path, df: pd.DataFrame) -> list[str]:
    """The family class names in target order, as a baseline run recorded them."""
    from nwa.suite.execute import load_result

    for key in df[df["status"] == "done"]["key"]:
        res = load_result(out / "runs" / key) or {}
        if "family" in res.get("classes", {}):
            return list(res["classes"]["family"])
    return []


@styled
def projection(out: Path, df: pd.DataFrame, path: Path) -> Path | None:
    """t-SNE of StatNN's weight statistics and of NWPA's learned representation (first seed),
    every model coloured by its architecture family."""
    from nwa.eval.plots import project_2d

    panels = []
    for method in ("StatNN-GBT", "NWPA"):
        sel = df[(df["method"] == method) & (df["status"] == "done")]
        if sel.empty or not (out / "runs" / sel["key"].iloc[0] / OUTPUTS).is_file():
            continue
        with np.load(out / "runs" / sel["key"].iloc[0] / OUTPUTS, allow_pickle=False) as z:
            if "z" in z.files and len(z["z"]) >= 3:
                panels.append((method, z["z"].reshape(len(z["z"]), -1), z["target"][:, 0]))
    if not panels:
        return None
    names = _family_names(out, df)
    fig = figure(4.2 * len(panels), 3.8)
    for ax, (method, z, family) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        std = z.std(0)
        xy = project_2d((z - z.mean(0)) / np.where(std > 0, std, 1), "tsne")
        for k in sorted({int(f) for f in family if f >= 0}):
            name = names[k] if k < len(names) else f"family {k}"
            ax.scatter(*xy[family == k].T, s=10, color=f"C{k}", label=name)
        ax.set_title(f"{method}: t-SNE", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.axes[0].legend(fontsize=7)
    return save(fig, path)


@styled
def training_curves(out: Path, df: pd.DataFrame, path: Path) -> Path | None:
    from nwa.runs import RunError, load_run

    histories: dict[str, list[pd.DataFrame]] = {}
    for method in NETWORKS:
        for key in df[(df["method"] == method) & (df["status"] == "done")]["key"]:
            try:
                histories.setdefault(method, []).append(
                    load_run(log_dir(out / "runs" / key)).history
                )
            except RunError:
                continue
    return curves(histories, ["train/loss", "val/loss"], path)


def draw_all(out: Path, df: pd.DataFrame) -> list[Path]:
    """Every figure of the section that has data, under ``out/figures``."""
    figs = out / "figures"
    methods = [m for m in METHODS if m in set(df[df["status"] == "done"]["method"])]
    if not methods:
        return []
    drawn = [
        classification_bars(df, methods, figs / "archeology_classification.png"),
        regression_bars(df, methods, figs / "archeology_regression.png"),
        r2_bars(df, methods, figs / "archeology_r2.png"),
        projection(out, df, figs / "archeology_projection.png"),
        training_curves(out, df, figs / "archeology_curves.png"),
    ]
    return [p for p in drawn if p is not None]
