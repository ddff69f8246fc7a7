"""WeightWatcher-compatible spectral diagnostics of weight matrices, data-free.

For each layer weight ``W`` the eigenvalues ``lambda_i`` of ``W^T W`` (the empirical spectral
density, ESD) are computed, and the heavy tail of the ESD is fitted with a power law
``p(lambda) ~ lambda^-alpha`` above a cut-off ``x_min``. The conventions are those of
WeightWatcher 0.7.7 (``ww.WeightWatcher(model).analyze()`` with its defaults), so the numbers can
be compared one to one (``benchmarks/diagnose_vs_weightwatcher.py`` does):

- which tensors: weights (names ending in ``weight``) with 2 dims (dense / embedding) or more
  (convolutions); every LoRA delta of a LoRA file; 1-D tensors (biases, norms) have no spectrum;
- convolutions ``[out, in, kh, kw]`` are sliced into one ``out x in`` matrix per kernel position
  (``rf = kh * kw`` of them), each multiplied by ``sqrt(1/2)`` (WeightWatcher's ``conv2d_norm``),
  and their eigenvalues pooled into one ESD; 3-D (and 5-D) kernels are sliced the same way;
- a layer is skipped when its ESD would hold fewer than ``min_evals`` (8) or more than
  ``max_evals`` (15,000) eigenvalues, or its largest side exceeds ``max_n`` (50,000), with
  WeightWatcher's ``N``/``M`` bookkeeping;
- the power-law fit is WeightWatcher's own (``WWFit``, its default): ``x_min`` by the
  Kolmogorov-Smirnov distance over every candidate (:mod:`nwa.weights.powerlaw`).

Metrics per layer: ``alpha``, ``alpha_weighted = alpha * log10(lambda_max)``,
``log_spectral_norm = log10(lambda_max)``, ``log_norm = log10(sum_i lambda_i)`` (the log of the
squared Frobenius norm; WeightWatcher's ``log_norm``), ``log_alpha_norm = log10(sum_i
lambda_i^alpha)``, ``stable_rank = sum_i lambda_i / lambda_max``, ``num_pl_spikes`` (eigenvalues
at or above ``x_min``), ``x_min``, ``D`` and ``sigma`` (the fit's standard error). WeightWatcher
reads ``alpha < 2`` as over-trained and ``alpha > 6`` as under-trained.

Differences by design: eigenvalues come from batched solvers (same-shape matrices of several
layers in one LAPACK call, a thread pool over batches) instead of one SciPy SVD per matrix; the
fit computes the same minimum with a fraction of the KS distances (see :mod:`nwa.weights.powerlaw`);
layers are read one batch at a time from the file (never the whole model); every skipped tensor
is reported with its reason. A failed fit gives NaN (WeightWatcher: -1).

The module is numpy only (torch tensors are accepted and converted), so a diagnosis of a
safetensors file (:mod:`nwa.weights.arrays`) never imports torch: its peak memory is the layers
being analyzed, not a deep-learning runtime.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from nwa.weights.powerlaw import as_array, powerlaw_fit

MIN_EVALS, MAX_EVALS, MAX_N = 8, 15_000, 50_000
CONV_NORM = math.sqrt(0.5)
SOLVERS = ("gram", "svd")

METRICS: tuple[str, ...] = (
    "alpha",
    "alpha_weighted",
    "log_spectral_norm",
    "log_norm",
    "log_alpha_norm",
    "stable_rank",
    "num_pl_spikes",
    "xmin",
    "D",
    "sigma",
    "lambda_max",
    "num_evals",
)
"""The per-layer numbers :func:`layer_metrics` returns, in order."""

FEATURES: tuple[str, ...] = (
    "alpha",
    "alpha_weighted",
    "log_spectral_norm",
    "log_norm",
    "stable_rank",
    "num_pl_spikes",
)
"""The per-layer features of the ``spectral`` metanetwork input."""


class ArraySource(Protocol):
    """What :func:`analyze` reads: a :class:`~nwa.weights.source.WeightSource` (torch) or an
    :class:`~nwa.weights.arrays.SafetensorsArrays` (numpy)."""

    def infos(self) -> Mapping[str, Any]:  # each value has a ``shape``
        ...

    def get(self, name: str) -> Any:  # an array or a tensor
        ...


@dataclass(frozen=True)
class LayerPlan:
    """How one tensor is analyzed, known from its shape alone.

    Attributes:
        name: Tensor name.
        shape: Stored shape.
        kind: ``dense``, ``conv1d``, ``conv2d`` or ``conv``.
        rf: Matrices per layer (kernel positions; 1 for dense layers).
        rows: Rows of each matrix after making it tall (``rows >= cols``).
        cols: Columns of each matrix (eigenvalues per matrix).
        n: WeightWatcher's ``N`` (its largest-side check).
        m: WeightWatcher's ``M`` (``M * rf`` is its eigenvalue-count check).
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    rf: int
    rows: int
    cols: int
    n: int
    m: int

    @property
    def numel(self) -> int:
        return self.rf * self.rows * self.cols


