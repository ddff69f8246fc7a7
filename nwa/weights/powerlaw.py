"""The power-law fit of an eigenvalue spectrum's tail, as WeightWatcher 0.7.7 fits it.

WeightWatcher's default fit (its own ``WWFit``, ``pl_package='ww'``): the eigenvalues above
``1e-5``, sorted; every one but the largest is a candidate ``x_min``; for each, the continuous
maximum-likelihood exponent ``alpha = 1 + n / sum_j log(lambda_j / x_min)`` over the ``n`` tail
eigenvalues and the one-sided Kolmogorov-Smirnov distance ``D`` between the tail's empirical CDF
``(j - i) / n`` and the fitted ``1 - (lambda_j / x_min)^(1 - alpha)``; the candidate with the
smallest ``D`` wins (the first on ties), and ``sigma = (alpha - 1) / sqrt(n)``. Under 20
eigenvalues its small-sample branch applies (see :func:`_fit_small`). The same minimum is found
here with far fewer distance evaluations (see :func:`_fit_standard`); numpy only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

EVALS_THRESH = 1e-5
"""Eigenvalues at or below this are left out of the fit (WeightWatcher's threshold)."""
SMALL_N = 20


def as_array(t: Any) -> np.ndarray:
    """A numpy float64 view or copy of an array or a (CPU or GPU, any float dtype) tensor."""
    if hasattr(t, "detach"):  # a torch tensor, converted without importing torch here
        t = t.detach().cpu()
        t = (t if t.dtype.itemsize >= 4 else t.float()).numpy()  # numpy lacks bfloat16
    return np.asarray(t, dtype=np.float64)


def _ks_distances(
    logd: np.ndarray, expo: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Largest gap between each candidate's fitted CDF and the tail's empirical CDF, over the
    given eigenvalue columns (all of a tail: the KS distance; a subset: a lower bound of it).

    The fitted CDF of candidate ``i`` at eigenvalue ``j >= i`` is ``1 - (x_j / x_i)^(1 -
    alpha_i)``, the empirical one ``(j - i) / (N - i)`` (WeightWatcher's one-sided form).

    Shapes:
        - rows: [R] candidate indices; cols: [C] eigenvalue indices
        - returns: [R]
    """
    n_all = logd.size
    steps = (cols[None, :] - rows[:, None]).astype(np.float64)
    gap = logd[cols][None, :] - logd[rows][:, None]
    gap *= expo[rows, None]
    with np.errstate(over="ignore"):  # columns below a candidate overflow; they are masked
        np.exp(gap, out=gap)
    gap -= 1.0  # -(fitted CDF)
    gap += steps / (n_all - rows)[:, None]
    np.abs(gap, out=gap)
    gap[steps < 0] = 0.0
    return gap.max(axis=1)


def _sample(n_all: int, size: int) -> np.ndarray:
    """About ``size`` eigenvalue indices: evenly spaced ones and the top ``size // 2``."""
    stride = max(1, -(-n_all // (size // 2)))
    top = np.arange(max(0, n_all - size // 2), n_all)
    return np.unique(np.concatenate([np.arange(0, n_all, stride), top]))


def _fit_standard(d: np.ndarray, chunk: int) -> tuple[float, float, float, float]:
    """WeightWatcher's ``fit_power_law_standard`` on sorted eigenvalues ``d`` (N >= 20): every
    candidate's alpha and KS distance, the smallest distance wins (first on ties).

    Exact, but few distances are computed in full. A lower bound of every candidate's distance
    from 64, then 512 sampled eigenvalues drops each candidate whose bound exceeds the exact
    distance of the best-bounded one; the rest are computed exactly in order of their bounds
    until the next bound exceeds the best distance found, which no unvisited candidate can then
    beat. WeightWatcher computes all N^2 / 2 terms."""
    n_all = d.size
    logd = np.log(d)
    tail_sums = np.cumsum(logd[::-1])[::-1][:-1]  # sum_{j >= i} log d_j, candidates i < N-1
    counts = np.arange(n_all, 1, -1, dtype=np.float64)  # tail sizes N - i
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + counts / (tail_sums - counts * logd[:-1])
    # exponent 1 - alpha, kept finite so a tail of equal values gives (x/x)^-inf = 1 as pow does
    expo = np.maximum(1.0 - alphas, -1e300)
    cand = np.flatnonzero(alphas > 1)
    invalid = np.flatnonzero(~(alphas > 1))  # each counts as distance 1
    best = (1.0, int(invalid[0])) if invalid.size else (math.inf, -1)

    def exact(rows: np.ndarray) -> None:
        nonlocal best
        dist = _ks_distances(logd, expo, rows, np.arange(int(rows.min()), n_all))
        best = min(best, *zip(dist.tolist(), rows.tolist()))

    def bounds(cols: np.ndarray) -> np.ndarray:
        step = max(1, chunk // cols.size)
        parts = [
            _ks_distances(logd, expo, cand[i : i + step], cols) for i in range(0, cand.size, step)
        ]
        return np.concatenate(parts) if parts else np.zeros(0)

    lb = np.zeros(0)
    for size in (64, 512):
        if not cand.size:
            break
        lb = bounds(_sample(n_all, size))
        exact(cand[np.argmin(lb)].reshape(1))
        keep = lb <= best[0]
        cand, lb = cand[keep], lb[keep]
    order = np.argsort(lb, kind="stable")
    cand, lb = cand[order], lb[order]
    for lo in range(0, cand.size, 16):
        if lb[lo] > best[0]:
            break
        exact(cand[lo : lo + 16])
    i = best[1]
    sigma = (alphas[i] - 1.0) / math.sqrt(n_all - i)
    return float(alphas[i]), float(d[i]), best[0], float(sigma)


def _fit_small(d: np.ndarray, k_min: int = 8) -> tuple[float, float, float, float]:
    """WeightWatcher's fit under 20 eigenvalues, as it ends up: ``fit_powerlaw_smallN`` computes
    bias-corrected alphas ``1 + (n - 1) / sum log(x / x_min)`` and KS distances for tails of at
    least ``k_min`` (its own objective's choice is then overridden by ``WWFit.__init__``, which
    takes the smallest distance, the others counting as 1); with no such tail, the whole ESD."""
    n_all = d.size
    if n_all < 2:
        return (math.nan,) * 4  # WeightWatcher: failed (no candidate)
    logd = np.log(d)
    alphas, ds = np.zeros(n_all - 1), np.ones(n_all - 1)

    def ks(i: int, alpha: float) -> float:
        n = n_all - i
        fit = 1.0 - (d[i:] / d[i]) ** (1.0 - alpha)
        return float(np.abs(np.arange(n) / n - fit).max())

    for i in range(n_all - 1):
        n = n_all - i
        s = logd[i:].sum() - n * logd[i]
        if n < k_min or s <= 1e-12:
            continue
        alphas[i] = 1.0 + (n - 1.0) / s
        if alphas[i] > 1.0:
            ds[i] = ks(i, alphas[i])
    if not (alphas > 1.0).any():
        s = logd.sum() - n_all * logd[0]
        if s <= 1e-12:
            return (math.nan,) * 4  # WeightWatcher reports alpha 0 for a flat spectrum
        alphas[0] = 1.0 + (n_all - 1.0) / s
        ds[0] = ks(0, alphas[0])
    best = int(np.argmin(ds))
    sigma = (alphas[best] - 1.0) / math.sqrt(n_all - best)
    return float(alphas[best]), float(d[best]), float(ds[best]), float(sigma)


def powerlaw_fit(evals: Any, chunk: int = 1 << 18) -> tuple[float, float, float, float]:
    """Power-law fit of an ESD's tail, as WeightWatcher 0.7.7 fits it (see the module docstring).

    Args:
        evals: Eigenvalues [n], any order (array or tensor).
        chunk: Elements of the candidates x eigenvalues work matrices computed at once (memory).

    Returns:
        ``(alpha, xmin, D, sigma)``; NaNs when fewer than two eigenvalues are above the
        threshold (WeightWatcher: a failed fit).
    """
    d = as_array(evals).ravel()
    d = np.sort(d[d > EVALS_THRESH])
    if d.size < SMALL_N:
        return _fit_small(d)
    return _fit_standard(d, chunk)
