"""Data-free weight statistics: StatNN features (the spectral ones are in
:mod:`nwa.weights.spectral`).

Everything here is pure torch and works on one model (``statnn_features``) or on a batch of
models sharing a layout (``statnn_features_batched``, leading dim ``B``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

STAT_NAMES: tuple[str, ...] = ("mean", "std", "q0", "q25", "q50", "q75", "q100")
"""The 7 StatNN features of one tensor, in order."""

_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def _quantiles(sorted_x: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """Quantiles of each row of an ascending-sorted [B, n] tensor, with numpy's ``linear`` rule.

    Unlike :func:`torch.quantile` this has no input size limit.
    """
    n = sorted_x.shape[1]
    out = []
    for q in qs:
        pos = q * (n - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        out.append(sorted_x[:, lo] + frac * (sorted_x[:, hi] - sorted_x[:, lo]))
    return torch.stack(out, dim=1)


def statnn_features_batched(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """StatNN features (Unterthiner et al. 2020) of a batch of models.

    Per tensor: mean, std (population, ``ddof=0`` as ``numpy.std``), and the 0/25/50/75/100 %
    quantiles (numpy's ``linear`` interpolation), concatenated over tensors in the given order.

    Args:
        tensors: One tensor per layer (weights and biases alike), each [B, ...] with the model
            index first.

    Returns:
        Float32 tensor [B, 7 * len(tensors)]; names from :func:`statnn_feature_names`.
    """
    if len(tensors) == 0:
        raise ValueError("statnn_features needs at least one tensor")
    feats = []
    for t in tensors:
        x = t.detach().reshape(t.shape[0], -1).to(torch.float64)
        if x.shape[1] == 0:
            raise ValueError(
                f"cannot compute statistics of an empty tensor of shape {list(t.shape)}"
            )
        mean = x.mean(dim=1, keepdim=True)
        std = x.std(dim=1, unbiased=False, keepdim=True)
        q = _quantiles(x.sort(dim=1).values, _QUANTILES)
        feats.append(torch.cat([mean, std, q], dim=1))
    return torch.cat(feats, dim=1).to(torch.float32)


def statnn_features(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """StatNN features of one model: [7 * len(tensors)] (see :func:`statnn_features_batched`)."""
    return statnn_features_batched([t.unsqueeze(0) for t in tensors])[0]


def statnn_feature_names(names: Sequence[str]) -> list[str]:
    """Column names ``"<tensor>/<stat>"`` matching :func:`statnn_features` for these tensors."""
    return [f"{n}/{s}" for n in names for s in STAT_NAMES]
