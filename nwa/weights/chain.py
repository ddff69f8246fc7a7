"""A chain of layers as tensors ``[out, in, k]`` and as a neural graph.

A *chain* is a sequence of conv or linear layers where layer ``l`` reads exactly the outputs of
layer ``l - 1`` (``in_l == out_{l-1}``; global pooling between conv and linear layers keeps the
channel count). The first layer's inputs and the last layer's outputs have a fixed order; every
hidden neuron (output of layers ``0 .. L-2``) may be permuted without changing the function. Its
graph (:mod:`nwa.weights.graph`) has the inputs, then each layer's outputs, as node groups.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
from torch_geometric.data import Batch

from nwa.errors import ShapeMismatchError
from nwa.weights.graph import (
    DENSE,
    EDGE_CONV,
    EDGE_LINEAR,
    F_BIAS,
    NODE_HIDDEN,
    NODE_INPUT,
    NODE_OUTPUT,
    Block,
    GraphPlan,
    Group,
    NeuralGraph,
    Ref,
)

_WHERE = "<chain>"


def chain_from_tensors(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None] | None = None,
    names: Sequence[str] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One model's layers as a chain: weights [out, in, k] and biases [out].

    Conv kernels [out, in, kh, kw] become [out, in, kh*kw]; linear weights [out, in] become
    [out, in, 1]; already-shaped [out, in, k] pass through. A missing bias becomes zeros.

    Args:
        weights: Weight tensors in forward order.
        biases: One bias (or ``None``) per weight; ``None`` for no biases at all.
        names: Layer names, used in error messages.

    Raises:
        ShapeMismatchError: A weight is not 2-D or more, a bias does not match its layer, or
            ``in_l != out_{l-1}``.
    """
    n = len(weights)
    biases = [None] * n if biases is None else list(biases)
    names = [f"layer {i}" for i in range(n)] if names is None else list(names)
    if n == 0:
        raise ShapeMismatchError(_WHERE, "a chain needs at least one layer")
    if len(biases) != n or len(names) != n:
        raise ShapeMismatchError(
            _WHERE, f"got {n} weights, {len(biases)} biases and {len(names)} names"
        )
    ws: list[torch.Tensor] = []
    bs: list[torch.Tensor] = []
    for i, (w, b, name) in enumerate(zip(weights, biases, names)):
        if w.dim() < 2:
            raise ShapeMismatchError(
                _WHERE,
                f"weight of shape {list(w.shape)} is not a layer (needs [out, in, ...])",
                tensor=name,
            )
        w3 = w.reshape(w.shape[0], w.shape[1], -1)
        if i > 0 and w3.shape[1] != ws[-1].shape[0]:
            raise ShapeMismatchError(
                _WHERE,
                f"layer {i} ({name}) takes {w3.shape[1]} inputs but layer {i - 1} ({names[i - 1]}) has "
                f"{ws[-1].shape[0]} outputs; a chain needs in_l == out_(l-1) (pool spatial dims "
                "before a linear layer instead of flattening them)",
                tensor=name,
            )
        if b is None:
            b = w3.new_zeros(w3.shape[0])
        elif b.numel() != w3.shape[0]:
            raise ShapeMismatchError(
                _WHERE,
                f"bias of shape {list(b.shape)} does not match {w3.shape[0]} outputs",
                tensor=name,
            )
        ws.append(w3)
        bs.append(b.reshape(-1).to(w3.dtype))
    return ws, bs


def chain_shapes(weights: Sequence[torch.Tensor]) -> list[tuple[int, int, int]]:
    """``(out, in, k)`` of each chain layer, from [out, in, k] or batched [B, out, in, k] weights."""
    return [tuple(int(s) for s in w.shape[-3:]) for w in weights]  # type: ignore[misc]


@functools.lru_cache(maxsize=64)
def chain_plan(shapes: tuple[tuple[int, int, int], ...]) -> GraphPlan:
    """The plan of a chain with these ``(out, in, k)`` layers; its tensors are named ``w{l}``
    ([out, in, k]) and ``b{l}`` ([out]). Inputs and the last layer's outputs are positional."""
    shapes = tuple(tuple(int(v) for v in s) for s in shapes)  # type: ignore[misc]
    n = len(shapes)
    groups = [Group("input", shapes[0][1], NODE_INPUT, positional=True)]
    blocks = []
    for li, (out, _, k) in enumerate(shapes):
        last = li == n - 1
        kind = NODE_OUTPUT if last else NODE_HIDDEN
        groups.append(Group(f"layer {li}", out, kind, last, ((F_BIAS, Ref(f"b{li}")),)))
        edge = EDGE_CONV if k > 1 else EDGE_LINEAR
        blocks.append(Block(li, li + 1, edge, DENSE, Ref(f"w{li}"), k))
    tensors = [(f"w{li}", s) for li, s in enumerate(shapes)]
    tensors += [(f"b{li}", (s[0],)) for li, s in enumerate(shapes)]
    return GraphPlan("chain", tuple(groups), tuple(blocks), tuple(tensors))


def chain_to_graph(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None] | None = None,
    names: Sequence[str] | None = None,
) -> NeuralGraph:
    """The neural graph of one chain (weights raw, [out, in, k] or [out, in, kh, kw])."""
    ws, bs = chain_from_tensors(weights, biases, names)
    plan = chain_plan(tuple(chain_shapes(ws)))
    tensors = {f"w{i}": w for i, w in enumerate(ws)} | {f"b{i}": b for i, b in enumerate(bs)}
    return plan.build(tensors)


def check_chain_batch(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> None:
    """Raise :class:`ShapeMismatchError` unless these are a batched chain ([B, out_l, in_l, k_l])."""
    if len(weights) != len(biases):
        raise ShapeMismatchError(_WHERE, f"got {len(weights)} weights and {len(biases)} biases")
    if not weights:
        raise ShapeMismatchError(_WHERE, "a chain needs at least one layer")
    for i, w in enumerate(weights):
        if w.dim() != 4:
            raise ShapeMismatchError(
                _WHERE,
                f"batched chain weight of shape {list(w.shape)} is not [B, out, in, k]",
                tensor=f"layer {i}",
            )
        if i > 0 and w.shape[2] != weights[i - 1].shape[1]:
            raise ShapeMismatchError(
                _WHERE,
                f"layer {i} takes {w.shape[2]} inputs but layer {i - 1} has {weights[i - 1].shape[1]} outputs",
                tensor=f"layer {i}",
            )


def chain_batch_to_graph(chain: Mapping[str, Sequence[torch.Tensor]]) -> Batch:
    """The graphs of a batch of same-shaped chains
    (``{"weights": [B, out_l, in_l, k_l] per layer, "biases": [B, out_l] per layer}``)."""
    weights, biases = list(chain["weights"]), list(chain["biases"])
    check_chain_batch(weights, biases)
    return Batch.from_data_list(
        [
            chain_to_graph([w[b] for w in weights], [v[b] for v in biases])
            for b in range(weights[0].shape[0])
        ]
    )
