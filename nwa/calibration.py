"""Split-conformal calibration: intervals around predicted properties with a coverage guarantee.

A run keeps, with each checkpoint, the absolute residuals ``|y - y_hat|`` of its validation
models for every property (and, for a tree router, each validation model's distance to its
nearest tree). For a new model the interval at coverage ``1 - a`` is ``y_hat +- q``, where ``q`` is
the ``ceil((n + 1)(1 - a))``-th smallest of the ``n`` validation residuals: if the new model is
exchangeable with the validation models, the interval holds its true value with probability at
least ``1 - a`` (Vovk et al. 2005; Lei et al. 2018, "Distribution-free predictive inference for
regression"). With too few validation models for the level asked, ``q`` is infinite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

KEY = "nwa_calibration"
"""The checkpoint entry holding the calibration record."""


def record(
    residuals: torch.Tensor | None,
    names: Sequence[str],
    step: int,
    epoch: int,
    distances: torch.Tensor | None = None,
) -> dict[str, Any]:
    """A calibration record in plain containers (``torch.load(weights_only=True)`` reads it).

    Args:
        residuals: ``|y - y_hat|`` of the validation models, [N, P] (``None``: no properties).
        names: The P property names.
        step: The global step the residuals belong to (a checkpoint stores them only if equal).
        epoch: The epoch they belong to.
        distances: Each validation model's distance to its nearest tree, [N'] (tree routers).
    """
    out: dict[str, Any] = {"split": "val", "step": int(step), "epoch": int(epoch)}
    if residuals is not None:
        res = residuals.detach().double().cpu()
        out["residuals"] = {n: sorted(res[:, j].tolist()) for j, n in enumerate(names)}
        out["n"] = int(res.shape[0])
    if distances is not None:
        out["tree_distances"] = sorted(distances.detach().double().cpu().tolist())
    return out


def conformal_quantile(scores: Sequence[float], coverage: float) -> float:
    """The ``ceil((n + 1) * coverage)``-th smallest score (``inf`` when that exceeds ``n``).

    Raises:
        ValueError: ``coverage`` outside (0, 1).
    """
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    values = sorted(float(s) for s in scores if math.isfinite(float(s)))
    k = math.ceil((len(values) + 1) * coverage)
    return values[k - 1] if 0 < k <= len(values) else math.inf


def half_widths(
    calibration: Mapping[str, Any], names: Sequence[str], coverage: float
) -> list[float]:
    """The interval half-width of each property at ``coverage`` (``nan`` if uncalibrated)."""
    residuals = calibration.get("residuals", {})
    return [
        conformal_quantile(residuals[n], coverage) if n in residuals else math.nan for n in names
    ]


def tree_threshold(calibration: Mapping[str, Any], coverage: float) -> float:
    """Distance beyond which a model belongs to none of the known trees: the conformal
    quantile of the validation models' distances at ``coverage`` (so about ``1 - coverage`` of
    models from known trees are flagged), or the largest one when there are too few to reach
    that level; ``inf`` without calibration."""
    scores = calibration.get("tree_distances") or []
    if not scores:
        return math.inf
    q = conformal_quantile(scores, coverage)
    return q if math.isfinite(q) else max(scores)


def coverage_of(y: torch.Tensor, pred: torch.Tensor, half: Sequence[float]) -> list[float]:
    """Fraction of models whose true value lies in ``pred +- half``, per property.

    Shapes:
        - y, pred: [N, P]
        - returns: P floats (``nan`` where no model has a known value)
    """
    out = []
    for j, q in enumerate(half):
        known = torch.isfinite(y[:, j])
        if not known.any():
            out.append(math.nan)
            continue
        inside = (y[known, j] - pred[known, j]).abs() <= q
        out.append(float(inside.double().mean()))
    return out
