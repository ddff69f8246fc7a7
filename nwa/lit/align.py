"""AlignModule: weight-to-text alignment (ProbeX-style): its loss, and its text side."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from nwa.lit import EncoderFactory, WeightModule
from nwa.tasks import Targets
from nwa.tasks.align import TextAlignment
from nwa.weights.spec import WeightShapes

MOVED_ARGUMENTS = (
    "holdout_splits",
    "knn_k",
    "precision_ks",
    "n_examples",
    "raw_dim",
    "plots",
    "results_file",
)
"""Evaluation arguments AlignModule took before its evaluation became callbacks
(:mod:`nwa.eval.callbacks`), found in the configs its older checkpoints carry."""


def without_moved_arguments(config: dict[str, Any]) -> dict[str, Any]:
    """A run config saved with an AlignModule that took :data:`MOVED_ARGUMENTS`, with them
    moved to the evaluation callbacks that now do what they set (so such checkpoints still load
    and test as they did); any other config is returned unchanged."""
    model = config.get("model") if isinstance(config, dict) else None
    args = model.get("init_args") if isinstance(model, dict) else None
    if not isinstance(args, dict) or not set(args) & set(MOVED_ARGUMENTS):
        return config
    moved = {k: args[k] for k in MOVED_ARGUMENTS if k in args}
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    callbacks = [*(trainer.get("callbacks") or []), *_callbacks(moved)]
    return config | {
        "model": model | {"init_args": {k: v for k, v in args.items() if k not in moved}},
        "trainer": trainer | {"callbacks": callbacks},
    }


def _callbacks(moved: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluation callbacks (config entries) that the moved arguments configured."""
    rep = {"prefix": "align", "results_file": moved.get("results_file", "align_results.json")}
    rep |= {k: moved[k] for k in ("holdout_splits", "raw_dim") if k in moved}
    knn = {"k": moved["knn_k"]} if "knn_k" in moved else {}
    retrieval = {key: moved[key] for key in ("precision_ks", "n_examples") if key in moved}
    entries = [
        ("Representations", rep),
        ("ZeroShotEval", {}),
        ("KNNEval", knn),
        ("RetrievalEval", retrieval),
        ("OneClassEval", knn),
        *([("EmbeddingFigure", {})] if moved.get("plots", True) else []),
    ]
    return [
        {"class_path": f"nwa.eval.callbacks.{name}", "init_args": init} for name, init in entries
    ]


class AlignModule(WeightModule):
    """Aligns weight representations with concept texts (CLIP-style, see
    :class:`~nwa.tasks.align.TextAlignment`), so that a model's concept can be named from its
    weights, zero-shot for concepts never trained on.

    Its evaluation (in-distribution and zero-shot top-1, kNN, retrieval, one-class AUROC against
    raw weights, figures) is the callbacks of :mod:`nwa.eval.callbacks` its recipe lists
    (``configs/model/align.yaml``); :class:`~nwa.eval.callbacks.ZeroShotEval` reads the text side
    through :meth:`concept_features`.

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

    # ----- the text side -----
    def embed(self, x: Any) -> torch.Tensor:
        """A batch of models in the shared (weight-text) space, for the evaluation callbacks.

        Shapes:
            - returns: [B, D]
        """
        return self.task.model_embeddings(self.encoder(x))

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
