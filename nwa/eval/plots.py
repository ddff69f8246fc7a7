"""Figures of representations: a 2-D embedding map and a retrieval-examples grid (PNG at 200 dpi
and PDF, headless, in :mod:`nwa.eval.style`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Rectangle
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from nwa.eval.knn import as_numpy
from nwa.eval.style import colour, figure, group_legend, marker, save, styled

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


@styled
def embedding_plot(
    z: Any,
    concepts: Sequence[str],
    held_out: Sequence[bool],
    path: str | Path,
    methods: Sequence[str] = ("pca", "tsne"),
    title: str | None = None,
    seed: int = 0,
) -> Path:
    """Scatter of representations in 2-D, one colour per concept (beyond 8 concepts, colour and
    marker together), with a legend of every concept; held-out concepts hollow and marked
    "(held out)" in the legend.

    Args:
        z: Representations.
        concepts: Each point's concept name.
        held_out: Whether each point's concept was held out of training.
        path: The PNG to write (folders are created; a PDF is written beside it).
        methods: One panel per method (``pca``, ``tsne``).
        title: Figure title.
        seed: Seed of the projections.

    Shapes:
        - z: [N, D]; concepts: [N]; held_out: [N]
    """
    held_out = np.asarray(held_out, dtype=bool)
    concepts = np.asarray(concepts, dtype=str)
    names = sorted(set(concepts))
    fig = figure(4.2 * len(methods) + 1.6 * (1 + len(names) // 12), 4.2)
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for ax, method in zip(axes, methods):
        xy = project_2d(z, method, seed)
        for i, c in enumerate(names):
            idx = concepts == c
            out = bool(held_out[idx].any())
            face = "none" if out else colour(i)
            ax.scatter(
                *xy[idx].T,
                s=28,
                marker=marker(i),
                facecolors=face,
                edgecolors=colour(i),
                label=f"{c} (held out)" if out else c,
            )
        name = "PC" if method == "pca" else "t-SNE"
        ax.set_title("PCA" if method == "pca" else "t-SNE")
        ax.set(xlabel=f"{name} 1 (a.u.)", ylabel=f"{name} 2 (a.u.)", xticks=[], yticks=[])
    group_legend(
        axes[-1], len(names), title="concept", loc="center left", bbox_to_anchor=(1.0, 0.5)
    )
    if title:
        fig.suptitle(title)
    return save(fig, path)


@styled
def retrieval_figure(
    examples: Sequence[dict[str, Any]], path: str | Path, title: str | None = None
) -> Path:
    """A grid of example queries: the query's concept, then its nearest models' concepts and
    distances, blue where the concept matches and orange where it does not.

    Args:
        examples: The output of :func:`nwa.eval.retrieval.nearest_examples`.
        path: The PNG to write (folders are created; a PDF is written beside it).
        title: Figure title.
    """
    if not examples:
        raise ValueError("no examples to draw")
    k = max(len(e["neighbours"]) for e in examples)
    fig = figure(1.8 * (k + 1), 0.5 * len(examples) + 1.4)
    ax = fig.subplots()
    for r, example in enumerate(examples):
        row = len(examples) - 1 - r  # first query on top
        _cell(ax, 0, row, example["concept"], "#dddddd")
        for c, n in enumerate(example["neighbours"], start=1):
            _cell(ax, c, row, f"{n['concept']}\n{n['distance']:.2f}", _match(n["match"]))
    ax.set_xlim(0, k + 1)
    ax.set_ylim(0, len(examples))
    ax.set_xticks(np.arange(k + 1) + 0.5, ["query"] + [f"#{i}" for i in range(1, k + 1)])
    ax.set_yticks([])
    ax.grid(False)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set(xlabel="neighbour rank (cell: concept, distance to the query)", ylabel="query model")
    ax.legend(
        handles=[
            Rectangle((0, 0), 1, 1, color=_match(True), label="same concept"),
            Rectangle((0, 0), 1, 1, color=_match(False), label="other concept"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.02),
        ncols=2,
    )
    if title:
        ax.set_title(title, pad=24)
    return save(fig, path)


def _match(match: bool) -> str:
    # blue / orange of Okabe-Ito, lightened: told apart without red-green vision
    return "#a6cbe3" if match else "#f5cf8a"


def _cell(ax: Any, x: int, y: int, text: str, fill: str) -> None:
    ax.add_patch(Rectangle((x, y), 1, 1, facecolor=fill, edgecolor="white"))
    ax.text(x + 0.5, y + 0.5, text, ha="center", va="center", fontsize=7)
