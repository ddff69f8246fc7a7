"""Look inside one model's weights: its tensor listing, and statistics of chosen layers.

The listing comes from the file's header (or the checkpoint's tensor metadata) alone; only the
layers asked for with :func:`layer_report` are read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nwa.errors import UnsupportedWeightsError
from nwa.weights.io import LoraDelta, TensorInfo, WeightSource
from nwa.weights.spec import LayerSelector, select_layers, to_matrix

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Listing:
    """What a model holds, known without reading tensor data.

    Attributes:
        tensors: Every tensor's info, in layout order (LoRA deltas when ``lora`` is true).
        stored_params: Number of values stored in the file (for LoRA, the factors').
        lora: Whether ``tensors`` are the dense deltas ``B @ A`` of LoRA layers.
        metadata: The file's free-form string metadata.
    """

    tensors: list[TensorInfo]
    stored_params: int
    lora: bool
    metadata: dict[str, str]

    @property
    def params(self) -> int:
        """Number of values in ``tensors`` (equals ``stored_params`` unless LoRA)."""
        return sum(t.numel for t in self.tensors)


def list_tensors(source: WeightSource) -> Listing:
    """List a model's tensors from its header; no tensor data is read."""
    tensors = list(source.infos().values())
    stored = source.base if isinstance(source, LoraDelta) else source
    stored_params = sum(t.numel for t in stored.infos().values())
    return Listing(tensors, stored_params, isinstance(source, LoraDelta), source.metadata())


def tensor_stats(t: torch.Tensor) -> dict[str, float]:
    """Summary statistics of a tensor's values.

    Mean, std (population), min, max, quantiles and the Frobenius norm are over the finite
    values, so one NaN does not hide the rest; ``nonfinite`` is the fraction of NaN or Inf.

    Returns:
        ``{"mean", "std", "min", "max", "q0", "q25", "q50", "q75", "q100", "fro_norm",
        "nonfinite"}``; all NaN (but ``nonfinite``) when no value is finite.
    """
    # float32 values (4 bytes each, whatever the stored dtype) with float64 sums: exact enough
    # for layers of millions of values without an 8-byte copy of a large layer.
    x = t.detach().reshape(-1).to(torch.float32)
    finite = torch.isfinite(x)
    n_finite = int(finite.sum())
    vals = x if n_finite == x.numel() else x[finite]
    out = {"nonfinite": 1.0 - n_finite / x.numel() if x.numel() else 0.0}
    keys = ("mean", "std", "min", "max", *(f"q{round(q * 100)}" for q in QUANTILES), "fro_norm")
    if n_finite == 0:
        return {k: math.nan for k in keys} | out
    mean = vals.sum(dtype=torch.float64) / n_finite
    sq = (vals - mean.float()).square().sum(dtype=torch.float64)
    # numpy's quantile partitions a copy; torch.quantile refuses inputs over 2**24 values.
    qs = np.quantile(vals.numpy(), QUANTILES)
    stats = {
        "mean": float(mean),
        "std": float((sq / n_finite).sqrt()),
        "min": float(vals.min()),
        "max": float(vals.max()),
    }
    stats |= {f"q{round(q * 100)}": float(v) for q, v in zip(QUANTILES, qs)}
    stats["fro_norm"] = float(vals.square().sum(dtype=torch.float64).sqrt())
    return stats | out


@dataclass(frozen=True)
class LayerReport:
    """One layer: its stored shape, its 2-D (out x in) shape and its value statistics."""

    name: str
    shape: tuple[int, ...]
    matrix: tuple[int, int]
    dtype: torch.dtype
    stats: dict[str, float]


def parse_selector(text: str) -> str | int:
    """A command-line layer selector: an integer index when it reads as one, else a name."""
    return int(text) if re.fullmatch(r"\s*-?\d+\s*", text) else text


def layer_report(source: WeightSource, selector: LayerSelector) -> list[LayerReport]:
    """Read the selected layers (and only those) and summarize each.

    Args:
        source: An open model.
        selector: Exact name, glob, ``re:`` regex or integer index, or a list of them.

    Raises:
        LayerNotFoundError: The selector matches no tensor, or a ``re:`` selector is not a valid
            regular expression.
    """
    names = select_layers(source.names(), selector, path=source.path)
    reports = []
    for name in names:
        t = source.get(name)
        m = to_matrix(t)
        try:
            stats = tensor_stats(m)
        except (RuntimeError, TypeError) as e:  # dtypes torch cannot widen (e.g. float4 pairs)
            first = (str(e).strip().splitlines() or [""])[0][:120]
            raise UnsupportedWeightsError(
                source.path, f"no statistics for dtype {dtype_name(t.dtype)} ({first})", name
            ) from None
        reports.append(LayerReport(name, tuple(t.shape), (m.shape[0], m.shape[1]), t.dtype, stats))
    return reports


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``float32``."""
    return str(dtype).removeprefix("torch.")


def format_shape(shape: Sequence[int]) -> str:
    """``(3, 4)`` -> ``[3, 4]``; the form used in error messages too."""
    return "[" + ", ".join(str(s) for s in shape) + "]"
