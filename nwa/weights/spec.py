"""Layer selection, 2-D views of tensors, and the frozen shape spec of a zoo's chosen layers."""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from nwa.errors import LayerNotFoundError, NonFiniteWeightsError, ShapeMismatchError

LayerSelector = str | int | Sequence[str | int]


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The 2-D shape :func:`to_matrix` gives a tensor of ``shape``."""
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (int(shape[0]), 1)
    rest = 1
    for s in shape[1:]:
        rest *= int(s)
    return (int(shape[0]), rest)


def to_matrix(t: torch.Tensor) -> torch.Tensor:
    """A weight tensor as a 2-D matrix [d_H, d_W] (out x in).

    Conv kernels [out, in, kh, kw] become [out, in*kh*kw] (output channels first); 1-D tensors
    (biases, norms) become one column [n, 1]; scalars [1, 1].
    """
    return t.reshape(matrix_shape(t.shape))


def layer_kind(name: str, shape: Sequence[int]) -> str:
    """A coarse kind for a tensor: ``conv``, ``linear``, ``bias``, ``norm``, ``embedding`` or ``other``."""
    low = name.lower()
    if len(shape) >= 3:
        return "conv"
    if len(shape) == 1:
        if any(
            k in low for k in ("norm", "bn", "ln_", ".ln", "gamma", "beta")
        ) and not low.endswith("bias"):
            return "norm"
        return "bias"
    if len(shape) == 2:
        if "embed" in low or "pos" in low or "token" in low:
            return "embedding"
        return "linear"
    return "other"


def select_layers(
    available: Sequence[str], selector: LayerSelector, path: str | Path = "<zoo>"
) -> list[str]:
    """Resolve a layer selector against the names of a model, in layout order.

    Each selector item is one of: an exact name; a glob (``*``, ``?``, ``[``); a regex written
    ``re:PATTERN`` (full match); an integer index into ``available`` (negative counts from the end).

    Raises:
        LayerNotFoundError: An item matches nothing (the message lists close names).
    """
    items = [selector] if isinstance(selector, str | int) else list(selector)
    chosen: list[str] = []
    for item in items:
        if isinstance(item, int):
            if not -len(available) <= item < len(available):
                raise LayerNotFoundError(
                    path,
                    f"layer index {item} out of range: the layout has {len(available)} tensors",
                )
            found = [available[item]]
        elif item.startswith("re:"):
            try:
                rx = re.compile(item[3:])
            except re.error as e:
                raise LayerNotFoundError(
                    path, f"bad regex in layer selector {item!r}: {e}"
                ) from None
            found = [n for n in available if rx.fullmatch(n)]
        elif any(c in item for c in "*?["):
            found = [n for n in available if fnmatch.fnmatchcase(n, item)]
        else:
            found = [item] if item in available else []
        if not found:
            close = difflib.get_close_matches(str(item), list(available), n=3, cutoff=0.5)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise LayerNotFoundError(
                path, f"layer selector {item!r} matches no tensor{hint}", tensor=str(item)
            )
        chosen.extend(n for n in found if n not in chosen)
    return chosen


@dataclass(frozen=True)
class LayerSpec:
    """One selected tensor: its name, stored shape, 2-D shape and kind."""

    name: str
    shape: tuple[int, ...]
    kind: str

    @property
    def matrix(self) -> tuple[int, int]:
        return matrix_shape(self.shape)

    @property
    def numel(self) -> int:
        d_h, d_w = self.matrix
        return d_h * d_w


@dataclass(frozen=True)
class ZooSpec:
    """The shapes of the selected layers, identical for every model of a zoo.

    Built once from a reference model; :meth:`check` validates each other model against it.
    """

    layers: tuple[LayerSpec, ...]

    @classmethod
    def from_shapes(cls, shapes: dict[str, Sequence[int]]) -> ZooSpec:
        return cls(
            tuple(
                LayerSpec(n, tuple(int(s) for s in shp), layer_kind(n, shp))
                for n, shp in shapes.items()
            )
        )

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def flat_dim(self) -> int:
        return sum(layer.numel for layer in self.layers)

    def __getitem__(self, name: str) -> LayerSpec:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def check(self, name: str, shape: Sequence[int], path: str | Path) -> None:
        """Raise :class:`ShapeMismatchError` if ``shape`` differs from the spec's for ``name``."""
        want = self[name].shape
        if tuple(shape) != want:
            raise ShapeMismatchError(
                path, f"shape {list(shape)} differs from the zoo's {list(want)}", tensor=name
            )


def check_finite(t: torch.Tensor, path: str | Path, name: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the file and tensor if ``t`` has NaN or Inf."""
    # A finite sum implies finite values; the elementwise test runs only when it is not.
    if t.is_floating_point() and not math.isfinite(t.sum().item()) and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise NonFiniteWeightsError(
            path, f"{bad} of {t.numel()} values are NaN or Inf", tensor=name
        )


def from_shapes(value: object, field: str) -> object:
    """``value.<field>`` when ``value`` is a :class:`WeightShapes`, else ``value`` itself.

    Encoders take their first argument either explicitly or as the data's ``WeightShapes``, so a
    config names the encoder and the data supplies its shapes.
    """
    return getattr(value, field) if isinstance(value, WeightShapes) else value


@dataclass(frozen=True)
class GraphShapes:
    """What a graph encoder needs to know of the neural graphs it will see (:mod:`nwa.weights.graph`).

    Attributes:
        node_dim: Width of the node features.
        edge_dim: Largest kernel vector ``k`` of any edge.
        depth: Largest node ``layer`` (a group's depth).
        outputs: Largest number of output neurons.
    """

    node_dim: int
    edge_dim: int = 1
    depth: int = 1
    outputs: int = 0


@dataclass(frozen=True)
class WeightShapes:
    """Every shape a metanetwork may need, derived from the data (never typed into a config).

    Attributes:
        layers: 2-D shape (d_H, d_W) of each selected layer (``matrix`` input).
        flat_dim: Length of the flattened selected weights (``flat`` input).
        stats_dim: Number of features of the ``stats`` (StatNN) or ``spectral`` input.
        chain: (out, in, kernel) of each layer of the ``chain`` input.
        graph: What graph encoders need of the ``graph`` input
            (:class:`GraphShapes`).
    """

    layers: dict[str, tuple[int, int]]
    flat_dim: int = 0
    stats_dim: int = 0
    chain: tuple[tuple[int, int, int], ...] = ()
    graph: GraphShapes | None = None
