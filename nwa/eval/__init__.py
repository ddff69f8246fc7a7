"""Evaluation on representations: zero-shot, kNN, retrieval, one-class detection, figures.

Pure functions on numpy arrays or torch tensors (no Lightning), so a notebook can run them on any
saved representation. :mod:`nwa.eval.plots` draws figures (import it explicitly: it loads
matplotlib).
"""

from nwa.eval.downstream import downstream_metrics, random_projection, suite_keys
from nwa.eval.knn import as_numpy, distances, knn_accuracy, knn_classify
from nwa.eval.oneclass import anomaly_scores, one_class_auroc
from nwa.eval.retrieval import nearest_examples, neighbours, retrieval_precision_at_k
from nwa.eval.zeroshot import cosine_scores, zero_shot_top1

__all__ = [
    "anomaly_scores",
    "as_numpy",
    "cosine_scores",
    "distances",
    "downstream_metrics",
    "knn_accuracy",
    "knn_classify",
    "nearest_examples",
    "neighbours",
    "one_class_auroc",
    "random_projection",
    "retrieval_precision_at_k",
    "suite_keys",
    "zero_shot_top1",
]
