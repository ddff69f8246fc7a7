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
    y = as_numpy(y, np.int64)
    if len(y) == 0:
        raise ValueError("zero_shot_top1 needs at least one model")
    scores = cosine_scores(model_z, text_z)
    if y.min() < 0 or y.max() >= scores.shape[1]:
        raise ValueError(f"labels must index the {scores.shape[1]} candidate texts")
    return float(np.mean(scores.argmax(1) == y))