def plan_layer(
    name: str,
    shape: Sequence[int],
    any_name: bool = False,
    min_evals: int = MIN_EVALS,
    max_evals: int = MAX_EVALS,
    max_n: int = MAX_N,
) -> LayerPlan | str:
    """The :class:`LayerPlan` of a tensor, or why it is skipped (one phrase).

    Args:
        name: Tensor name.
        shape: Its shape.
        any_name: Analyze it whatever its name (chosen explicitly, or a LoRA delta).
        min_evals: Fewest eigenvalues (``M * rf``) a layer needs.
        max_evals: Most eigenvalues (``M * rf``) a layer may have; 0: no limit.
        max_n: Largest ``N`` a layer may have.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        return f"{len(shape)}-D tensor (a bias or norm scale): no spectrum"
    if not any_name and not (name == "weight" or name.endswith(".weight")):
        return "not a layer weight (name does not end in '.weight')"
    if min(shape) == 0:
        return "empty tensor"
    out, inp = shape[0], shape[1]
    if len(shape) == 2:
        kind, rf, n, m = "dense", 1, max(shape), min(shape)
    else:
        rf = math.prod(shape[2:])
        kind = {3: "conv1d", 4: "conv2d"}.get(len(shape), "conv")
        # WeightWatcher's N/M bookkeeping for sliced kernels: with the channels first
        # (out + in >= kernel size) N and M swap once per slice whose matrix is wide.
        n, m = out, inp
        if out + inp >= sum(shape[2:]) and out < inp and rf % 2 == 1:
            n, m = inp, out
    if min_evals and m * rf < min_evals:
        return f"{m * rf} eigenvalues, fewer than min_evals={min_evals}"
    if max_evals and m * rf > max_evals:
        return f"{m * rf} eigenvalues, more than max_evals={max_evals}"
    if n > max_n:
        return f"largest side {n} exceeds max_n={max_n}"
    return LayerPlan(name, shape, kind, rf, max(out, inp), min(out, inp), n, m)


def layer_matrices(plan: LayerPlan, t: Any) -> np.ndarray:
    """The tall matrices of one layer, scaled as WeightWatcher scales them.

    Shapes:
        - t: ``plan.shape`` (array or tensor)
        - returns: [rf, rows, cols], float64
    """
    w = as_array(t)
    if plan.kind == "dense":
        w = w if w.shape[0] >= w.shape[1] else w.T
        return w[None]
    w = w.reshape(plan.shape[0], plan.shape[1], plan.rf).transpose(
        2, 0, 1
    )  # kernel positions first
    if plan.shape[0] < plan.shape[1]:
        w = w.transpose(0, 2, 1)
    return w * CONV_NORM


def eigenvalues(mats: np.ndarray, solver: str = "gram") -> np.ndarray:
    """Eigenvalues of ``W^T W`` for a batch of tall matrices, ascending.

    ``gram`` forms the small Gram matrix ``W^T W`` (cols x cols) and calls ``eigvalsh``;
    ``svd`` squares the singular values of ``W``. Both run in float64 (LAPACK, one call for the
    batch), whose rounding (about ``1e-16 * lambda_max``) is far below the ``1e-5`` fit
    threshold; ``gram`` is several times faster on tall matrices.

    Shapes:
        - mats: [B, rows, cols] with rows >= cols
        - returns: [B, cols]
    """
    if solver == "svd":
        return np.square(np.linalg.svd(mats, compute_uv=False))[:, ::-1]
    if solver != "gram":
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    gram = np.matmul(mats.transpose(0, 2, 1), mats)
    return np.maximum(np.linalg.eigvalsh(gram), 0.0)


def layer_metrics(evals: Any) -> dict[str, float]:
    """Every metric of :data:`METRICS` from one layer's eigenvalues (any order)."""
    ev = as_array(evals).ravel()
    alpha, xmin, ks, sigma = powerlaw_fit(ev)
    norm, lam_max = float(ev.sum()), float(ev.max())
    log_lmax = math.log10(lam_max) if lam_max > 0 else -math.inf
    fitted = math.isfinite(alpha)
    return {
        "alpha": alpha,
        "alpha_weighted": alpha * log_lmax,
        "log_spectral_norm": log_lmax,
        "log_norm": math.log10(norm) if norm > 0 else -math.inf,
        "log_alpha_norm": math.log10(float((ev**alpha).sum())) if fitted else math.nan,
        "stable_rank": norm / lam_max if lam_max > 0 else math.nan,
        "num_pl_spikes": int((ev >= xmin).sum()) if fitted else -1,
        "xmin": xmin,
        "D": ks,
        "sigma": sigma,
        "lambda_max": lam_max,
        "num_evals": int(ev.size),
    }


