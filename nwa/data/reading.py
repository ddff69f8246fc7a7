"""Reading the selected layers of zoo members, and turning them into each metanetwork's input."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from nwa.errors import LayerNotFoundError
from nwa.weights.spec import GraphShapes, ZooSpec, check_finite, select_layers, to_matrix
from nwa.zoo.manifest import Zoo

if TYPE_CHECKING:
    from nwa.weights.graph import GraphPlan

INPUTS = ("matrix", "flat", "stats", "spectral", "graph", "chain")
BATCHED_INPUTS = ("matrix", "flat")
"""Inputs whose batches models are read straight into (see :class:`BatchLayout`)."""


def bias_name(weight: str) -> str | None:
    """``x.weight`` -> ``x.bias``; names not ending in ``weight`` have no bias partner."""
    return weight[: -len("weight")] + "bias" if weight.endswith("weight") else None


LAYER_KEYWORDS = ("largest", "matrices")
"""Layer selector items chosen by shape: the largest tensor of two or more dimensions (the
deepest of equals), or every such tensor, in module order."""


def _items(selector: Any) -> list[Any]:
    return [selector] if isinstance(selector, str | int) else list(selector)


def expand_keywords(
    selector: Any, shapes: Mapping[str, Sequence[int]], path: str | Path = "<zoo>"
) -> Any:
    """``selector`` with :data:`LAYER_KEYWORDS` replaced by the names they choose among
    ``shapes`` (name -> shape, in module order); other items are kept.

    Raises:
        LayerNotFoundError: A keyword where no tensor has two or more dimensions.
    """
    items = _items(selector)
    if not any(isinstance(i, str) and i in LAYER_KEYWORDS for i in items):
        return selector
    matrices = [n for n, shape in shapes.items() if len(shape) >= 2]
    if not matrices:
        raise LayerNotFoundError(
            path, f"layers {LAYER_KEYWORDS} need a tensor of two or more dimensions; none is"
        )
    size = {n: math.prod(shapes[n]) for n in matrices}
    largest = max(reversed(matrices), key=size.__getitem__)  # the deepest of equals
    out: list[Any] = []
    for item in items:
        out.extend({"largest": [largest], "matrices": matrices}.get(item, [item]))
    return out


def resolve_spec(
    zoo: Zoo, rows: pd.DataFrame, selector: str | int | Sequence[str | int], input: str
) -> tuple[ZooSpec, list[str]]:
    """Resolve the layer selector on the first model and check every model's header against it.

    Only headers are read. For ``chain`` and ``graph`` inputs the biases that pair with the selected
    weights are read too; the returned ``extra`` lists them.

    Raises:
        LayerNotFoundError: A selected layer is absent from some model (the message names its file).
        ShapeMismatchError: A layer's shape differs across models.
    """
    first = rows.iloc[0]
    with zoo.open_model(first) as src:
        available = src.names()
        layout = zoo.meta.layout.get(str(first["arch"]))
        if any(isinstance(s, int) or s in LAYER_KEYWORDS for s in _items(selector)):
            # index and keyword selections go by module order
            available = [n for n in layout if n in src] if layout else available
        shapes = {n: src.info(n).shape for n in available}
        selector = expand_keywords(selector, shapes, zoo.path_of(first))
        names = select_layers(available, selector, zoo.path_of(first))
        extra = []
        if input in ("chain", "graph"):
            extra = [b for b in map(bias_name, names) if b and b in src and b not in names]
        spec = ZooSpec.from_shapes({n: src.info(n).shape for n in names + extra})
    for _, row in rows.iloc[1:].iterrows():
        with zoo.open_model(row) as src:
            for layer in spec.layers:
                if layer.name not in src:
                    raise LayerNotFoundError(
                        zoo.path_of(row),
                        f"layer {layer.name!r} is missing from this model (model {row['id']})",
                        tensor=layer.name,
                    )
                spec.check(layer.name, src.info(layer.name).shape, zoo.path_of(row))
    return spec, extra


@dataclass
class GraphSpecs:
    """The graph plan of every selected model (:mod:`nwa.weights.graph`): models of different
    architectures, depths and widths each get theirs; models with the same tensor names and
    shapes share one.

    Attributes:
        plans: The distinct plans.
        plan_index: Model id -> index into ``plans``.
        shapes: What graph encoders need to cover every plan.
    """

    plans: list[GraphPlan]
    plan_index: dict[str, int]
    shapes: GraphShapes

    def plan(self, row: Mapping[str, Any]) -> GraphPlan:
        return self.plans[self.plan_index[str(row["id"])]]

    def union_spec(self) -> ZooSpec:
        """Every tensor any plan reads, with the first shape seen."""
        shapes: dict[str, tuple[int, ...]] = {}
        for p in self.plans:
            for n, shp in p.tensor_shapes:
                shapes.setdefault(n, shp)
        return ZooSpec.from_shapes(shapes)


def resolve_graphs(
    zoo: Zoo,
    rows: pd.DataFrame,
    selector: str | int | Sequence[str | int],
    max_edges: int | None = None,
) -> GraphSpecs:
    """Each model's graph plan from its own header (no reference model): its selected tensors
    (plus the biases of selected weights), read as a ResNet, a ViT or a layer chain.

    Raises:
        LayerNotFoundError: The selector matches nothing in some model (the message names it).
        GraphBuildError: Some model's tensors do not form a graph (the message names its file
            and why).
    """
    from nwa.weights.graph import graph_shapes_of
    from nwa.weights.graph_archs import plan_graph

    plans: list[GraphPlan] = []
    seen: dict[tuple, int] = {}
    index: dict[str, int] = {}
    for row in rows.to_dict("records"):
        path = zoo.path_of(row)
        with zoo.open_model(row) as src:
            available = src.names()
            layout = zoo.meta.layout.get(str(row["arch"]))
            pool = [n for n in layout if n in src] if layout and _by_index(selector) else available
            chosen = set(select_layers(pool, selector, path))
            chosen |= {b for n in chosen if (b := bias_name(n)) and b in src}
            shapes = tuple((n, tuple(src.info(n).shape)) for n in available if n in chosen)
        if shapes not in seen:
            seen[shapes] = len(plans)
            plans.append(plan_graph(dict(shapes), str(path), available, max_edges=max_edges))
        index[str(row["id"])] = seen[shapes]
    return GraphSpecs(plans, index, graph_shapes_of(plans))


def _by_index(selector: str | int | Sequence[str | int]) -> bool:
    if isinstance(selector, int):
        return True
    return not isinstance(selector, str) and any(isinstance(s, int) for s in selector)


def read_layers(
    zoo: Zoo, row: Mapping[str, Any], names: Sequence[str], check: bool = True
) -> dict[str, torch.Tensor]:
    """Read only ``names`` from one model, as float32; raise on NaN/Inf when ``check``."""
    out = {}
    with zoo.open_model(row) as src:
        for n in names:
            t = src.get(n).float()
            if check:
                check_finite(t, zoo.path_of(row), n)
            out[n] = t
    return out


def read_layers_into(zoo: Zoo, row: Mapping[str, Any], out: Mapping[str, torch.Tensor]) -> None:
    """Read the tensors ``out`` names from one model into ``out``'s tensors (same shapes; values
    cast to their dtype). Unchecked: the caller checks a whole batch for NaN/Inf at once."""
    with zoo.open_model(row) as src:
        for n, t in out.items():
            src.read_into(n, t)


@dataclass
class Normalizer:
    """Per-layer scalar mean and std, estimated on training models only."""

    mean: dict[str, float]
    std: dict[str, float]

    @classmethod
    def fit(cls, samples: Sequence[dict[str, torch.Tensor]]) -> Normalizer:
        """Each tensor name's statistics over the samples that hold it (models of different
        architectures hold different tensors)."""
        mean, std = {}, {}
        names = dict.fromkeys(n for s in samples for n in s)
        for name in names:
            values = torch.cat([s[name].flatten() for s in samples if name in s])
            mean[name] = float(values.mean())
            std[name] = float(values.std()) if values.numel() > 1 else 1.0
            if not std[name] > 1e-12:
                std[name] = 1.0
        return cls(mean, std)

    @classmethod
    def identity(cls, names: Sequence[str]) -> Normalizer:
        return cls(dict.fromkeys(names, 0.0), dict.fromkeys(names, 1.0))

    def __call__(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self._identity(tensors):
            return tensors
        return {n: (t - self._mean(n)) / self._std(n) for n, t in tensors.items()}

    def apply_(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Normalise ``tensors`` in place (the same values :meth:`__call__` returns)."""
        if not self._identity(tensors):
            for n, t in tensors.items():
                t.sub_(self._mean(n)).div_(self._std(n))

    # a tensor no training model holds (an architecture or width seen only in evaluation)
    # keeps its own scale
    def _mean(self, name: str) -> float:
        return self.mean.get(name, 0.0)

    def _std(self, name: str) -> float:
        return self.std.get(name, 1.0)

    def _identity(self, names: Iterable[str]) -> bool:
        return all(self._mean(n) == 0.0 and self._std(n) == 1.0 for n in names)


