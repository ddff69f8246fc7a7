"""Evaluation callbacks: representation-level evaluation at the end of a test run, for any module.

A recipe lists them under ``trainer.callbacks`` (LightningCLI ``class_path`` + ``init_args``)::

    trainer:
      callbacks:
        - class_path: nwa.eval.callbacks.Representations
          init_args: {label: tree}        # the class of each model; default: the run's target
        - class_path: nwa.eval.callbacks.KNNEval
        - class_path: nwa.eval.callbacks.RetrievalEval

:class:`Representations` encodes the models of three parts once per test run with the module's
encoder (:meth:`nwa.lit.WeightModule.embed`): ``train`` (the references), ``test`` (queries of
the training classes) and ``held_out`` (the held-out splits: each class's models alternately
references and queries, as zoos put all of a held-out class's models in one split). The other
callbacks read those encodings, log their numbers through the module's logger as
``<prefix>/...`` and add them to one results JSON in the run folder; the learned
representations are scored beside the raw flattened weights (the floor a metanetwork must beat).
Without a listed :class:`Representations` an evaluation callback adds one with its defaults.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from itertools import zip_longest
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from nwa.errors import ConfigError
from nwa.eval.downstream import knn_metrics, one_class_metrics, retrieval_metrics
from nwa.eval.encoded import Encoded
from nwa.eval.representations import Representations, evaluation_report
from nwa.eval.retrieval import nearest_examples
from nwa.eval.zeroshot import zero_shot_top1

__all__ = [
    "EmbeddingFigure",
    "KNNEval",
    "OneClassEval",
    "Representations",
    "RetrievalEval",
    "ZeroShotEval",
    "evaluation_report",
]


class _Evaluation(Callback):
    """An evaluation over the encodings of the run's :class:`Representations`."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not any(isinstance(c, Representations) for c in trainer.callbacks):
            # appended while Lightning iterates the list, so its own setup runs next
            trainer.callbacks.append(Representations())

    @staticmethod
    def shared(trainer: Trainer) -> Representations:
        return next(c for c in trainer.callbacks if isinstance(c, Representations))

    def evaluate(self, rep: Representations, pl_module: LightningModule) -> dict[str, Any]:
        raise NotImplementedError

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rep = self.shared(trainer)
        if rep.encoded(trainer, pl_module) is not None:
            rep.add(pl_module, self.evaluate(rep, pl_module))


class KNNEval(_Evaluation):
    """kNN top-1 (``knn_top1``): each query model's class by a vote of its ``k`` nearest
    references.

    Args:
        k: Neighbours that vote.
        metric: ``euclidean`` or ``cosine``.
    """

    def __init__(self, k: int = 2, metric: str = "euclidean") -> None:
        self.k, self.metric = k, metric

    def evaluate(self, rep: Representations, pl_module: LightningModule) -> dict[str, Any]:
        return rep.suite(functools.partial(knn_metrics, k=self.k, metric=self.metric))


class RetrievalEval(_Evaluation):
    """Retrieval precision@k (``retrieval_p@k``: each query model against every other model),
    and example queries with their nearest models (``examples`` in the results JSON).

    Args:
        precision_ks: The k of each precision.
        n_examples: Example queries, one per class, alternating training and held-out ones.
        metric: ``euclidean`` or ``cosine``.
    """

    def __init__(
        self, precision_ks: Sequence[int] = (1, 5), n_examples: int = 5, metric: str = "euclidean"
    ) -> None:
        self.precision_ks, self.n_examples, self.metric = list(precision_ks), n_examples, metric

    def evaluate(self, rep: Representations, pl_module: LightningModule) -> dict[str, Any]:
        fn = functools.partial(
            retrieval_metrics, precision_ks=self.precision_ks, metric=self.metric
        )
        return rep.suite(fn) | {"examples": self.examples(rep)}

    def examples(self, rep: Representations) -> list[dict[str, Any]]:
        """Nearest models (among all encoded) of one query per class, alternating between
        test-split models and held-out ones."""
        pool = rep.pool
        if len(pool) < 2:
            return []
        parts = rep.parts or {}
        test = range(len(parts["train"]), len(parts["train"]) + len(parts["test"]))
        firsts: dict[str, int] = {}
        for i in range(test.start, len(pool)):
            firsts.setdefault(pool.concepts[i], i)
        seen = [i for i in firsts.values() if i in test]
        unseen = [i for i in firsts.values() if i not in test]
        queries = [q for pair in zip_longest(seen, unseen) for q in pair if q is not None]
        y = [rep.vocab[c] for c in pool.concepts]
        k = min(5, len(pool) - 1)
        return nearest_examples(
            pool.z, y, list(rep.vocab), queries[: self.n_examples], k, self.metric, pool.ids
        )


