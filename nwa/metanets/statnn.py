"""StatNN: predictors on per-tensor weight statistics (Unterthiner et al. 2020).

Two predictors on the same features (:func:`nwa.weights.stats.statnn_features`): the original
gradient-boosted trees (:class:`StatNNBoosted`, LightGBM, non-gradient) and the MLP used by NFN and
neural-graphs (:class:`StatNNMLP`, an encoder like any other). Tables should name which one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nwa.metanets.mlp import mlp_layers
from nwa.weights.spec import WeightShapes, from_shapes

TASKS = ("regression", "multiclass", "multilabel")


class StatNNMLP(nn.Module):
    r"""MLP encoder on StatNN features (the NFN / neural-graphs variant of StatNN).

    .. math:: h = \mathrm{MLP}\big((f - \mu) \oslash \sigma\big)

    where :math:`f` are the concatenated per-tensor statistics (mean, std, 0/25/50/75/100 %
    quantiles) and :math:`\mu, \sigma` are buffers set by :meth:`fit` on the training features
    (identity until then). Statistics differ in scale by orders of magnitude across layers, so
    fitting the standardization is recommended.

    Args:
        in_dim: Number of features F (7 per tensor), from the data.
        hidden: Widths of the hidden layers; the last one is the representation size.
        dropout: Dropout after each hidden layer.

    Shapes:
        - input: [B, F]
        - output: [B, out_dim] with ``out_dim = hidden[-1]``
    """

    inputs = ("stats", "spectral")
    """The ``data.input`` families this encoder reads."""

    def __init__(
        self, in_dim: int | WeightShapes, hidden: Sequence[int] = (128, 128), dropout: float = 0.0
    ) -> None:
        super().__init__()
        in_dim = from_shapes(in_dim, "stats_dim")
        if len(hidden) == 0:
            raise ValueError("StatNNMLP needs at least one hidden layer")
        self.in_dim = int(in_dim)
        self.register_buffer("feature_mean", torch.zeros(self.in_dim))
        self.register_buffer("feature_std", torch.ones(self.in_dim))
        self.net = mlp_layers(self.in_dim, hidden, dropout)
        self.out_dim = int(hidden[-1])

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> StatNNMLP:
        """Set the standardization buffers from training features [N, F]."""
        x = x.detach().to(torch.float64)
        self.feature_mean.copy_(x.mean(dim=0).to(self.feature_mean))
        self.feature_std.copy_(x.std(dim=0, unbiased=False).clamp_min(1e-8).to(self.feature_std))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"StatNNMLP expects [B, {self.in_dim}] features, got {list(x.shape)}")
        return self.net((x - self.feature_mean) / self.feature_std)


class StatNNBoosted:
    """StatNN with gradient-boosted trees (LightGBM), the original predictor; non-gradient.

    Not an ``nn.Module``: it is fitted once on numpy arrays, and has no representation to hand
    to a task head. One LightGBM model per target: per output column for ``"regression"`` (a
    [N, T] target gives T regressors), one multiclass classifier for ``"multiclass"``, one binary
    classifier per label for ``"multilabel"`` (a label constant in training is predicted as that
    constant).

    Args:
        n_estimators: Boosting rounds.
        learning_rate: Shrinkage.
        num_leaves: Leaves per tree.
        seed: Random seed passed to LightGBM.
        **lgbm_kwargs: Any other ``LGBMRegressor`` / ``LGBMClassifier`` argument.

    Shapes:
        - fit: features [N, F] (numpy), targets [N] / [N, T] / [N] int / [N, C] in {0, 1}
        - predict: [N] / [N, T] values, [N] class labels, [N, C] 0/1 labels
    """

    inputs = ("stats", "spectral", "flat")
    """The ``data.input`` families this predictor reads."""

    def __init__(
        self,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        seed: int = 0,
        **lgbm_kwargs: Any,
    ) -> None:
        self.params = dict(
            n_estimators=n_estimators,
            learning_rate=learning_rate,
            num_leaves=num_leaves,
            random_state=seed,
            verbose=-1,
            **lgbm_kwargs,
        )
        self.task: str | None = None
        self.models: list[Any] = []
        self._squeeze = False

    def fit(self, x: np.ndarray, y: np.ndarray, task: str = "regression") -> StatNNBoosted:
        """Fit on features [N, F] and targets: [N] or [N, T] (regression), [N] int (multiclass),
        [N, C] in {0, 1} (multilabel)."""
        import lightgbm as lgb

        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} feature rows but {y.shape[0]} targets")
        self.task, self.models = task, []
        if task == "multiclass":
            self.models.append(
                lgb.LGBMClassifier(**self.params).fit(x, y.reshape(-1).astype(np.int64))
            )
            return self
        self._squeeze = y.ndim == 1
        cols = y.reshape(y.shape[0], -1)
        for c in range(cols.shape[1]):
            col = cols[:, c]
            if np.unique(col).size < 2:
                # nothing to split on: LightGBM refuses a single row, and a constant target
                # (or label) is its own prediction
                self.models.append(float(col[0]))
            elif task == "regression":
                self.models.append(lgb.LGBMRegressor(**self.params).fit(x, col.astype(np.float64)))
            else:
                self.models.append(lgb.LGBMClassifier(**self.params).fit(x, col.astype(np.int64)))
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities [N, C] (multiclass) or per-label probabilities [N, C] (multilabel)."""
        if self.task not in ("multiclass", "multilabel"):
            raise RuntimeError(
                "predict_proba needs a model fitted for 'multiclass' or 'multilabel'"
            )
        x = np.asarray(x, dtype=np.float64)
        if self.task == "multiclass":
            return self.models[0].predict_proba(x)
        cols = [
            np.full(x.shape[0], m) if isinstance(m, float) else m.predict_proba(x)[:, 1]
            for m in self.models
        ]
        return np.stack(cols, axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Regression values [N, T] (or [N] if fitted on [N]), class indices [N], or 0/1 labels [N, C]."""
        if self.task is None:
            raise RuntimeError("StatNNBoosted.fit must be called before predict")
        x = np.asarray(x, dtype=np.float64)
        if self.task == "multiclass":
            return self.models[0].predict(x)
        if self.task == "multilabel":
            return (self.predict_proba(x) >= 0.5).astype(np.int64)
        out = np.stack(
            [np.full(len(x), m) if isinstance(m, float) else m.predict(x) for m in self.models],
            axis=1,
        )
        return out[:, 0] if self._squeeze else out