def make_input(
    kind: str,
    tensors: dict[str, torch.Tensor],
    spec: ZooSpec,
    weights: Sequence[str],
    plan: GraphPlan | None = None,
    where: str = "<model>",
):
    """One model's tensors -> the input of one metanetwork family (see :data:`INPUTS`).

    ``matrix``: ``{name: [d_H, d_W]}``; ``flat``: ``[D]``; ``stats``: ``[7 * n_tensors]``;
    ``spectral``: ``[6 * n_tensors]`` (:func:`nwa.weights.spectral.spectral_features`);
    ``chain``: ``{"weights": [[out, in, k], ...], "biases": [[out], ...]}``; ``graph``: the
    model's :class:`~nwa.weights.graph.NeuralGraph` from its ``plan`` (without one, the chain of
    ``weights``).
    """
    if kind == "graph" and plan is not None:
        return plan.build(tensors, where)
    if kind == "matrix":
        return {n: to_matrix(tensors[n]) for n in weights}
    if kind == "flat":
        return torch.cat([tensors[n].flatten() for n in spec.names])
    if kind == "stats":
        from nwa.weights.stats import statnn_features

        return statnn_features([tensors[n] for n in spec.names])
    if kind == "spectral":
        from nwa.weights.spectral import spectral_features

        return spectral_features([tensors[n] for n in spec.names])
    from nwa.weights.chain import chain_from_tensors, chain_to_graph

    biases = [tensors.get(b) if (b := bias_name(n)) else None for n in weights]
    ws, bs = chain_from_tensors([tensors[n] for n in weights], biases, names=list(weights))
    if kind == "chain":
        return {"weights": ws, "biases": bs}
    return chain_to_graph(ws, bs)