class OneClassEval(_Evaluation):
    """One-class detection AUROC: is a query model of a reference class? Scored by the kNN
    distance (``one_class_auroc_knn``) and the Ledoit-Wolf Mahalanobis distance
    (``one_class_auroc_ledoit_wolf``).

    Args:
        k: Neighbours of the kNN score.
    """

    def __init__(self, k: int = 2) -> None:
        self.k = k

    def evaluate(self, rep: Representations, pl_module: LightningModule) -> dict[str, Any]:
        return rep.suite(functools.partial(one_class_metrics, k=self.k))


class ZeroShotEval(_Evaluation):
    """Top-1 of naming each model's class from its class texts (a module with a text side,
    :class:`nwa.lit.align.AlignModule`): ``in_distribution_top1`` (test models, among the
    training classes' texts) and ``zero_shot_top1`` (held-out models, among the held-out classes'
    texts only), each with its chance level; prints both against chance."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "concept_features", None)):
            raise ConfigError(
                f"trainer.callbacks: ZeroShotEval needs a module with a text side "
                f"(nwa.lit.align.AlignModule); {type(pl_module).__name__} has none"
            )
        super().setup(trainer, pl_module, stage)

    def evaluate(self, rep: Representations, pl_module: LightningModule) -> dict[str, Any]:
        parts, concepts = rep.parts or {}, rep.report["concepts"]
        seen, unseen = concepts["train"], concepts["held_out"]
        return {
            "in_distribution_top1": _top1(pl_module, parts["test"], seen),
            "in_distribution_chance": 1 / len(seen) if seen else None,
            "zero_shot_top1": _top1(pl_module, parts["held_out"], unseen),
            "zero_shot_chance": 1 / len(unseen) if unseen else None,
        }

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_test_epoch_end(trainer, pl_module)
        report = self.shared(trainer).report
        if "zero_shot_top1" in report and trainer.is_global_zero:
            print(summary(report), flush=True)


def _top1(pl_module: Any, enc: Encoded, concepts: Sequence[str]) -> float | None:
    """Top-1 of ``enc``'s models (those of ``concepts``) among ``concepts``' texts only."""
    index = {c: i for i, c in enumerate(concepts)}
    keep = [i for i, c in enumerate(enc.concepts) if c in index]
    if not keep:
        return None
    y = [index[enc.concepts[i]] for i in keep]
    return zero_shot_top1(enc.z[keep], pl_module.concept_features(list(concepts)), y)


def summary(results: dict[str, Any]) -> str:
    """The zero-shot headline numbers against chance, one line each."""

    def line(label: str, key: str) -> str:
        value, chance = results.get(f"{key}_top1"), results.get(f"{key}_chance")
        if value is None:
            return f"  {label}: n/a (no models in those splits)"
        ratio = f", {value / chance:.1f}x chance" if chance else ""
        return f"  {label}: {value:.3f} (chance {chance:.3f}{ratio})"

    return "\n".join(
        [
            "nwa: weight-to-text alignment",
            line("in-distribution top-1", "in_distribution"),
            line("zero-shot top-1 (held-out concepts)", "zero_shot"),
        ]
    )


class EmbeddingFigure(_Evaluation):
    """Figures in the run folder: every encoded model in 2-D (PCA and t-SNE; learned and raw
    weights, held-out classes marked) and the example queries of :class:`RetrievalEval`."""

    def evaluate(self, rep: Representations, pl_module: LightningModule) -> dict[str, Any]:
        return {}  # drawn at the end, once every evaluation has added its results

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rep = self.shared(trainer)
        if not rep.report or not trainer.is_global_zero:
            return
        from nwa.eval.plots import embedding_plot, retrieval_figure

        pool, out = rep.pool, {}
        if len(pool) >= 3:
            held = set(rep.report["concepts"]["held_out"])
            mask = [c in held for c in pool.concepts]
            path = rep.figure_path(trainer, "embedding")
            out["embedding"] = embedding_plot(pool.z, pool.concepts, mask, path, title="learned")
            if pool.raw is not None:
                path = rep.figure_path(trainer, "embedding_raw")
                out["embedding_raw"] = embedding_plot(
                    pool.raw, pool.concepts, mask, path, title="raw weights"
                )
        if rep.report.get("examples"):
            path = rep.figure_path(trainer, "retrieval")
            out["retrieval"] = retrieval_figure(rep.report["examples"], path)
        rep.report["figures"] = {k: str(v) for k, v in out.items()}
        rep.write(trainer)
