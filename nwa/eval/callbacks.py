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
from nwa.eval.zeroshot import proportion_interval, zero_shot_ranks

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
    """Naming each model's class from its class texts (a module with a text side,
    :class:`nwa.lit.align.AlignModule`): ``in_distribution_*`` (test models, among the training
    classes' texts) and ``zero_shot_*`` (held-out models, among the held-out classes' texts
    only). Each part gets its top-1 and top-``k`` accuracy, a 95 % Wilson interval of each
    (``*_top1_lo`` / ``*_top1_hi``), its model count ``*_n`` and its chance levels; prints the
    top-1s against chance.

    Args:
        k: The k of the top-k accuracy (``*_top5`` at the default).
        level: Confidence level of the intervals.
    """

    def __init__(self, k: int = 5, level: float = 0.95) -> None:
        if k < 1 or not 0 < level < 1:
            raise ConfigError(f"ZeroShotEval: need k >= 1 and 0 < level < 1, got {k}, {level}")
        self.k, self.level = k, level

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "concept_features", None)):
            raise ConfigError(
                f"trainer.callbacks: ZeroShotEval needs a module with a text side "
                f"(nwa.lit.align.AlignModule); {type(pl_module).__name__} has none"
            )
        super().setup(trainer, pl_module, stage)

    def evaluate(self, rep: Representations, pl_module: LightningModule) -> dict[str, Any]:
        parts, concepts = rep.parts or {}, rep.report["concepts"]
        out: dict[str, Any] = {}
        for key, part, names in (
            ("in_distribution", "test", concepts["train"]),
            ("zero_shot", "held_out", concepts["held_out"]),
        ):
            out |= self._scores(key, pl_module, parts[part], names)
        return out

    def _scores(
        self, key: str, pl_module: Any, enc: Encoded, concepts: Sequence[str]
    ) -> dict[str, Any]:
        """Top-1 and top-k of ``enc``'s models (those of ``concepts``) among ``concepts``' texts
        only, with their intervals; ``None`` where no model belongs to ``concepts``."""
        c, k = len(concepts), self.k
        out: dict[str, Any] = {
            f"{key}_top1": None,
            f"{key}_chance": 1 / c if c else None,
            f"{key}_top{k}": None,
            f"{key}_top{k}_chance": min(k, c) / c if c else None,
            f"{key}_n": 0,
        }
        index = {name: i for i, name in enumerate(concepts)}
        keep = [i for i, name in enumerate(enc.concepts) if name in index]
        if not keep:
            return out
        y = [index[enc.concepts[i]] for i in keep]
        ranks = zero_shot_ranks(enc.z[keep], pl_module.concept_features(list(concepts)), y)
        for top in (1, k):
            hits = ranks < top
            lo, hi = proportion_interval(int(hits.sum()), len(hits), self.level)
            out |= {f"{key}_top{top}": float(hits.mean()), f"{key}_top{top}_lo": lo}
            out[f"{key}_top{top}_hi"] = hi
        out[f"{key}_n"] = len(keep)
        return out

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_test_epoch_end(trainer, pl_module)
        report = self.shared(trainer).report
        if "zero_shot_top1" in report and trainer.is_global_zero:
            print(summary(report), flush=True)


def summary(results: dict[str, Any]) -> str:
    """The zero-shot headline numbers against chance, one line each."""

    def line(label: str, key: str) -> str:
        value, chance = results.get(f"{key}_top1"), results.get(f"{key}_chance")
        if value is None:
            return f"  {label}: n/a (no models in those splits)"
        ratio = f", {value / chance:.1f}x chance" if chance else ""
        lo, hi = results.get(f"{key}_top1_lo"), results.get(f"{key}_top1_hi")
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
        n = results.get(f"{key}_n")
        of = f" of {n} models" if n else ""
        return f"  {label}: {value:.3f}{ci}{of} (chance {chance:.3f}{ratio})"

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
