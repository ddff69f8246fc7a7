"""StatNN and PCA on a zoo of mixed architectures, through a common-size view of each model.

Models of different architectures share no tensor (an MLP's ``1.weight`` is no ResNet's
``conv1.weight``), so the per-tensor inputs of the data module (``stats``, ``flat``) do not apply.
The baselines read every model whole and reduce it to a vector of one size:

- **StatNN** (:func:`common_stats`): the 7 StatNN statistics (mean, std, 0/25/50/75/100 %
  quantiles) of four pools every network has: all weights of two or more dimensions, all vectors
  (biases, norm scales), the first weight (input layer) and the last (the head); 28 features,
  then gradient-boosted trees (LightGBM, :class:`~nwa.metanets.statnn.StatNNBoosted`). No counts
  (tensor or parameter numbers) enter, as in the published StatNN.
- **PCA** (:func:`common_flat`): the flattened parameters in module order, linearly resampled to
  a fixed length (:data:`FLAT_LENGTH`), standardized, PCA (fitted on training models), then a small
  MLP per label (scikit-learn).

BatchNorm running statistics are not parameters and are left out of both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nwa.weights.stats import statnn_features

FLAT_LENGTH = 4096
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def parameters_of(tensors: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """The float parameters of a state dict in its order (BatchNorm statistics left out)."""
    return [
        t.float() for n, t in tensors.items() if not n.endswith(_BUFFERS) and t.is_floating_point()
    ]


def common_stats(tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
    """[28] StatNN statistics of the four pools (weights, vectors, first weight, last weight)."""
    params = parameters_of(tensors)
    weights = [t for t in params if t.dim() >= 2]
    vectors = [t for t in params if t.dim() == 1] or weights  # a bias-free net: reuse weights
    if not weights:
        raise ValueError("a model without a weight of two or more dimensions")
    pools = [
        torch.cat([t.flatten() for t in weights]),
        torch.cat([t.flatten() for t in vectors]),
        weights[0],
        weights[-1],
    ]
    return statnn_features(pools).numpy()


def common_flat(tensors: Mapping[str, torch.Tensor], length: int = FLAT_LENGTH) -> np.ndarray:
    """[length] the parameters flattened in module order, linearly resampled to ``length``."""
    flat = torch.cat([t.flatten() for t in parameters_of(tensors)])
    return F.interpolate(flat.view(1, 1, -1), size=length, mode="linear").view(-1).numpy()


def _pca_model(kind: str, seed: int, n_train: int) -> Any:
    from sklearn.decomposition import PCA
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    head = MLPClassifier if kind == "multiclass" else MLPRegressor
    return make_pipeline(
        StandardScaler(),
        PCA(n_components=min(32, n_train - 1), random_state=seed),
        head(hidden_layer_sizes=(64,), max_iter=1000, early_stopping=False, random_state=seed),
    )


def fit_predict(
    method: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    kinds: Sequence[str],
    seed: int,
) -> list[np.ndarray]:
    """Per label: the test predictions (class indices, or values) of ``method`` (``StatNN-GBT``
    or ``PCA``) trained on ``x_train``. ``y_train`` is [N, L]: class indices (``-1`` unknown) or
    values (NaN unknown); unknown entries are left out of that label's fit."""
    from nwa.metanets.statnn import StatNNBoosted

    preds = []
    for j, kind in enumerate(kinds):
        col = y_train[:, j]
        known = col >= 0 if kind == "multiclass" else ~np.isnan(col)
        x, y = x_train[known], col[known]
        if method == "StatNN-GBT":
            # row and column subsampling, so that seeds differ as they do for the networks
            gbt = StatNNBoosted(seed=seed, subsample=0.8, subsample_freq=1, colsample_bytree=0.8)
            gbt.fit(x, y.astype(np.int64) if kind == "multiclass" else y, task=kind)
            preds.append(np.asarray(gbt.predict(x_test)).reshape(len(x_test)))
        elif kind == "multiclass":
            preds.append(_pca_model(kind, seed, len(x)).fit(x, y.astype(np.int64)).predict(x_test))
        else:  # the MLP regresses the standardized value
            mu, sd = float(y.mean()), float(y.std()) or 1.0
            model = _pca_model(kind, seed, len(x)).fit(x, (y - mu) / sd)
            preds.append(model.predict(x_test) * sd + mu)
    return preds


def label_metrics(
    name: str, kind: str, pred: np.ndarray, target: np.ndarray, n_classes: int
) -> dict[str, float]:
    """The test metrics ``nwa.fit`` logs for one label (``test/{name}_acc`` ...), by torchmetrics,
    over the known targets."""
    import torchmetrics.functional as tmf

    known = target >= 0 if kind == "multiclass" else ~np.isnan(target)
    p, t = torch.as_tensor(pred[known]), torch.as_tensor(target[known])
    if kind == "multiclass":
        n = max(2, n_classes)
        p, t = p.long(), t.long()
        args: dict[str, Any] = {"task": "multiclass", "num_classes": n}
        values = {
            "acc": tmf.accuracy(p, t, average="micro", **args),
            "f1": tmf.f1_score(p, t, average="macro", **args),
            "precision": tmf.precision(p, t, average="macro", **args),
            "recall": tmf.recall(p, t, average="macro", **args),
        }
    else:
        p, t = p.float(), t.float()
        values = {
            "r2": tmf.r2_score(p, t),
            "mse": tmf.mean_squared_error(p, t),
            "mae": tmf.mean_absolute_error(p, t),
        }
    return {f"test/{name}_{k}": float(v) for k, v in values.items()}
