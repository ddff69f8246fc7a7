"""AlignModule: weight-to-text alignment (ProbeX-style) and its held-out-concept evaluation."""

from __future__ import annotations

import functools
import json
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nwa.atomic import atomic_write_text
from nwa.eval import downstream_metrics, nearest_examples, random_projection, zero_shot_top1
from nwa.lit import EncoderFactory, WeightModule
from nwa.tasks import Targets
from nwa.tasks.align import TextAlignment
from nwa.weights.spec import WeightShapes


@dataclass
class Encoded:
    """Models of some splits, encoded: embeddings, flattened raw weights, concepts, ids."""

    z: np.ndarray = field(default_factory=lambda: np.zeros((0, 1)))
    raw: np.ndarray | None = None
    concepts: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.concepts)

    def take(self, index: Sequence[int]) -> Encoded:
        """The models at ``index``, in that order."""
        idx = list(index)
        raw = None if self.raw is None else self.raw[idx]
        return Encoded(
            self.z[idx], raw, [self.concepts[i] for i in idx], [self.ids[i] for i in idx]
        )


def alternate(enc: Encoded) -> tuple[Encoded, Encoded]:
    """Each concept's models alternately into references (1st, 3rd, ...) and queries (2nd, ...)."""
    count: Counter[str] = Counter()
    halves: tuple[list[int], list[int]] = ([], [])
    for i, c in enumerate(enc.concepts):
        halves[count[c] % 2].append(i)
        count[c] += 1
    return enc.take(halves[0]), enc.take(halves[1])


def flatten_input(x: Any) -> torch.Tensor | None:
    """A batch's weights as one flat vector per model (``None`` for graph inputs).

    Shapes:
        - x: [B, ...], ``{layer: [B, ...]}`` or ``{key: [[B, ...], ...]}``
        - returns: [B, D]
    """
    if isinstance(x, torch.Tensor):
        return x.flatten(1)
    if not isinstance(x, dict):
        return None
    parts = [p for v in x.values() for p in (v if isinstance(v, list | tuple) else [v])]
    return torch.cat([p.flatten(1) for p in parts], dim=1)


def run_dir(trainer: Any) -> Path:
    """This run's folder: the parent of its checkpoint folder (unique per run for W&B and CSV
    loggers alike), else the trainer's log dir or root dir."""
    ckpt = getattr(trainer, "checkpoint_callback", None)
    if ckpt is not None and getattr(ckpt, "dirpath", None):
        return Path(ckpt.dirpath).parent
    return Path(trainer.log_dir or trainer.default_root_dir)


def scalars(tree: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numeric leaves of a nested results dict, keyed ``prefix/a/b``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= scalars(v, f"{prefix}/{k}")
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}/{k}"] = float(v)
    return out


