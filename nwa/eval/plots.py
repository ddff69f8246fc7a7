"""Figures of representations: a 2-D embedding map and a retrieval-examples grid (PNG, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: runs on cluster nodes without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from nwa.eval.knn import as_numpy  # noqa: E402

_LEGEND_MAX = 20  # above this many concepts a legend hides the plot
_ONE_THREAD_MAX = 2000  # t-SNE of at most this many points runs on one thread


def project_2d(z: Any, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Two-dimensional coordinates of representations by PCA or t-SNE.

    t-SNE's perplexity is lowered for small sets (it must stay below the number of points).

    Shapes:
        - z: [N, D] with N >= 3
        - returns: [N, 2]
    """
    z = as_numpy(z)
    if len(z) < 3:
        raise ValueError(f"a 2-D map needs at least 3 points, got {len(z)}")
    if z.shape[1] < 2:
        z = np.concatenate([z, np.zeros((len(z), 2 - z.shape[1]))], axis=1)
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(z)
    if method == "tsne":
        perplexity = float(min(30.0, max(1.0, (len(z) - 1) / 3)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        # OpenMP threads spin-wait on busy cores: 20 s instead of 0.1 s for a few hundred points
        with threadpool_limits(1 if len(z) <= _ONE_THREAD_MAX else None):
            return tsne.fit_transform(z)
    raise ValueError(f"method {method!r} is not 'pca' or 'tsne'")


def embedding_plot(
    z: Any,
    concepts: Sequence[str],
    held_out: Sequence[bool],
    path: str | Path,
    methods: Sequence[str] = ("pca", "tsne"),
    title: str | None = None,
    seed: int = 0,
) -> Path:
    """Scatter of representations in 2-D, one colour per concept; held-out concepts as crosses.

    Args:
        z: Representations.
        concepts: Each point's concept name.
        held_out: Whether each point's concept was held out of training.
        path: The PNG to write (folders are created).
        methods: One panel per method (``pca``, ``tsne``).
        title: Figure title.
        seed: Seed of the projections.

    Shapes:
        - z: [N, D]; concepts: [N]; held_out: [N]
    """
    held_out = np.asarray(held_out, dtype=bool)
    names = sorted(set(concepts))
    cmap = plt.get_cmap("tab20")
    colour = {c: cmap(i % 20) for i, c in enumerate(names)}
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 5), squeeze=False)
    for ax, method in zip(axes[0], methods):
        xy = project_2d(z, method, seed)
        for c in names:
            idx = np.array([k == c for k in concepts])
            out = bool(held_out[idx].any())
            label = f"{c} (held out)" if out else c
            ax.scatter(*xy[idx].T, color=colour[c], marker="x" if out else "o", s=28, label=label)
        ax.set_title(method.upper() if method == "pca" else "t-SNE")
        ax.set_xticks([])
        ax.set_yticks([])
    if len(names) <= _LEGEND_MAX:
        axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def retrieval_figure(
    examples: Sequence[dict[str, Any]], path: str | Path, title: str | None = None
) -> Path:
    """A grid of example queries: the query's concept, then its nearest models' concepts,
    green where the concept matches and red where it does not.

    Args:
        examples: The output of :func:`nwa.eval.retrieval.nearest_examples`.
        path: The PNG to write (folders are created).
        title: Figure title.
    """
    if not examples:
        raise ValueError("no examples to draw")
    k = max(len(e["neighbours"]) for e in examples)
    fig, ax = plt.subplots(figsize=(1.8 * (k + 1), 0.5 * len(examples) + 0.8))
    for r, example in enumerate(examples):
        row = len(examples) - 1 - r  # first query on top
        _cell(ax, 0, row, example["concept"], "#dddddd")
        for c, n in enumerate(example["neighbours"], start=1):
            _cell(ax, c, row, f"{n['concept']}\n{n['distance']:.2f}", _match(n["match"]))
    ax.set_xlim(0, k + 1)
    ax.set_ylim(0, len(examples))
    ax.set_xticks(np.arange(k + 1) + 0.5, ["query"] + [f"#{i}" for i in range(1, k + 1)])
    ax.set_yticks([])
    ax.xaxis.tick_top()
    if title:
        ax.set_title(title, pad=24)
    return _save(fig, path)


def _match(match: bool) -> str:
    return "#b7e4b0" if match else "#f4b6b0"


def _cell(ax: Any, x: int, y: int, text: str, colour: str) -> None:
    ax.add_patch(plt.Rectangle((x, y), 1, 1, facecolor=colour, edgecolor="white"))
    ax.text(x + 0.5, y + 0.5, text, ha="center", va="center", fontsize=7)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