def verdict(alpha: float) -> str:
    """WeightWatcher's reading of alpha: ``over-trained`` below 2, ``under-trained`` above 6."""
    if not math.isfinite(alpha):
        return "fit failed"
    return "over-trained" if alpha < 2.0 else "under-trained" if alpha > 6.0 else ""


@dataclass
class LayerResult:
    """One analyzed layer: its plan, metrics and (when kept) eigenvalues."""

    plan: LayerPlan
    metrics: dict[str, float]
    evals: np.ndarray | None = None


@dataclass
class Diagnosis:
    """A model's analyzed layers (in layout order) and skipped tensors with their reasons."""

    layers: list[LayerResult] = field(default_factory=list)
    skipped: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Means over the layers whose fit succeeded, and counts (WeightWatcher's summary)."""
        ok = [r.metrics for r in self.layers if math.isfinite(r.metrics["alpha"])]
        out: dict[str, float] = {"layers": len(self.layers), "skipped": len(self.skipped)}
        for key in ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank"):
            out[key] = sum(m[key] for m in ok) / len(ok) if ok else math.nan
        out["log_alpha_norm"] = sum(m["log_alpha_norm"] for m in ok) / len(ok) if ok else math.nan
        out["over_trained"] = sum(m["alpha"] < 2.0 for m in ok)
        out["under_trained"] = sum(m["alpha"] > 6.0 for m in ok)
        return out


def plan_model(
    source: ArraySource,
    select: Callable[[str], bool] | None = None,
    lora: bool = False,
    **limits: int,
) -> tuple[list[LayerPlan], list[tuple[str, tuple[int, ...], str]]]:
    """Plans of every analyzable tensor of a model (from its header alone), and the skipped ones.

    Args:
        source: The model.
        select: Only tensors it accepts, whatever their names; ``None``: every weight.
        lora: The source holds LoRA deltas (every tensor is a layer).
        **limits: ``min_evals``, ``max_evals``, ``max_n`` (see :func:`plan_layer`).
    """
    plans, skipped = [], []
    for name, info in source.infos().items():
        if select is not None and not select(name):
            continue
        plan = plan_layer(name, info.shape, any_name=lora or select is not None, **limits)
        if isinstance(plan, str):
            skipped.append((name, info.shape, plan))
        else:
            plans.append(plan)
    return plans, skipped


def batches(plans: Sequence[LayerPlan], max_numel: int | None = None) -> list[list[LayerPlan]]:
    """Layers grouped by matrix shape into batches of at most ``max_numel`` elements (default:
    the largest layer's), so a batch holds one layer's worth of memory at most, or one layer."""
    cap = max_numel or max((p.numel for p in plans), default=0)
    groups: dict[tuple[int, int], list[list[LayerPlan]]] = {}
    for plan in plans:
        runs = groups.setdefault((plan.rows, plan.cols), [[]])
        if runs[-1] and sum(p.numel for p in runs[-1]) + plan.numel > cap:
            runs.append([])
        runs[-1].append(plan)
    return [run for runs in groups.values() for run in runs]


def analyze_batch(
    source: ArraySource, batch: Sequence[LayerPlan], solver: str = "gram", keep_evals: bool = False
) -> list[LayerResult | tuple[str, tuple[int, ...], str]]:
    """Read the layers of one batch, compute their eigenvalues in one solver call, fit each.

    A layer holding NaN or Inf comes back as a skipped entry ``(name, shape, reason)``."""
    out: list[LayerResult | tuple[str, tuple[int, ...], str]] = []
    good, mats = [], []
    for plan in batch:
        m = layer_matrices(plan, source.get(plan.name))
        bad = int(m.size - np.isfinite(m).sum())
        if bad:
            out.append((plan.name, plan.shape, f"{bad} of {m.size} values are NaN or Inf"))
        else:
            good.append(plan)
            mats.append(m)
    if not good:
        return out
    evals = eigenvalues(np.concatenate(mats), solver)
    del mats
    at = 0
    for plan in good:
        ev = evals[at : at + plan.rf].ravel()
        at += plan.rf
        out.append(LayerResult(plan, layer_metrics(ev), ev.copy() if keep_evals else None))
    return out


def analyze(
    source: ArraySource,
    select: Callable[[str], bool] | None = None,
    lora: bool = False,
    solver: str = "gram",
    threads: int = 2,
    keep_evals: bool = False,
    max_batch_numel: int | None = None,
    **limits: int,
) -> Diagnosis:
    """Spectral diagnostics of every layer of one model, streamed batch by batch.

    Each batch (same-shape matrices of one or more layers, at most the largest layer's size) is
    read, solved and fitted by one of ``threads`` workers; each worker's BLAS/LAPACK calls run on
    one core, so ``threads`` batches proceed at once and at most ``threads`` batches are in
    memory.

    Args:
        source: The model (see :func:`nwa.weights.io.open_weights`).
        select: Only tensors it accepts, whatever their names; ``None``: every weight.
        lora: The source holds LoRA deltas (every tensor is a layer).
        solver: ``gram`` or ``svd`` (see :func:`eigenvalues`).
        threads: Worker threads.
        keep_evals: Keep each layer's eigenvalues (for plots).
        max_batch_numel: Cap of a batch in elements (default: the largest layer's).
        **limits: ``min_evals``, ``max_evals``, ``max_n`` (see :func:`plan_layer`).
    """
    plans, skipped = plan_model(source, select, lora, **limits)
    order = {p.name: i for i, p in enumerate(plans)}
    results: list[LayerResult] = []
    for part in _run(source, batches(plans, max_batch_numel), solver, threads, keep_evals):
        results.extend(r for r in part if isinstance(r, LayerResult))
        skipped.extend(r for r in part if not isinstance(r, LayerResult))
    results.sort(key=lambda r: order[r.plan.name])
    return Diagnosis(results, skipped)


def _run(
    source: ArraySource, work: list[list[LayerPlan]], solver: str, threads: int, keep: bool
) -> Iterator[list]:
    if threads <= 1 or len(work) <= 1:
        for batch in work:
            yield analyze_batch(source, batch, solver, keep)
        return
    from threadpoolctl import threadpool_limits

    # one core per worker: the workers are the parallelism (numpy releases the GIL in LAPACK)
    with threadpool_limits(1), ThreadPoolExecutor(threads) as pool:
        pending = []  # submitted lazily: at most `threads` batches are read and held at a time
        for batch in work:
            pending.append(pool.submit(analyze_batch, source, batch, solver, keep))
            if len(pending) >= threads:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def spectral_features(tensors: Sequence[Any]) -> Any:
    """The ``spectral`` metanetwork input of one model: :data:`FEATURES` of each tensor.

    Every tensor is analyzed whatever its size (no ``min_evals`` rule); a failed fit (fewer than
    two eigenvalues above the threshold) gives zeros for ``alpha`` and ``alpha_weighted``.

    Returns:
        Float32 torch tensor [len(FEATURES) * len(tensors)].
    """
    import torch

    feats = []
    for i, t in enumerate(tensors):
        plan = plan_layer(f"{i}", t.shape, any_name=True, min_evals=0, max_evals=0, max_n=1 << 62)
        if isinstance(plan, str):
            raise ValueError(f"tensor {i} of shape {list(t.shape)}: {plan}")
        m = layer_metrics(eigenvalues(layer_matrices(plan, t)))
        feats.extend(m[k] if math.isfinite(m[k]) else 0.0 for k in FEATURES)
    return torch.tensor(feats, dtype=torch.float32)


def feature_names(names: Sequence[str]) -> list[str]:
    """Column names ``"<tensor>/<feature>"`` matching :func:`spectral_features`."""
    return [f"{n}/{f}" for n in names for f in FEATURES]
