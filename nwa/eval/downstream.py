"""The downstream suite on one representation: kNN, retrieval, one-class detection.

Run it on learned representations and on raw flattened weights (the floor a metanetwork must
beat), with the same references and queries, so the two columns of a table compare directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nwa.eval.knn import as_numpy, knn_accuracy
from nwa.eval.oneclass import one_class_auroc
from nwa.eval.retrieval import retrieval_precision_at_k


def _value(compute: Callable[[], float]) -> float | None:
    """The metric, or ``None`` when the data cannot give it (too few models, one class)."""
    try:
        v = compute()
    except ValueError:
        return None
    return None if v is None or math.isnan(v) else float(v)


def suite_keys(precision_ks: Sequence[int] = (1, 5)) -> list[str]:
    """The keys :func:`downstream_metrics` returns, in order."""
    return [
        "knn_top1",
        *(f"retrieval_p@{k}" for k in precision_ks),
        "one_class_auroc_knn",
        "one_class_auroc_ledoit_wolf",
    ]


def knn_metrics(
    ref_z: Any, ref_y: Any, query_z: Any, query_y: Any, k: int = 2, metric: str = "euclidean"
) -> dict[str, float | None]:
    """kNN top-1 of the query models among the references (``knn_top1``, ``None`` if empty).

    Shapes:
        - ref_z: [N, D]; ref_y: [N]; query_z: [M, D]; query_y: [M]
    """
    ref_z, query_z = as_numpy(ref_z), as_numpy(query_z)
    if len(ref_z) == 0 or len(query_z) == 0:
        return {"knn_top1": None}
    return {"knn_top1": _value(lambda: knn_accuracy(ref_z, ref_y, query_z, query_y, k, metric))}


def retrieval_metrics(
    ref_z: Any,
    ref_y: Any,
    query_z: Any,
    query_y: Any,
    precision_ks: Sequence[int] = (1, 5),
    metric: str = "euclidean",
) -> dict[str, float | None]:
    """Retrieval precision@k (``retrieval_p@k``): each query model retrieves among the
    references and the other query models.

    Shapes:
        - ref_z: [N, D]; ref_y: [N]; query_z: [M, D]; query_y: [M]
    """
    ref_z, query_z = as_numpy(ref_z), as_numpy(query_z)
    out: dict[str, float | None] = {f"retrieval_p@{p}": None for p in precision_ks}
    if len(ref_z) == 0 or len(query_z) == 0:
        return out
    pool_z = np.concatenate([ref_z, query_z])
    pool_y = np.concatenate([as_numpy(ref_y, np.int64), as_numpy(query_y, np.int64)])
    queries = range(len(ref_z), len(pool_z))
    for p in precision_ks:
        out[f"retrieval_p@{p}"] = _value(
            lambda p=p: retrieval_precision_at_k(pool_z, pool_y, p, metric, queries)
        )
    return out


def one_class_metrics(
    ref_z: Any, ref_y: Any, query_z: Any, query_y: Any, k: int = 2
) -> dict[str, float | None]:
    """One-class AUROC of the query models against the references' classes, by the kNN
    distance and the Ledoit-Wolf Mahalanobis score (``one_class_auroc_knn``, ``..._ledoit_wolf``).

    Shapes:
        - ref_z: [N, D]; ref_y: [N]; query_z: [M, D]; query_y: [M]
    """
    ref_z, query_z = as_numpy(ref_z), as_numpy(query_z)
    out: dict[str, float | None] = {}
    for method in ("knn", "ledoit_wolf"):
        out[f"one_class_auroc_{method}"] = (
            None
            if len(ref_z) == 0 or len(query_z) == 0
            else _value(lambda m=method: one_class_auroc(ref_z, ref_y, query_z, query_y, m, k))
        )
    return out


def downstream_metrics(
    ref_z: Any,
    ref_y: Any,
    query_z: Any,
    query_y: Any,
    k: int = 2,
    precision_ks: Sequence[int] = (1, 5),
    metric: str = "euclidean",
) -> dict[str, float | None]:
    """kNN top-1, retrieval precision@k and one-class AUROC (kNN and Ledoit-Wolf) of a split.

    Args:
        ref_z: Labelled reference representations (e.g. the training models).
        ref_y: Their integer labels.
        query_z: Evaluation representations (e.g. the test models).
        query_y: Their integer labels.
        k: Neighbours for kNN classification and the kNN one-class score.
        precision_ks: The k of each retrieval precision (each query model retrieves among the
            references and the other query models).
        metric: Distance for kNN and retrieval: ``euclidean`` or ``cosine``.

    Returns:
        :func:`suite_keys` -> value, ``None`` where the data cannot give one.

    Shapes:
        - ref_z: [N, D]; ref_y: [N]; query_z: [M, D]; query_y: [M]
    """
    args = (ref_z, ref_y, query_z, query_y)
    return (
        knn_metrics(*args, k, metric)
        | retrieval_metrics(*args, precision_ks, metric)
        | one_class_metrics(*args, k)
    )


def random_projection(x: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """Gaussian random projection to ``dim`` columns when wider (Johnson-Lindenstrauss: pairwise
    distances are kept up to a small relative error), so raw-weight baselines stay tractable
    for large layers; narrower inputs, or ``dim <= 0``, are returned unchanged.

    Shapes:
        - x: [N, D]
        - returns: [N, min(D, dim)]
    """
    if dim <= 0 or x.shape[1] <= dim:
        return x
    rng = np.random.default_rng(seed)
    out = np.zeros((len(x), dim), dtype=np.float64)
    # in column blocks, so a [D, dim] matrix of a huge layer never sits in memory at once;
    # float32 draws are twice as fast to make and keep distances as well
    for start in range(0, x.shape[1], 8192):
        block = x[:, start : start + 8192].astype(np.float32)
        out += block @ rng.standard_normal((block.shape[1], dim), dtype=np.float32)
    return out / math.sqrt(dim)
