"""k-nearest-neighbour classification on representations (or raw weights, as the floor)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import pairwise_distances

METRICS = ("euclidean", "cosine")


def as_numpy(x: Any, dtype: type = np.float64) -> np.ndarray:
    """A numpy copy of a numpy array, a torch tensor (any device, detached) or a list."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def distances(a: Any, b: Any, metric: str = "euclidean") -> np.ndarray:
    """Pairwise distances between the rows of ``a`` and ``b``.

    Args:
        a: Query points.
        b: Reference points.
        metric: ``euclidean`` or ``cosine`` (1 - cosine similarity).

    Shapes:
        - a: [N, D]; b: [M, D]
        - returns: [N, M]
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    return pairwise_distances(as_numpy(a), as_numpy(b), metric=metric)


def vote(neighbour_labels: np.ndarray) -> np.ndarray:
    """Majority label of each row of neighbour labels, nearest first.

    Ties (always possible with k = 2) go to the tied label met first, i.e. the one holding the
    nearest neighbour, so the rule reduces to 1-NN exactly when the vote is split.

    Shapes:
        - neighbour_labels: [N, k], sorted by distance
        - returns: [N]
    """
    out = np.empty(len(neighbour_labels), dtype=neighbour_labels.dtype)
    for i, row in enumerate(neighbour_labels):
        labels, first, counts = np.unique(row, return_index=True, return_counts=True)
        best = counts == counts.max()
        out[i] = labels[best][np.argmin(first[best])]
    return out


def knn_classify(
    train_z: Any, train_y: Any, test_z: Any, k: int = 2, metric: str = "euclidean"
) -> np.ndarray:
    """Label each test point by majority vote of its ``k`` nearest training points.

    Args:
        train_z: Reference representations.
        train_y: Their integer labels.
        test_z: Query representations.
        k: Neighbours per query (2 in the ProbeX paper); capped at the number of references.
        metric: ``euclidean`` or ``cosine``.

    Returns:
        The predicted label of every query (ties: see :func:`vote`).

    Shapes:
        - train_z: [N, D]; train_y: [N]; test_z: [M, D]
        - returns: [M]
    """
    train_y = as_numpy(train_y, np.int64)
    if len(train_y) == 0:
        raise ValueError("knn_classify needs at least one reference point")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    d = distances(test_z, train_z, metric)
    k = min(k, d.shape[1])
    nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
    return vote(train_y[nearest])


def knn_accuracy(
    train_z: Any, train_y: Any, test_z: Any, test_y: Any, k: int = 2, metric: str = "euclidean"
) -> float:
    """Fraction of test points whose :func:`knn_classify` label is their true label.

    Shapes:
        - train_z: [N, D]; train_y: [N]; test_z: [M, D]; test_y: [M]
    """
    pred = knn_classify(train_z, train_y, test_z, k, metric)
    return float(np.mean(pred == as_numpy(test_y, np.int64)))
