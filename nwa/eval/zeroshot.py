"""Zero-shot (and in-distribution) concept prediction: each model's nearest concept text."""

from __future__ import annotations

from typing import Any

import numpy as np

from nwa.eval.knn import as_numpy


def cosine_scores(model_z: Any, text_z: Any) -> np.ndarray:
    """Cosine similarity of every model embedding with every candidate text embedding.

    Shapes:
        - model_z: [N, D]; text_z: [C, D]
        - returns: [N, C]
    """
    m, t = as_numpy(model_z), as_numpy(text_z)
    m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return m @ t.T


def zero_shot_ranks(model_z: Any, text_z: Any, y: Any) -> np.ndarray:
    """Each model's rank of its own concept among the candidate texts (0: nearest, cosine).

    A text tied with the model's own concept counts as ranked above it, so a collapsed encoder
    that scores every text alike gets nothing right.

    Shapes:
        - model_z: [N, D]; text_z: [C, D]; y: [N]
        - returns: [N] integers in [0, C)
    """
    y = as_numpy(y, np.int64)
    if len(y) == 0:
        raise ValueError("zero-shot scoring needs at least one model")
    scores = cosine_scores(model_z, text_z)
    if y.min() < 0 or y.max() >= scores.shape[1]:
        raise ValueError(f"labels must index the {scores.shape[1]} candidate texts")
    own = scores[np.arange(len(y)), y]
    return (scores >= own[:, None]).sum(1) - 1


def zero_shot_hits(model_z: Any, text_z: Any, y: Any, k: int = 1) -> np.ndarray:
    """Whether each model's concept is among its ``k`` nearest candidate texts
    (:func:`zero_shot_ranks` below ``k``). Shapes: -> [N] booleans."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return zero_shot_ranks(model_z, text_z, y) < k


def zero_shot_top1(model_z: Any, text_z: Any, y: Any) -> float:
    """Top-1 accuracy of picking each model's concept among the candidate concepts' texts.

    For zero-shot evaluation the candidates are the held-out concepts only (models of unseen
    concepts scored against unseen concepts' texts); for in-distribution, the training concepts.
    Chance is ``1 / C``.

    Args:
        model_z: Model embeddings in the shared space.
        text_z: Embeddings of the candidate concepts' texts.
        y: Each model's concept, as a row index into ``text_z``.

    Shapes:
        - model_z: [N, D]; text_z: [C, D]; y: [N]
    """
    return float(np.mean(zero_shot_hits(model_z, text_z, y, 1)))


def zero_shot_topk(model_z: Any, text_z: Any, y: Any, k: int = 5) -> float:
    """Top-``k`` accuracy among the candidate texts (chance ``min(k, C) / C``); a text tied with
    the model's own concept counts as ranked above it."""
    return float(np.mean(zero_shot_hits(model_z, text_z, y, k)))


def proportion_interval(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy of ``hits`` out of ``n`` (scipy's ``binomtest``):
    unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n hits."""
    from scipy.stats import binomtest

    if n < 1 or not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n and n >= 1, got {hits} of {n}")
    ci = binomtest(int(hits), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)
