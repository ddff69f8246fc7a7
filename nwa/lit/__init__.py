"""Thin LightningModules: an encoder (metanetwork) + a task + an optimizer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch import nn

from nwa import calibration
from nwa.tasks import Targets, Task, compute_metrics, task_for
from nwa.weights.spec import WeightShapes

EncoderFactory = Callable[[WeightShapes], nn.Module]
TaskFactory = Callable[[int, Targets], Task]


class WeightModule(L.LightningModule):
    """Trains any metanetwork on any task.

    Args:
        encoder: The metanetwork, as ``class_path`` + ``init_args``; it is called with the
            data's :class:`WeightShapes`, so no shape is typed into a config.
        task: The task (head, loss, metrics); by default the one that fits the data's targets.
        shapes: Linked from the data module; leave unset.
        targets: Linked from the data module; leave unset.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        head_hidden: Hidden width of the default task's head (``None``: linear).
        scheduler: ``none`` or ``cosine`` (annealed over ``trainer.max_epochs``).
    """

    # WeightModule arguments a subclass does not use, left out of its hyperparameters
    not_hparams: tuple[str, ...] = ()

    def __init__(
        self,
        encoder: EncoderFactory,
        task: TaskFactory | None = None,
        shapes: WeightShapes | None = None,
        targets: Targets | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        head_hidden: int | None = None,
        scheduler: str = "none",
    ) -> None:
        super().__init__()
        if shapes is None or targets is None:
            raise ValueError(
                "shapes and targets come from the data module (python -m nwa.fit links them)"
            )
        # Plain containers only, so checkpoints load with torch.load(weights_only=True). Called
        # from here, Lightning also records the arguments of every subclass __init__ that
        # reaches this one through super().__init__.
        self.save_hyperparameters(
            ignore=["encoder", "task", "shapes", "targets", *self.not_hparams]
        )
        self.hparams.update(shapes=asdict(shapes), targets=asdict(targets))
        self.shapes, self.targets = shapes, targets
        self.build(encoder, task)

    def build(self, encoder: EncoderFactory | None, task: TaskFactory | None) -> None:
        """Build the trainable parts from ``self.shapes`` and ``self.targets``: the encoder, its
        task and the evaluation metrics. Subclasses with other parts (one expert per tree, fitted
        trees) override it; ``self.hparams`` already holds every argument."""
        self.encoder = encoder(self.shapes)
        dim = self.encoder.out_dim
        self.task = (
            task(dim, self.targets)
            if task is not None
            else task_for(dim, self.targets, self.hparams.head_hidden)
        )
        self.metrics = nn.ModuleDict({stage: self.task.metrics() for stage in ("val", "test")})

    # ----- calibration: validation residuals, kept with the checkpoint -----
    def _keep_val(self, *parts: torch.Tensor) -> None:
        """Keep tensors of a validation batch (predictions, targets ...) for :meth:`_val_outputs`."""
        if not self.trainer.sanity_checking:
            self.__dict__.setdefault("_val_parts", []).append([t.detach() for t in parts])

    def _val_outputs(self) -> list[torch.Tensor] | None:
        """This epoch's validation predictions, targets and extras, each [N, ...], from every
        rank (DDP gives each rank an equal share), then forgotten; ``None`` if none were kept."""
        parts = self.__dict__.pop("_val_parts", None)
        if not parts:
            return None
        cat = [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]
        if self.trainer.world_size > 1:
            cat = [self.all_gather(t).flatten(0, 1) for t in cat]
        return [t.cpu() for t in cat]

    def _calibrate(self, residuals: torch.Tensor | None, **kw: torch.Tensor) -> None:
        """Record the validation models' ``|y - y_hat|`` (see :mod:`nwa.calibration`)."""
        self.calibration = calibration.record(
            residuals, self.targets.names, self.global_step, self.current_epoch, **kw
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Only residuals of the weights being saved (a checkpoint written after training steps
        # that no validation has seen yet gets none).
        record = getattr(self, "calibration", None)
        if record is not None and record["step"] == self.global_step:
            checkpoint[calibration.KEY] = record

    def forward(self, x: Any) -> torch.Tensor:
        return self.task(self.encoder(x))

    def embed(self, x: Any) -> torch.Tensor:
        """A batch of models' representations, as the evaluation callbacks
        (:mod:`nwa.eval.callbacks`) compare them: the encoder's output.

        Shapes:
            - returns: [B, D]
        """
        return self.encoder(x)

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        if dm is None:
            return
        if hasattr(self.task, "fit_scaler"):
            self.task.fit_scaler(dm.train_targets().to(self.device))
        if hasattr(self.encoder, "fit"):  # non-gradient parts (PCA) are fitted on training models
            xs = [b["x"] for b in dm.loader(dm.splits["train"])]
            self.encoder.fit(torch.cat(xs).to(self.device))

    def on_train_epoch_start(self) -> None:
        # augmentations are drawn per epoch, so a resumed run draws what an unbroken run drew
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.task.loss(self(batch["x"]), batch["y"])
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            batch_size=len(batch["y"]),
            on_epoch=True,
            on_step=False,
            sync_dist=True,
        )
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        out = self(batch["x"])
        self.log(
            f"{stage}/loss",
            self.task.loss(out, batch["y"]),
            batch_size=len(batch["y"]),
            sync_dist=True,
            prog_bar=stage == "val",
        )
        self.task.update(self.metrics[stage], out, batch["y"])
        if stage == "val" and self.targets.kind == "regression":
            self._keep_val(out, batch["y"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_metrics(self, stage: str) -> None:
        # torchmetrics already reduced across ranks; sync_dist only averages identical values.
        values = compute_metrics(self.metrics[stage], stage)
        self.log_dict(values, prog_bar=False, sync_dist=True)
        self.metrics[stage].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        outputs = self._val_outputs()
        if outputs is not None:
            out, y = outputs
            self._calibrate((y.float() - out.float()).abs())

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return {
            "index": batch["index"],
            "pred": self.task.predict(self(batch["x"])),
            "target": batch["y"],
        }

    def configure_optimizers(self) -> Any:
        params = list(self.parameters())
        # One fused kernel per step: the per-tensor form allocates step-sized temporaries, which
        # on a Dense layer of 75 M weights took longer than the step itself (benchmarks/adam_step.py)
        fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
        opt = torch.optim.Adam(
            params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused or None
        )
        if self.hparams.scheduler == "cosine" and self.trainer.max_epochs:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.max_epochs)
            return {"optimizer": opt, "lr_scheduler": sched}
        return opt
