"""StatNN's gradient-boosted trees (LightGBM) trained and evaluated like every other metanetwork."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from nwa.errors import ConfigError
from nwa.lit import WeightModule
from nwa.metanets import StatNNBoosted
from nwa.metanets.inputs import check_input
from nwa.tasks import Targets, task_for
from nwa.weights.spec import WeightShapes

_EPS = 1e-7


class FittedTrees:
    """The LightGBM boosters of a fitted :class:`~nwa.metanets.StatNNBoosted`, held as model
    strings (plain data, for checkpoints) and as boosters (for predictions).

    Args:
        task: ``multilabel``, ``multiclass`` or ``regression``.
        entries: One per booster: ``{"booster": model string, "classes": [...] or None}``, or
            ``{"constant": value}`` for a target or label constant in training (one model).
    """

    def __init__(self, task: str, entries: list[dict[str, Any]]) -> None:
        import lightgbm as lgb

        self.task, self.entries = task, entries
        self._boosters = [
            lgb.Booster(model_str=e["booster"]) if "booster" in e else None for e in entries
        ]

    @classmethod
    def from_statnn(cls, model: StatNNBoosted) -> FittedTrees:
        entries = []
        for m in model.models:
            if isinstance(m, float):
                entries.append({"constant": m})
                continue
            classes = getattr(m, "classes_", None)
            entries.append(
                {
                    "booster": m.booster_.model_to_string(),
                    "classes": None if classes is None else [int(c) for c in classes],
                }
            )
        return cls(str(model.task), entries)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "entries": self.entries}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FittedTrees:
        return cls(d["task"], d["entries"])

    def _probabilities(self, i: int, x: np.ndarray) -> np.ndarray:
        """Class probabilities of booster ``i``, [N, n_seen] (a binary booster gives P(1))."""
        p = self._boosters[i].predict(x)
        return np.stack([1 - p, p], axis=1) if p.ndim == 1 else p

    def outputs(self, x: np.ndarray, n: int) -> np.ndarray:
        """Predictions in the task's output space: logits (multilabel), log-probabilities
        (multiclass) or values (regression).

        Shapes:
            - x: [N, F] features
            - returns: [N, n]
        """
        if self.task == "regression":
            return np.stack(
                [
                    np.full(len(x), e["constant"]) if b is None else b.predict(x)
                    for e, b in zip(self.entries, self._boosters, strict=True)
                ],
                axis=1,
            )
        if self.task == "multiclass":
            probs = np.zeros((len(x), n))
            seen = self._probabilities(0, x)
            for col, c in enumerate(self.entries[0]["classes"]):
                if 0 <= c < n:  # classes absent from training keep probability 0
                    probs[:, c] = seen[:, col]
            return np.log(np.clip(probs, _EPS, 1.0))
        cols = []
        for i, e in enumerate(self.entries):
            p = np.full(len(x), e["constant"]) if "constant" in e else self._probabilities(i, x)
            cols.append(p if p.ndim == 1 else p[:, -1])
        p = np.clip(np.stack(cols, axis=1), _EPS, 1 - _EPS)
        return np.log(p) - np.log1p(-p)


class BoostedTreesModule(WeightModule):
    """StatNN with gradient-boosted trees (Unterthiner et al. 2020), through ``python -m nwa.fit``.

    The boosted trees are not trained by gradients: during the first training epoch every
    training batch's features are collected, and at the epoch's last batch (before validation,
    so checkpoints hold the fitted trees) a :class:`~nwa.metanets.StatNNBoosted` is fitted on
    them; later epochs change nothing, so ``trainer.max_epochs: 1`` suffices. Each batch steps a no-op
    optimizer, so step counts and checkpointing behave as for gradient-trained modules. In evaluation the
    trees' predictions are turned into the task's output space (logits of the probabilities for
    multi-label, log-probabilities for multi-class, values for regression), so the default task
    computes the same losses and metrics, under the same names, as :class:`WeightModule`.
    Checkpoints hold the trees as LightGBM model strings (``python -m nwa.test --ckpt_path``
    works). A subclass of ``WeightModule`` so that ``python -m nwa.fit`` accepts it.

    Args:
        shapes: Linked from the data module; leave unset.
        targets: Linked from the data module; leave unset.
        n_estimators: Boosting rounds.
        learning_rate: Shrinkage.
        num_leaves: Leaves per tree.
        min_child_samples: Fewest training models in a leaf (LightGBM's default 20 leaves a zoo
            of a few dozen models with constant predictions: lower it there).
        seed: LightGBM seed.
        n_jobs: LightGBM threads. One by default: on StatNN-sized tables (models x a few hundred
            features) threads cost more than they save, and they contend with torch's threads.
        lgbm: Any other ``LGBMRegressor``/``LGBMClassifier`` argument.

    Shapes:
        - input: [B, F] features (``data.input: stats``, ``spectral`` or ``flat``)
        - output: [B, n_outputs] in the task's output space
    """

    inputs = StatNNBoosted.inputs
    """The ``data.input`` families the trees read."""
    # gradient-training settings do not apply to fitted trees
    not_hparams = ("lr", "weight_decay", "head_hidden", "scheduler")

    def __init__(
        self,
        shapes: WeightShapes | None = None,
        targets: Targets | None = None,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 20,
        seed: int = 0,
        n_jobs: int = 1,
        lgbm: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(None, None, shapes, targets)

    def build(self, encoder: None, task: None) -> None:
        """No encoder: the task gives the loss, the metrics and (regression) the target scaler;
        its head is unused, so it is frozen. The trees come with the first epoch."""
        self.automatic_optimization = False
        self.task = task_for(1, self.targets).requires_grad_(False)
        self.metrics = nn.ModuleDict({stage: self.task.metrics() for stage in ("val", "test")})
        self.trees: FittedTrees | None = None
        self._collected: list[tuple[torch.Tensor, torch.Tensor]] = []

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is not None:
            check_input(self, dm.input)

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        if dm is not None and hasattr(self.task, "fit_scaler"):
            self.task.fit_scaler(dm.train_targets().to(self.device))

    @staticmethod
    def _features(x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            raise ConfigError("BoostedTreesModule needs [B, F] features (data.input 'stats')")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._features(x)
        n = self.targets.n
        if self.trees is None:  # before fitting (sanity check): a neutral prediction
            if self.targets.kind == "regression":
                return self.task.y_mean.expand(len(x), n).to(x.device)
            return x.new_zeros(len(x), n)
        out = self.trees.outputs(x.detach().cpu().double().numpy(), n)
        return torch.as_tensor(out, dtype=torch.float32, device=x.device)

    # ----- training: collect, then fit once -----
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.trees is None:
            self._collected.append((self._features(batch["x"]).detach(), batch["y"].detach()))
        self.optimizers().step()  # counts the batch as a step, so checkpoints are written

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self._fit_collected()

    def on_train_epoch_end(self) -> None:
        self._fit_collected()  # when the number of batches was unknown

    def _fit_collected(self) -> None:
        if self.trees is not None or not self._collected:
            return
        x = torch.cat([f for f, _ in self._collected])
        y = torch.cat([t for _, t in self._collected])
        self._collected = []
        if self.trainer.world_size > 1:  # every rank fits the same trees on all models
            x, y = self.all_gather(x).flatten(0, 1), self.all_gather(y).flatten(0, 1)
        p = self.hparams
        model = StatNNBoosted(
            p.n_estimators,
            p.learning_rate,
            p.num_leaves,
            p.seed,
            min_child_samples=p.min_child_samples,
            n_jobs=p.n_jobs,
            **(p.lgbm or {}),
        )
        model.fit(x.cpu().double().numpy(), y.cpu().numpy(), self.targets.kind)
        self.trees = FittedTrees.from_statnn(model)
        loss = self.task.loss(self(x.to(self.device)), y.to(self.device))
        self.log("train/loss", loss, batch_size=len(y), on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # No gradients here; but ModelCheckpoint saves only after optimizer steps, so each
        # training batch steps this no-op optimizer (lr 0 over the frozen, unused head).
        return torch.optim.SGD(self.task.parameters(), lr=0.0)

    # ----- checkpoints: the trees as LightGBM model strings -----
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # the validation residuals (regression)
        checkpoint["boosted_trees"] = None if self.trees is None else self.trees.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("boosted_trees")
        self.trees = None if saved is None else FittedTrees.from_dict(saved)
