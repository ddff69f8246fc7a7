"""Tasks of one target kind (multi-label, multi-class, regression) and the data's :class:`Targets`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torchmetrics as tm
from torch import nn


@dataclass(frozen=True)
class Targets:
    """What a data module asks a model to predict.

    Attributes:
        kind: ``multilabel``, ``multiclass``, ``regression`` or ``multitask``.
        names: Class names (classification), property names (regression) or label names
            (multitask).
        labels: ``multitask``: each label's own targets (``multiclass`` with its class names,
            or ``regression`` with the label's name), in the order of ``names``.
    """

    kind: str
    names: tuple[str, ...] = field(default_factory=tuple)
    labels: tuple[Targets, ...] = field(default_factory=tuple)

    @property
    def n(self) -> int:
        return len(self.names)


def _head(in_dim: int, out_dim: int, hidden: int | None) -> nn.Module:
    if not hidden:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class Task(nn.Module):
    """Base task. Subclasses set ``kind`` and implement :meth:`loss` and :meth:`metrics`.

    Args:
        in_dim: Representation size (the encoder's ``out_dim``).
        targets: The data's targets.
        hidden: Hidden width of a two-layer head; ``None`` for a linear head.
    """

    kind = ""

    def __init__(self, in_dim: int, targets: Targets, hidden: int | None = None) -> None:
        super().__init__()
        if targets.kind != self.kind:
            from nwa.errors import ConfigError

            raise ConfigError(
                f"{type(self).__name__} predicts {self.kind} targets, but the data gives {targets.kind} ({targets.n} outputs)"
            )
        self.targets = targets
        self.head = _head(in_dim, targets.n, hidden)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self) -> tm.MetricCollection:
        raise NotImplementedError

    def update(self, metrics: tm.MetricCollection, out: torch.Tensor, y: torch.Tensor) -> None:
        metrics.update(out, y)

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        """Predictions a user reads: class probabilities, or property values."""
        return out


class MultiLabel(Task):
    """Which of the classes a model was trained on (ProbeX's discriminative task).

    ``acc`` is the fraction of all per-class yes/no decisions that are correct (threshold 0.5; the
    ProbeX paper's accuracy); ``exact`` needs the whole set right; F1, precision and recall are
    macro-averaged over classes.
    """

    kind = "multilabel"

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(out, y.float())

    def metrics(self) -> tm.MetricCollection:
        n = self.targets.n
        cls = tm.classification
        return tm.MetricCollection(
            {
                "acc": cls.MultilabelAccuracy(n, average="micro"),
                "exact": cls.MultilabelExactMatch(n),
                "f1": cls.MultilabelF1Score(n, average="macro"),
                "precision": cls.MultilabelPrecision(n, average="macro"),
                "recall": cls.MultilabelRecall(n, average="macro"),
            }
        )

    def update(self, metrics: tm.MetricCollection, out: torch.Tensor, y: torch.Tensor) -> None:
        metrics.update(torch.sigmoid(out), y.long())

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)


class MultiClass(Task):
    """One class per model (tree, architecture, concept): top-1 accuracy, macro F1, precision, recall."""

    kind = "multiclass"

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out, y)

    def metrics(self) -> tm.MetricCollection:
        n = max(2, self.targets.n)
        cls = tm.classification
        return tm.MetricCollection(
            {
                "acc": cls.MulticlassAccuracy(n, average="micro"),
                "f1": cls.MulticlassF1Score(n, average="macro"),
                "precision": cls.MulticlassPrecision(n, average="macro"),
                "recall": cls.MulticlassRecall(n, average="macro"),
            }
        )

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        return out.softmax(-1)


class PerProperty(tm.Metric):
    """Wraps a multi-output metric and reports one value per property plus their mean."""

    full_state_update = False

    def __init__(self, metric: tm.Metric, names: tuple[str, ...]) -> None:
        super().__init__()
        self.inner = metric
        self.names = names

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.inner.update(preds, target)

    def compute(self) -> dict[str, torch.Tensor]:
        try:
            values = torch.atleast_1d(self.inner.compute())
        except ValueError:  # R^2 and tau are undefined on fewer than two models
            values = torch.full((len(self.names),), float("nan"))
        out = {name: v for name, v in zip(self.names, values)}
        out["mean"] = values.mean()
        return out

    def reset(self) -> None:
        self.inner.reset()
        super().reset()


class Regression(Task):
    """Properties of a model (test accuracy, generalization gap, robustness ...).

    Trained with MSE on targets standardized by the training split's statistics (set by
    :meth:`fit_scaler`); metrics are on the original scale: R^2, MSE, MAE, RMSE and Kendall's
    tau, each per property and averaged.
    """

    kind = "regression"

    def __init__(self, in_dim: int, targets: Targets, hidden: int | None = None) -> None:
        super().__init__(in_dim, targets, hidden)
        self.register_buffer("y_mean", torch.zeros(targets.n))
        self.register_buffer("y_std", torch.ones(targets.n))

    def fit_scaler(self, y: torch.Tensor) -> None:
        """Set the standardization from training targets [N, P]."""
        self.y_mean.copy_(y.float().mean(0))
        self.y_std.copy_(
            y.float().std(0).clamp_min(1e-6) if len(y) > 1 else torch.ones_like(self.y_std)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z) * self.y_std + self.y_mean

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(
            (out - self.y_mean) / self.y_std, (y - self.y_mean) / self.y_std
        )

    def metrics(self) -> tm.MetricCollection:
        n, names = self.targets.n, self.targets.names
        reg = tm.regression
        return tm.MetricCollection(
            compute_groups=False,
            metrics={
                "r2": PerProperty(reg.R2Score(multioutput="raw_values"), names),
                "mse": PerProperty(reg.MeanSquaredError(num_outputs=n), names),
                "mae": PerProperty(reg.MeanAbsoluteError(num_outputs=n), names),
                "rmse": PerProperty(reg.MeanSquaredError(squared=False, num_outputs=n), names),
                "kendall": PerProperty(reg.KendallRankCorrCoef(num_outputs=n), names),
            },
        )

    def update(self, metrics: tm.MetricCollection, out: torch.Tensor, y: torch.Tensor) -> None:
        n = self.targets.n
        out, y = out.float(), y.float()
        if n == 1:  # torchmetrics wants [N] for single-output metrics
            out, y = out[:, 0], y[:, 0]
        metrics.update(out, y)


TASKS = {t.kind: t for t in (MultiLabel, MultiClass, Regression)}


def compute_metrics(metrics: tm.MetricCollection, prefix: str) -> dict[str, torch.Tensor]:
    """Compute every metric, flattening per-property dicts:
    ``r2 -> {"test_acc": v, "mean": m}`` gives ``prefix/r2_test_acc`` and ``prefix/r2``."""
    out = {}
    for k, metric in metrics.items():
        v = metric.compute()
        if isinstance(v, dict):
            for sub, x in v.items():
                out[f"{prefix}/{k}" if sub == "mean" else f"{prefix}/{k}_{sub}"] = x
        else:
            out[f"{prefix}/{k}"] = v
    return out
