"""Data-free weight statistics: StatNN features and WeightWatcher-style spectral features.

Everything here is pure torch and works on one model (``statnn_features``, ``spectral_features``)
or on a batch of models sharing a layout (the ``*_batched`` variants, leading dim ``B``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from nwa.weights.spec import to_matrix

STAT_NAMES: tuple[str, ...] = ("mean", "std", "q0", "q25", "q50", "q75", "q100")
"""The 7 StatNN features of one tensor, in order."""

SPECTRAL_NAMES: tuple[str, ...] = (
    "alpha",
    "alpha_weighted",
    "log_spectral_norm",
    "log_frobenius_norm",
    "stable_rank",
)
"""The WeightWatcher-style features of one 2-D layer, in order."""

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


def powerlaw_alpha(
    evals: torch.Tensor, min_tail: int = 5, max_candidates: int = 256
) -> tuple[float, float, float]:
    """Power-law exponent of the tail of an empirical spectral density, by maximum likelihood.

    For a candidate lower cut-off ``x_min`` the continuous MLE over the ``m`` eigenvalues
    ``lambda_i >= x_min`` is ``alpha = 1 + m / sum_i log(lambda_i / x_min)``. As in Clauset,
    Shalizi and Newman (2009), ``x_min`` is the candidate whose fit has the smallest
    Kolmogorov-Smirnov distance to the tail's empirical CDF. Simplified against WeightWatcher:
    the candidates are the eigenvalues themselves (at most ``max_candidates`` of them, evenly
    spaced in rank) leaving at least ``min_tail`` points in the tail; no ``fix_fingers``, no
    truncated power law, no bound on ``alpha``. Zero eigenvalues (rank deficiency) are dropped.

    Args:
        evals: Eigenvalues [n], any order.
        min_tail: Fewest tail points a fit may use.
        max_candidates: Most ``x_min`` candidates scanned.

    Returns:
        ``(alpha, x_min, ks_distance)``; NaNs when fewer than ``min_tail`` positive eigenvalues.
    """
    ev = evals.detach().to(torch.float64).flatten().sort().values
    ev = ev[ev > ev[-1].clamp_min(0) * 1e-12] if ev.numel() else ev
    n = ev.numel()
    if n < max(min_tail, 2):
        return math.nan, math.nan, math.nan
    last = n - max(min_tail, 2)
    cand = torch.linspace(0, last, min(max_candidates, last + 1), dtype=torch.float64)
    cand = cand.round().long().unique()
    xmin = ev[cand]  # [C]
    j = torch.arange(n)
    valid = j[None, :] >= cand[:, None]  # [C, n]
    logs = torch.where(
        valid, torch.log(ev[None, :] / xmin[:, None]), torch.zeros((), dtype=ev.dtype)
    )
    m = (n - cand).to(torch.float64)
    s = logs.sum(dim=1)
    alpha = 1.0 + m / s.clamp_min(1e-300)
    fit = 1.0 - torch.exp((1.0 - alpha[:, None]) * logs)  # model CDF at each tail point
    rank = (j[None, :] - cand[:, None]).to(torch.float64)
    gap = torch.maximum((fit - (rank + 1) / m[:, None]).abs(), (fit - rank / m[:, None]).abs())
    ks = torch.where(valid, gap, torch.zeros((), dtype=ev.dtype)).amax(dim=1)
    ks = torch.where(s > 0, ks, torch.full_like(ks, math.inf))
    best = int(ks.argmin())
    if not math.isfinite(float(ks[best])):
        return math.nan, math.nan, math.nan
    return float(alpha[best]), float(xmin[best]), float(ks[best])


def spectral_features_batched(weights: torch.Tensor, min_tail: int = 5) -> torch.Tensor:
    """WeightWatcher-style spectral features of one layer across a batch of models.

    Each weight is viewed as a 2-D matrix ``W`` [d_H, d_W] (conv kernels reshaped
    out x in*kh*kw, as :func:`nwa.weights.spec.to_matrix`; WeightWatcher instead splits conv
    kernels into kh*kw slices). With ``lambda_i = sigma_i(W)^2`` the eigenvalues of ``W^T W``:

    - ``alpha``: power-law exponent of the spectral tail (:func:`powerlaw_alpha`);
    - ``alpha_weighted = alpha * log10(lambda_max)``;
    - ``log_spectral_norm = log10(lambda_max)`` (WeightWatcher's "spectral norm" is lambda_max);
    - ``log_frobenius_norm = log10(||W||_F)``;
    - ``stable_rank = ||W||_F^2 / lambda_max``.

    Singular values come from :func:`torch.linalg.svdvals` in float64. Reading: alpha < 2 is
    taken as over-trained, alpha > 6 as under-trained (WeightWatcher's heuristic).

    Args:
        weights: [B, d_H, ...] with at least 2 dims after the batch dim.
        min_tail: Passed to :func:`powerlaw_alpha`.

    Returns:
        Float32 tensor [B, 5], columns :data:`SPECTRAL_NAMES`.
    """
    if weights.dim() < 3:
        raise ValueError(
            f"spectral features need a [B, d_H, d_W, ...] batch of matrices, got shape {list(weights.shape)} "
            "(1-D tensors such as biases have no spectrum)"
        )
    w = weights.detach().reshape(weights.shape[0], weights.shape[1], -1).to(torch.float64)
    sv = torch.linalg.svdvals(w)  # [B, min(d_H, d_W)], descending
    lam = sv**2
    lam_max = lam[:, 0].clamp_min(1e-300)
    frob2 = lam.sum(dim=1)
    rows = []
    for b in range(w.shape[0]):
        alpha, _, _ = powerlaw_alpha(lam[b], min_tail=min_tail)
        rows.append(alpha)
    alpha = torch.tensor(rows, dtype=torch.float64)
    log_lmax = torch.log10(lam_max)
    feats = torch.stack(
        [
            alpha,
            alpha * log_lmax,
            log_lmax,
            0.5 * torch.log10(frob2.clamp_min(1e-300)),
            frob2 / lam_max,
        ],
        dim=1,
    )
    return feats.to(torch.float32)


def spectral_features(weight: torch.Tensor, min_tail: int = 5) -> torch.Tensor:
    """Spectral features [5] of one layer's weight (>= 2-D); see :func:`spectral_features_batched`."""
    if weight.dim() < 2:
        raise ValueError(
            f"spectral features need a matrix, got a tensor of shape {list(weight.shape)}"
        )
    return spectral_features_batched(to_matrix(weight).unsqueeze(0), min_tail=min_tail)[0]


def spectral_table(
    layers: Mapping[str, torch.Tensor], min_tail: int = 5
) -> tuple[torch.Tensor, list[str]]:
    """Spectral features of every given layer of one model, concatenated, with their names.

    No layer is skipped silently: a 1-D tensor raises ``ValueError`` naming it.

    Returns:
        ``(features [5 * len(layers)], names "<layer>/<feature>")``.
    """
    feats, names = [], []
    for name, w in layers.items():
        if w.dim() < 2:
            raise ValueError(
                f"tensor {name!r} of shape {list(w.shape)} has no spectrum; select 2-D+ weights only"
            )
        feats.append(spectral_features(w, min_tail=min_tail))
        names.extend(f"{name}/{s}" for s in SPECTRAL_NAMES)
    return torch.cat(feats), names
