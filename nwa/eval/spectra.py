"""Figures of layer spectra: the log-log eigenvalue density with its fitted power-law tail."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nwa.atomic import atomic_path  # noqa: E402
from nwa.weights.powerlaw import EVALS_THRESH  # noqa: E402
from nwa.weights.spectral import Diagnosis, LayerResult  # noqa: E402


def spectrum_figure(result: LayerResult, title: str) -> plt.Figure:
    """Histogram of ``log10`` eigenvalues (log-log density) with ``x_min`` and the fitted
    density ``(alpha - 1) / x_min * (lambda / x_min)^-alpha`` over the tail."""
    ev = np.asarray(result.evals, dtype=np.float64)
    ev = ev[ev > EVALS_THRESH]
    m = result.metrics
    fig, ax = plt.subplots(figsize=(5, 3.6))
    bins = np.logspace(np.log10(ev.min()), np.log10(ev.max()), 60)
    ax.hist(ev, bins=bins, density=True, color="tab:blue", alpha=0.7, label="ESD")
    if math.isfinite(m["alpha"]):
        x = np.logspace(np.log10(m["xmin"]), np.log10(ev.max()), 50)
        tail = (ev >= m["xmin"]).mean()
        pdf = tail * (m["alpha"] - 1) / m["xmin"] * (x / m["xmin"]) ** (-m["alpha"])
        ax.plot(x, pdf, "r--", label=f"power law, alpha={m['alpha']:.2f}")
        ax.axvline(m["xmin"], color="r", lw=0.8, label="x_min")
    ax.set(xscale="log", yscale="log", xlabel="eigenvalue of W^T W", ylabel="density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def spectrum_plots(diag: Diagnosis, folder: Path, prefix: str = "") -> list[Path]:
    """One PNG per analyzed layer (with kept eigenvalues) in ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in diag.layers:
        if r.evals is None or not (r.evals > EVALS_THRESH).any():
            continue
        name = re.sub(
            r"[^A-Za-z0-9_.-]+", "_", f"{prefix}-{r.plan.name}" if prefix else r.plan.name
        )
        path = folder / f"{name}.png"
        fig = spectrum_figure(r, f"{prefix} {r.plan.name}".strip())
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
