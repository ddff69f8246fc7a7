"""Several labels at once: one head per label, cross-entropy for classes, MSE for properties.

The seed ("Neural Weight Archeology") predicts a model's architecture family, optimizer, data
size and accuracy from one representation with a head per property and the sum of their losses.
Targets are ``[N, L]`` floats: a class index for a class label (``-1``: unknown), a value for a
regression label (``NaN``: unknown); unknown entries count in neither loss nor metrics.
"""

from __future__ import annotations

import torch
import torchmetrics as tm
from torch import nn

from nwa.tasks.single import MultiClass, Regression, Targets, Task


class LabelMetrics(tm.Metric):
    """One label's metrics inside a multi-task batch: its column of the targets, its head's
    outputs, known entries only; ``compute`` gives ``{metric: value}``."""

    full_state_update = False

    def __init__(self, task: Task, column: int, start: int, stop: int) -> None:
        super().__init__()
        self.kind, self.column, self.start, self.stop = task.kind, column, start, stop
        self.inner = task.metrics()

    def update(self, out: torch.Tensor, y: torch.Tensor) -> None:
        pred, target = out[:, self.start : self.stop].float(), y[:, self.column]
        known = target >= 0 if self.kind == "multiclass" else ~torch.isnan(target)
        if not known.any():
            return
        if self.kind == "multiclass":
            self.inner.update(pred[known], target[known].long())
        elif self.stop - self.start == 1:  # torchmetrics wants [N] for one output
            self.inner.update(pred[known, 0], target[known].float())

    def compute(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, metric in self.inner.items():
            try:
                value = metric.compute()
            except ValueError:  # no known entry, or R^2 on one model
                value = torch.tensor(float("nan"))
            if isinstance(value, dict):  # a property's metrics: its one value
                value = value["mean"]
            out[name] = value
        return out

    def reset(self) -> None:
        self.inner.reset()
        super().reset()


class MultiTask(Task):
    """One head per label (:attr:`Targets.labels`); the loss is the mean of the labels'
    losses (cross-entropy for classes, MSE on standardized values for properties).

    Metrics are per label: ``{stage}/{label}_acc`` (and F1, precision, recall) for classes,
    ``{stage}/{label}_r2`` (and MSE, MAE, RMSE, Kendall's tau) for properties.
    """

    kind = "multitask"

    def __init__(self, in_dim: int, targets: Targets, hidden: int | None = None) -> None:
        nn.Module.__init__(self)
        if targets.kind != self.kind or not targets.labels:
            from nwa.errors import ConfigError

            raise ConfigError(f"MultiTask needs per-label targets, got {targets.kind}")
        self.targets = targets
        self.tasks = nn.ModuleList(
            (MultiClass if t.kind == "multiclass" else Regression)(in_dim, t, hidden)
            for t in targets.labels
        )
        sizes = [t.n for t in targets.labels]
        self.slices = [(sum(sizes[:i]), sum(sizes[: i + 1])) for i in range(len(sizes))]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[B, sum of outputs]: class logits, or property values on their original scale."""
        return torch.cat([task(z) for task in self.tasks], 1)

    def fit_scaler(self, y: torch.Tensor) -> None:
        """Standardize each property by its known training values."""
        for i, task in enumerate(self.tasks):
            if isinstance(task, Regression):
                col = y[:, i]
                task.fit_scaler(col[~torch.isnan(col)].unsqueeze(1))

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = []
        for i, (task, (a, b)) in enumerate(zip(self.tasks, self.slices)):
            target = y[:, i]
            if isinstance(task, MultiClass):
                known = target >= 0
                if known.any():
                    losses.append(task.loss(out[known, a:b], target[known].long()))
            else:
                known = ~torch.isnan(target)
                if known.any():
                    losses.append(task.loss(out[known, a:b], target[known].unsqueeze(1)))
        return torch.stack(losses).mean() if losses else out.sum() * 0.0

    def metrics(self) -> tm.MetricCollection:
        return tm.MetricCollection(
            compute_groups=False,
            metrics={
                label: LabelMetrics(task, i, a, b)
                for i, (label, task, (a, b)) in enumerate(
                    zip(self.targets.names, self.tasks, self.slices)
                )
            },
        )

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        """Class probabilities per class label, values per property, side by side."""
        parts = []
        for task, (a, b) in zip(self.tasks, self.slices):
            parts.append(task.predict(out[:, a:b]))
        return torch.cat(parts, 1)