class AlignModule(WeightModule):
    """Aligns weight representations with concept texts, then evaluates on held-out concepts.

    Training is CLIP-style (see :class:`~nwa.tasks.align.TextAlignment`). After fitting (the test
    stage of ``python -m nwa.fit``, or ``python -m nwa.test``) it writes a results JSON into the run
    folder and logs every number under ``align/``: in-distribution top-1 (test split, training
    concepts), zero-shot top-1 (held-out splits, held-out concepts' texts only), and on the learned
    embeddings and on raw flattened weights (the floor) kNN top-1, retrieval precision@k and
    one-class AUROC (kNN and Ledoit-Wolf), for training concepts (references: the training models,
    queries: the test split) and for held-out ones (each held-out concept's models alternately
    references and queries, as zoos put all of a held-out concept's models in one split); plus
    example queries and figures. The zoo's ``val_holdout`` concepts are left for model selection.

    Args:
        encoder: The metanetwork (``class_path`` + ``init_args``), called with the data's shapes.
        shapes: Linked from the data module; leave unset.
        targets: Linked from the data module (target ``concept``, or any categorical label);
            leave unset.
        text_encoder: ``minilm`` (offline default), ``open_clip:<model>``, ``hf_clip``, or the
            import path of a TextEncoder subclass.
        text_weights: Weights for a CLIP text encoder: a local file or folder, or a Hugging Face
            Hub id (``hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]``).
        prompt: A concept's text; ``{}`` is replaced by the concept name.
        mode: ``prototype`` (each model against all training concepts) or ``clip`` (in-batch pairs).
        symmetric: Add the text-to-model direction in ``clip`` mode.
        embed_dim: Shared space size; ``None`` projects text into the representation space.
        temperature: Initial softmax temperature.
        learn_temperature: Learn the logit scale.
        relu: Overrides the encoder's ``relu`` (ProbeX's ReLU ablation); ``None`` keeps it.
        lr: Adam learning rate (ProbeX's alignment setting: 2e-3).
        weight_decay: Adam weight decay.
        scheduler: ``none`` or ``cosine``.
        holdout_splits: Splits of held-out-concept models for zero-shot evaluation.
        knn_k: Neighbours for kNN classification and the kNN one-class score.
        precision_ks: The k of each retrieval precision.
        n_examples: Example queries in the report and figure.
        raw_dim: Raw weights wider than this are randomly projected to it (distances are kept
            approximately); 0 keeps every weight.
        plots: Write the embedding (PCA, t-SNE) and retrieval figures.
        results_file: Results JSON name in the run folder (an absolute path is used as is).
    """

    def __init__(
        self,
        encoder: EncoderFactory,
        shapes: WeightShapes | None = None,
        targets: Targets | None = None,
        text_encoder: str = "minilm",
        text_weights: str | None = None,
        prompt: str = "a photo of a {}",
        mode: str = "prototype",
        symmetric: bool = True,
        embed_dim: int | None = None,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        relu: bool | None = None,
        lr: float = 2e-3,
        weight_decay: float = 1e-5,
        scheduler: str = "none",
        holdout_splits: Sequence[str] = ("test_holdout",),
        knn_k: int = 2,
        precision_ks: Sequence[int] = (1, 5),
        n_examples: int = 5,
        raw_dim: int = 1024,
        plots: bool = True,
        results_file: str = "align_results.json",
    ) -> None:
        task = functools.partial(
            TextAlignment,
            text_encoder=text_encoder,
            text_weights=text_weights,
            prompt=prompt,
            mode=mode,
            symmetric=symmetric,
            embed_dim=embed_dim,
            temperature=temperature,
            learn_temperature=learn_temperature,
        )
        build = functools.partial(encoder, relu=relu) if relu is not None else encoder
        # WeightModule saves every argument above as hyperparameters (all plain values).
        super().__init__(build, task, shapes, targets, lr, weight_decay, None, scheduler)
        self.task: TextAlignment
        self.results: dict[str, Any] = {}
        self._pool = Encoded()

    # ----- training -----
    def on_fit_start(self) -> None:
        super().on_fit_start()
        dm = self.trainer.datamodule
        # candidates: the concepts of the whole training split, so every DDP rank agrees
        if dm is not None:
            self.task.set_training_concepts(dm.train_targets().to(self.device))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.task.training_loss(self.encoder(batch["x"]), batch["y"])
        # epoch means, averaged over DDP ranks (synced once per epoch, not per step)
        kw = {"batch_size": len(batch["y"]), "on_epoch": True, "on_step": False, "sync_dist": True}
        self.log("train/loss", loss, prog_bar=True, **kw)
        self.log("train/logit_scale", self.task.scale.detach(), **kw)
        return loss

    # ----- evaluation -----
    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.trainer.datamodule is None:
            return
        # every rank computes the same report (all models, synced weights), so the sync below
        # averages equal values and no rank waits on another
        self.results = self.alignment_report()
        if self.trainer.is_global_zero:
            self._write(self.results)
        numbers = {k: v for k, v in self.results.items() if k != "settings"}
        self.log_dict(scalars(numbers, "align"), sync_dist=True)

    @torch.no_grad()
    def encode_splits(self, splits: Sequence[str]) -> Encoded:
        """Embeddings (shared space) and flattened raw weights of every model in ``splits``."""
        dm = self.trainer.datamodule
        if not dm.rows["split"].isin(list(splits)).any():
            return Encoded()
        loader = dm.loader(list(splits))
        zs, raws, training = [], [], self.training
        self.eval()
        for batch in loader:
            raws.append(flatten_input(batch["x"]))
            x = self.transfer_batch_to_device(batch["x"], self.device, 0)
            zs.append(self.task.model_embeddings(self.encoder(x)).float().cpu())
        self.train(training)
        raw = None
        if all(r is not None for r in raws):
            raw = random_projection(torch.cat(raws).double().numpy(), self.hparams.raw_dim)
        rows = loader.dataset.rows
        # the class each model has: its concept, or whichever categorical label is the target
        concepts = dm.target_names(rows) if hasattr(dm, "target_names") else list(rows["concept"])
        return Encoded(torch.cat(zs).numpy(), raw, concepts, list(rows["id"]))

    def concept_features(self, concepts: Sequence[str]) -> torch.Tensor:
        """Projected text features of named concepts (encoding any the buffer lacks).
        Shapes: -> [len(concepts), D]."""
        names = list(self.task.targets.names)
        missing = [c for c in concepts if c not in names]
        extra = self.task.encode_texts(missing).to(self.device) if missing else None
        rows = [
            self.task.text_embeddings[names.index(c)] if c in names else extra[missing.index(c)]
            for c in concepts
        ]
        with torch.no_grad():
            return self.task.text_features(torch.stack(rows)).float().cpu()

    def top1(self, enc: Encoded, concepts: Sequence[str]) -> float | None:
        """Top-1 of ``enc``'s models (those of ``concepts``) among ``concepts``' texts only."""
        index = {c: i for i, c in enumerate(concepts)}
        keep = [i for i, c in enumerate(enc.concepts) if c in index]
        if not keep:
            return None
        y = [index[enc.concepts[i]] for i in keep]
        return zero_shot_top1(enc.z[keep], self.concept_features(concepts), y)

    def alignment_report(self) -> dict[str, Any]:
        """Every alignment result (see the class docstring), as a JSON-ready dict."""
        dm, hp = self.trainer.datamodule, self.hparams
        splits = {
            "train": dm.splits["train"],
            "test": dm.splits["test"],
            "held_out": hp.holdout_splits,
        }
        parts = {name: self.encode_splits(s) for name, s in splits.items()}
        train, test, held = parts.values()
        names = self.task.targets.names
        seen = [n for n, c in zip(names, self.task.candidates.tolist()) if c]
        unseen = sorted(set(held.concepts))
        if set(seen) & set(unseen):
            warnings.warn(
                f"concepts {sorted(set(seen) & set(unseen))[:5]} are in training and held-out "
                "splits: their zero-shot scores are not zero-shot",
                stacklevel=2,
            )
        vocab = {c: i for i, c in enumerate(sorted(set(names) | set(unseen)))}
        self._pool = _concat(list(parts.values()))  # kept for the figures
        suite = functools.partial(
            _suites, vocab=vocab, k=hp.knn_k, precision_ks=tuple(hp.precision_ks)
        )
        return {
            "settings": self._settings(),
            "concepts": {"train": seen, "held_out": unseen},
            "n_models": {name: len(part) for name, part in parts.items()},
            "in_distribution_top1": self.top1(test, seen),
            "in_distribution_chance": 1 / len(seen) if seen else None,
            "zero_shot_top1": self.top1(held, unseen),
            "zero_shot_chance": 1 / len(unseen) if unseen else None,
            "learned": suite(train, test, held, raw=False),
            "raw": suite(train, test, held, raw=True),
            "examples": self._examples(
                vocab, self._pool, range(len(train), len(train) + len(test))
            ),
            "figures": {},
        }

    def _settings(self) -> dict[str, Any]:
        hp = self.hparams
        keys = ("text_encoder", "text_weights", "prompt", "mode", "embed_dim", "lr", "raw_dim")
        relu = any(isinstance(m, nn.ReLU) for m in self.encoder.modules())
        return {k: hp[k] for k in keys} | {
            "relu": relu,
            "logit_scale": float(self.task.scale.detach()),
        }

    def _examples(self, vocab: dict[str, int], pool: Encoded, test: range) -> list[dict[str, Any]]:
        """Nearest models (among all encoded) of one query per concept, alternating between
        test-split models (indices ``test`` of the pool) and held-out ones (after them)."""
        if len(pool) < 2:
            return []
        firsts: dict[str, int] = {}
        for i in range(test.start, len(pool)):
            firsts.setdefault(pool.concepts[i], i)
        seen = [i for i in firsts.values() if i in test]
        unseen = [i for i in firsts.values() if i not in test]
        queries = [q for pair in zip_longest(seen, unseen) for q in pair if q is not None]
        y = [vocab[c] for c in pool.concepts]
        k, n = min(5, len(pool) - 1), self.hparams.n_examples
        return nearest_examples(pool.z, y, list(vocab), queries[:n], k, ids=pool.ids)

    def _write(self, results: dict[str, Any]) -> None:
        path = Path(self.hparams.results_file)
        folder = path.parent if path.is_absolute() else run_dir(self.trainer)
        path = path if path.is_absolute() else folder / path
        if self.hparams.plots:
            results["figures"] = self._figures(folder, results)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(results, indent=2, default=str))
        print(summary(results), flush=True)
        print(f"nwa: alignment results in {path}", flush=True)

    def _figures(self, folder: Path, results: dict[str, Any]) -> dict[str, str]:
        from nwa.eval.plots import embedding_plot, retrieval_figure

        pool, out = self._pool, {}
        if len(pool) >= 3:
            held = [c in set(results["concepts"]["held_out"]) for c in pool.concepts]
            out["embedding"] = embedding_plot(
                pool.z, pool.concepts, held, folder / "align_embedding.png", title="learned"
            )
            if pool.raw is not None:
                out["embedding_raw"] = embedding_plot(
                    pool.raw,
                    pool.concepts,
                    held,
                    folder / "align_embedding_raw.png",
                    title="raw weights",
                )
        if results["examples"]:
            out["retrieval"] = retrieval_figure(results["examples"], folder / "align_retrieval.png")
        return {k: str(v) for k, v in out.items()}


