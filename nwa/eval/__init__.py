"""Evaluation on representations: zero-shot, kNN, retrieval, one-class detection, figures.

Pure functions on numpy arrays or torch tensors (no Lightning), so a notebook can run them on any
saved representation. :mod:`nwa.eval.plots` draws figures (import it explicitly: it loads
matplotlib); :mod:`nwa.eval.callbacks` runs these evaluations at the end of a test run, for any
module with an encoder, as Lightning callbacks listed in a recipe.
"""

from nwa.eval.downstream import (
    downstream_metrics,
    knn_metrics,
    one_class_metrics,
    random_projection,
    retrieval_metrics,
    suite_keys,
)
from nwa.eval.knn import as_numpy, distances, knn_accuracy, knn_classify
from nwa.eval.oneclass import anomaly_scores, one_class_auroc
from nwa.eval.retrieval import nearest_examples, neighbours, retrieval_precision_at_k
from nwa.eval.zeroshot import (
    cosine_scores,
    proportion_interval,
    zero_shot_hits,
    zero_shot_ranks,
    zero_shot_top1,
    zero_shot_topk,
)

__all__ = [
    "anomaly_scores",
    "as_numpy",
    "cosine_scores",
    "distances",
    "downstream_metrics",
    "knn_accuracy",
    "knn_classify",
    "knn_metrics",
    "nearest_examples",
    "neighbours",
    "one_class_auroc",
    "one_class_metrics",
    "proportion_interval",
    "random_projection",
    "retrieval_metrics",
    "retrieval_precision_at_k",
    "suite_keys",
    "zero_shot_hits",
    "zero_shot_ranks",
    "zero_shot_top1",
    "zero_shot_topk",
]
