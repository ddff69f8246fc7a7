"""Retrieval on representations: precision@k and example queries (each model as a query, the
other models as the gallery)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nwa.eval.knn import as_numpy, distances


def neighbours(z: Any, metric: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """Every other point, nearest first, for each point (the point itself is never its own
    neighbour).

    Shapes:
        - z: [N, D]
        - returns: indices [N, N - 1] and distances [N, N - 1]
    """
    d = distances(z, z, metric)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :-1]
    return order, np.take_along_axis(d, order, axis=1)


def retrieval_precision_at_k(
    z: Any, y: Any, k: int, metric: str = "euclidean", queries: Sequence[int] | None = None
) -> float:
    """Mean over queries of the fraction of the ``k`` nearest other models sharing the query's label.

    Each query retrieves among all the other models of ``z`` (the gallery); ``k`` is capped at
    ``N - 1``.

    Args:
        z: Representations of every model (the gallery).
        y: Integer labels (concepts).
        k: Number of retrieved models per query.
        metric: ``euclidean`` or ``cosine``.
        queries: Indices of the query models; default every model.

    Shapes:
        - z: [N, D]; y: [N]
    """
    y = as_numpy(y, np.int64)
    if len(y) < 2:
        raise ValueError("retrieval needs at least two models")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order, _ = neighbours(z, metric)
    q = np.arange(len(y)) if queries is None else np.asarray(queries, dtype=np.int64)
    if len(q) == 0:
        raise ValueError("no query models")
    hits = y[order[q, : min(k, len(y) - 1)]] == y[q, None]
    return float(hits.mean())


def nearest_examples(
    z: Any,
    y: Any,
    names: Sequence[str],
    queries: Sequence[int],
    k: int = 5,
    metric: str = "euclidean",
    ids: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The ``k`` nearest models of a few query models, with their concepts (for reports/figures).

    Args:
        z: Representations.
        y: Integer labels; ``names[y[i]]`` is model i's concept.
        names: Label names.
        queries: Indices of the query models.
        k: Neighbours per query.
        metric: ``euclidean`` or ``cosine``.
        ids: Model ids, reported beside the indices when given.

    Returns:
        One dict per query: ``index``, ``concept`` (and ``id``), and ``neighbours``, a list of
        dicts with ``index``, ``concept``, ``distance``, ``match`` (same concept), and ``id``.

    Shapes:
        - z: [N, D]; y: [N]
    """
    y = as_numpy(y, np.int64)
    order, dist = neighbours(z, metric)
    out = []
    for q in queries:
        found = []
        for j, d in zip(order[q, :k], dist[q, :k]):
            item = {"index": int(j), "concept": names[y[j]], "distance": float(d)}
            item |= {"match": bool(y[j] == y[q])} | ({"id": ids[j]} if ids is not None else {})
            found.append(item)
        entry = {"index": int(q), "concept": names[y[q]], "neighbours": found}
        out.append(entry | ({"id": ids[q]} if ids is not None else {}))
    return out