def summary(results: dict[str, Any]) -> str:
    """The headline numbers against chance, one line each."""

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


def _concat(parts: list[Encoded]) -> Encoded:
    parts = [p for p in parts if len(p)]
    if not parts:
        return Encoded()
    raws = [p.raw for p in parts]
    raw = np.concatenate(raws) if all(r is not None for r in raws) else None
    return Encoded(
        np.concatenate([p.z for p in parts]),
        raw,
        [c for p in parts for c in p.concepts],
        [i for p in parts for i in p.ids],
    )


def _suites(
    train: Encoded,
    test: Encoded,
    held: Encoded,
    raw: bool,
    vocab: dict[str, int],
    k: int,
    precision_ks: tuple[int, ...],
) -> dict[str, dict[str, float | None]]:
    """The downstream suite for training concepts (references: train; queries: test) and held-out
    ones (each concept's held-out models alternately references and queries)."""

    def rep(e: Encoded) -> np.ndarray | None:
        return e.raw if raw else e.z

    def labels(e: Encoded) -> np.ndarray:
        return np.array([vocab[c] for c in e.concepts], dtype=np.int64)

    out = {}
    pairs = {"in_distribution": (train, test), "held_out": alternate(held)}
    for name, (a, b) in pairs.items():
        za, zb = rep(a), rep(b)
        if za is None or zb is None:  # graph inputs have no raw-weights baseline
            za = zb = np.zeros((0, 1))
        out[name] = downstream_metrics(za, labels(a), zb, labels(b), k, precision_ks)
    return out