class BatchLayout:
    """Where each model's tensors lie in one batch of the ``matrix`` or ``flat`` input.

    A batch is one block of float32 memory; each model is read straight into its slot, so a
    batch costs no per-model tensor and no stacking copy. The batch equals what :func:`collate`
    makes of the models' :func:`make_input` results.
    """

    _ALIGN = 16  # each layer's block starts on a 64-byte boundary

    def __init__(self, kind: str, spec: ZooSpec, weights: Sequence[str]) -> None:
        if kind not in BATCHED_INPUTS:
            raise ValueError(f"input {kind!r} is not built in place (only {BATCHED_INPUTS})")
        self.kind = kind
        names = list(weights) if kind == "matrix" else spec.names
        self.shapes = {n: spec[n].shape for n in names}
        self.numel = {n: spec[n].numel for n in names}
        self.matrix = {n: spec[n].matrix for n in names}

    def size(self, n: int) -> int:
        """Elements in a batch of ``n`` models (with alignment padding)."""
        if self.kind == "flat":
            return n * sum(self.numel.values())
        return sum(-(-n * k // self._ALIGN) * self._ALIGN for k in self.numel.values())

    def empty(
        self, n: int, alloc: Callable[[int], torch.Tensor] = torch.empty
    ) -> tuple[Any, list[dict[str, torch.Tensor]]]:
        """An uninitialised batch of ``n`` models in memory from ``alloc(numel)`` (1-D float32),
        and each model's slots: views in the stored shape of every tensor it is read into."""
        block = alloc(self.size(n))
        if self.kind == "flat":
            x = block.view(n, -1)
            slots = []
            for j in range(n):
                row, at, slot = x[j], 0, {}
                for name, k in self.numel.items():
                    slot[name] = row[at : at + k].view(self.shapes[name])
                    at += k
                slots.append(slot)
            return x, slots
        x, at = {}, 0
        for name, k in self.numel.items():
            x[name] = block[at : at + n * k].view(n, *self.matrix[name])
            at += -(-n * k // self._ALIGN) * self._ALIGN
        slots = [{name: x[name][j].view(self.shapes[name]) for name in x} for j in range(n)]
        return x, slots

    def item(self, x: Any, j: int) -> Any:
        """Model ``j``'s input inside batch ``x`` (a view, as :func:`make_input` would give it)."""
        return x[j] if self.kind == "flat" else {name: t[j] for name, t in x.items()}

    def layers(self, x: Any) -> dict[str, torch.Tensor]:
        """Each tensor's values for the whole batch ``x``, as views [n, ...], for passes that
        treat a batch at once (one operation per tensor, not one per model)."""
        if self.kind == "matrix":
            return dict(x)
        out, at = {}, 0
        for name, k in self.numel.items():
            out[name] = x[:, at : at + k]
            at += k
        return out


def check_finite_batch(
    layers: Mapping[str, torch.Tensor], path_of: Callable[[int], str | Path]
) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the model's file and the tensor if any model
    of a batch holds NaN or Inf; ``layers[name][j]`` is model ``j``'s tensor, in ``path_of(j)``.

    One reduction per tensor covers the whole batch; models are looked at one by one only when
    it is not finite.
    """
    for name, t in layers.items():
        if math.isfinite(t.sum().item()):
            continue
        for j in range(len(t)):
            check_finite(t[j], path_of(j), name)


class BatchMemory:
    """Float32 blocks for batches, each reused once no tensor of its last batch is left.

    A fresh batch-sized block costs the kernel a page fault and a zeroed page per 4 KiB, more than
    reading models into it; a training loop drops each batch soon, so its block is reused instead.
    A block is handed out only while nothing references the batch it held: the batch's tensors
    share one storage, made by ``torch.from_numpy`` from a view of the block that the storage
    alone holds, and the pool watches that view through a weak reference. At most ``keep`` blocks
    are kept (a loop holds one or two batches at a time); past that, blocks are not reused.
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._blocks: list[np.ndarray] = []
        self._users: list[weakref.ref | None] = []  # the view each block's last batch holds

    def __call__(self, numel: int) -> torch.Tensor:
        """An uninitialised 1-D float32 tensor of ``numel`` elements."""
        nbytes = numel * 4
        idle = [k for k, user in enumerate(self._users) if user is None or user() is None]
        fits = [k for k in idle if self._blocks[k].nbytes >= nbytes]
        if fits:
            k = min(fits, key=lambda k: self._blocks[k].nbytes)
        else:
            block = _aligned_bytes(nbytes)
            if len(self._blocks) < self.keep:
                k = len(self._blocks)
                self._blocks.append(block)
                self._users.append(None)
            elif idle:
                k = idle[0]  # replace a block too small for this batch
                self._blocks[k] = block
            else:
                return torch.from_numpy(block).view(torch.float32)  # not kept
        view = self._blocks[k][:nbytes]  # the batch's storage holds this view, and only it does
        self._users[k] = weakref.ref(view)
        return torch.from_numpy(view).view(torch.float32)

    def release(self) -> None:
        """Drop the kept blocks (batches still referenced keep theirs)."""
        self._blocks.clear()
        self._users.clear()

    def __reduce__(self) -> tuple:
        return (BatchMemory, (self.keep,))  # a copy (e.g. in a spawned worker) starts empty


def _aligned_bytes(nbytes: int, align: int = 64) -> np.ndarray:
    """``nbytes`` uninitialised bytes starting on an ``align`` boundary, as torch allocates.

    numpy asks the kernel for huge pages for large arrays, which makes fresh blocks cheaper.
    """
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + nbytes]


def collate(kind: str, items: list):
    """Stack the inputs of a batch of models."""
    if kind == "matrix":
        return {n: torch.stack([it[n] for it in items]) for n in items[0]}
    if kind in ("flat", "stats", "spectral"):
        return torch.stack(items)
    if kind == "chain":
        n = len(items[0]["weights"])
        return {
            "weights": [torch.stack([it["weights"][i] for it in items]) for i in range(n)],
            "biases": [torch.stack([it["biases"][i] for it in items]) for i in range(n)],
        }
    from torch_geometric.data import Batch

    return Batch.from_data_list(items)
