"""One-class detection: is a model one of a concept's models, given only that concept's examples?"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage
from sklearn.metrics import roc_auc_score

from nwa.eval.knn import as_numpy, distances

METHODS = ("knn", "ledoit_wolf")


def anomaly_scores(
    fit_z: np.ndarray, test_z: np.ndarray, method: str = "knn", k: int = 2
) -> np.ndarray:
    """How unlike the fitted points each test point is (higher = more anomalous).

    ``knn``: mean Euclidean distance to the ``k`` nearest fitted points. ``ledoit_wolf``:
    squared Mahalanobis distance under the Ledoit-Wolf shrunk covariance of the fitted points
    (shrinkage keeps it invertible when there are fewer points than dimensions).

    Shapes:
        - fit_z: [N, D]; test_z: [M, D]
        - returns: [M]
    """
    if method == "knn":
        d = np.sort(distances(test_z, fit_z), axis=1)
        return d[:, : min(k, d.shape[1])].mean(1)
    if method == "ledoit_wolf":
        return ledoit_wolf_mahalanobis(fit_z, test_z)
    raise ValueError(f"method {method!r} is not one of {METHODS}")


def ledoit_wolf_mahalanobis(fit_z: np.ndarray, test_z: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distances under the Ledoit-Wolf covariance, as
    ``sklearn.covariance.LedoitWolf().fit(fit_z).mahalanobis(test_z)`` computes them.

    With N fitted points in D > N dimensions the shrunk covariance is
    ``a Xc^T Xc + b I`` (``a = (1 - s) / N``, ``b = s tr(S) / D``, ``Xc`` the centred points), so
    the Woodbury identity inverts it through an N x N system instead of sklearn's D x D
    eigendecomposition (seconds for raw weights projected to D = 1024, per concept).

    Shapes:
        - fit_z: [N, D]; test_z: [M, D]
        - returns: [M]
    """
    fit_z, test_z = np.asarray(fit_z, np.float64), np.asarray(test_z, np.float64)
    n, d = fit_z.shape
    mu = fit_z.mean(0)
    xc = fit_z - mu
    shrinkage = float(ledoit_wolf_shrinkage(xc, assume_centered=True))
    a = (1.0 - shrinkage) / n
    b = shrinkage * float((xc**2).sum()) / n / d

    def sklearn() -> np.ndarray:
        return LedoitWolf().fit(fit_z).mahalanobis(test_z)

    if d <= n or b <= 0.0:  # the D x D route is cheap, or the covariance is not shrunk
        return sklearn()
    v = test_z - mu
    if a == 0.0:
        return (v**2).sum(1) / b
    gram = b / a * np.eye(n) + xc @ xc.T
    # barely shrunk, the N x N system is near-singular (the centred points have rank N - 1):
    # sklearn's pseudo-inverse route handles that case
    if b / a < 1e-8 * np.trace(gram) / n:
        return sklearn()
    xv = xc @ v.T  # [N, M]
    try:
        inner = np.linalg.solve(gram, xv)
    except np.linalg.LinAlgError:
        return sklearn()
    out = ((v**2).sum(1) - (xv * inner).sum(0)) / b
    return out if np.isfinite(out).all() else sklearn()


def one_class_auroc(
    train_z: Any,
    train_y: Any,
    test_z: Any,
    test_y: Any,
    method: str = "knn",
    k: int = 2,
    per_class: bool = False,
) -> float | dict[int, float]:
    """One-class detection AUROC per class, averaged over classes.

    For each class c: fit on the training representations of class c only, score every test
    representation, and compute the AUROC of "is class c" (positives: test points of class c;
    lower anomaly score = more likely c). Classes without both positive and negative test points,
    or (for ``ledoit_wolf``) with fewer than two training points, are skipped.

    Args:
        train_z: Training representations.
        train_y: Their integer labels.
        test_z: Test representations.
        test_y: Their integer labels.
        method: ``knn`` (mean distance to the k nearest) or ``ledoit_wolf`` (Mahalanobis).
        k: Neighbours for ``knn``.
        per_class: Return ``{class: AUROC}`` instead of the mean.

    Returns:
        The mean AUROC over the scored classes (NaN if none), or the per-class dict.

    Shapes:
        - train_z: [N, D]; train_y: [N]; test_z: [M, D]; test_y: [M]
    """
    train_z, test_z = as_numpy(train_z), as_numpy(test_z)
    train_y, test_y = as_numpy(train_y, np.int64), as_numpy(test_y, np.int64)
    need = 2 if method == "ledoit_wolf" else 1
    aurocs = {}
    for c in np.unique(train_y):
        positive = test_y == c
        members = train_z[train_y == c]
        if positive.all() or not positive.any() or len(members) < need:
            continue
        scores = anomaly_scores(members, test_z, method, k)
        aurocs[int(c)] = float(roc_auc_score(positive, -scores))
    if per_class:
        return aurocs
    return float(np.mean(list(aurocs.values()))) if aurocs else float("nan")
