"""A chain of layers as tensors ``[out, in, k]`` and as a neural graph (torch_geometric ``Data``).

A *chain* is a sequence of conv or linear layers where layer ``l`` reads exactly the outputs of
layer ``l - 1`` (``in_l == out_{l-1}``; global pooling between conv and linear layers keeps the
channel count). The first layer's inputs and the last layer's outputs have a fixed order; every
hidden neuron (output of layers ``0 .. L-2``) may be permuted without changing the function.

Graph layout of one model with ``L`` layers:

- nodes: the ``in_0`` input neurons, then the ``out_l`` output neurons of each layer ``l``
  (node group ``g = 0 .. L``; group ``g > 0`` holds the outputs of layer ``g - 1``);
- node features ``x`` [N, NODE_DIM]: ``[bias, is_input, is_hidden, is_output, pos(2F)]`` where
  bias is 0 for inputs and ``pos`` is a sinusoidal code of the neuron's index inside its group,
  given only to input and output neurons (zeros for hidden neurons, which keeps invariance);
- ``layer`` [N] long: the node group ``g``; ``node_kind`` [N] long: 0 input, 1 hidden, 2 output;
- edges: one per weight, source neuron ``i`` of group ``l`` to target ``j`` of group ``l + 1``,
  ``edge_attr`` [E, k_max] the kernel vector ``W_l[j, i, :]`` zero-padded to the largest ``k``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
from torch_geometric.data import Batch, Data

from nwa.errors import ShapeMismatchError

NODE_INPUT, NODE_HIDDEN, NODE_OUTPUT = 0, 1, 2
POS_FREQS = 4
NODE_DIM = 1 + 3 + 2 * POS_FREQS
"""Width of the node features ``x`` of every graph built here."""

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


def _position_code(index: torch.Tensor) -> torch.Tensor:
    """Sinusoidal code [n, 2F] of integer positions (transformer style)."""
    freqs = torch.exp(
        -torch.arange(POS_FREQS, dtype=torch.float32) * (torch.log(torch.tensor(1e4)) / POS_FREQS)
    )
    ang = index.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


@functools.lru_cache(maxsize=32)
def _template_cached(shapes: tuple[tuple[int, int, int], ...]) -> dict[str, torch.Tensor]:
    sizes = [shapes[0][1]] + [s[0] for s in shapes]
    n_groups = len(sizes)
    static, layer, kind = [], [], []
    for g, size in enumerate(sizes):
        k = NODE_INPUT if g == 0 else NODE_OUTPUT if g == n_groups - 1 else NODE_HIDDEN
        onehot = torch.zeros(size, 3)
        onehot[:, k] = 1.0
        pos = (
            _position_code(torch.arange(size))
            if k != NODE_HIDDEN
            else torch.zeros(size, 2 * POS_FREQS)
        )
        static.append(torch.cat([onehot, pos], dim=1))
        layer.append(torch.full((size,), g, dtype=torch.long))
        kind.append(torch.full((size,), k, dtype=torch.long))
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    edges = []
    for li, (out, inp, _) in enumerate(shapes):
        j, i = torch.meshgrid(torch.arange(out), torch.arange(inp), indexing="ij")
        edges.append(torch.stack([i.reshape(-1) + offsets[li], j.reshape(-1) + offsets[li + 1]]))
    t = {
        "static": torch.cat(static),
        "layer": torch.cat(layer),
        "node_kind": torch.cat(kind),
        "edge_index": torch.cat(edges, dim=1),
        "num_nodes": torch.tensor(offsets[-1]),
    }
    for v in t.values():  # shared by every call: never written to
        v.requires_grad_(False)
    return t


def chain_template(shapes: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """The model-independent part of the graph of a chain with these ``(out, in, k)`` shapes.

    ``static`` [N, NODE_DIM - 1] (node features without the bias), ``layer`` and ``node_kind``
    [N], ``edge_index`` [2, E] and ``num_nodes``. Cached per shapes: the tensors are shared, so
    treat them as read-only.
    """
    return _template_cached(tuple(tuple(int(v) for v in s) for s in shapes))


def batched_edge_index(
    template: dict[str, torch.Tensor], bsz: int, device: torch.device | str
) -> torch.Tensor:
    """[2, B * E]: the template's edges repeated for ``bsz`` graphs, graph ``b``'s nodes shifted
    by ``b * N``, in the order of torch-geometric's ``Batch`` of those graphs."""
    edges = template["edge_index"].to(device)
    shift = (torch.arange(bsz, device=device) * int(template["num_nodes"])).view(bsz, 1, 1)
    return (edges.unsqueeze(0) + shift).permute(1, 0, 2).reshape(2, bsz * edges.shape[1])


def _edge_attr(weights: Sequence[torch.Tensor], k_max: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, E, k_max]: each batched weight [B, out, in, k] as rows ``W[j, i, :]``, zero-padded."""
    bsz = weights[0].shape[0]
    total = sum(w.shape[1] * w.shape[2] for w in weights)
    padded = any(w.shape[3] != k_max for w in weights)
    out = (weights[0].new_zeros if padded else weights[0].new_empty)(bsz, total, k_max, dtype=dtype)
    e0 = 0
    for w in weights:
        _, o, i, k = w.shape
        out[:, e0 : e0 + o * i, :k].copy_(w.reshape(bsz, o * i, k))
        e0 += o * i
    return out


def chain_node_features(
    weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Node features ``x`` [B, N, NODE_DIM] of a batch of chains (weights [B, out, in, k])."""
    shapes = chain_shapes(weights)
    t = chain_template(shapes)
    bsz = weights[0].shape[0]
    dtype = weights[0].dtype if weights[0].is_floating_point() else torch.float32
    n = int(t["num_nodes"])
    x = weights[0].new_empty(bsz, n, NODE_DIM, dtype=dtype)
    x[:, : shapes[0][1], 0] = 0.0
    o = shapes[0][1]
    for b in biases:
        b = b.reshape(bsz, -1)
        x[:, o : o + b.shape[1], 0] = b
        o += b.shape[1]
    x[:, :, 1:] = t["static"].to(device=x.device, dtype=dtype)
    return x


def _build(
    weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]
) -> dict[str, torch.Tensor]:
    shapes = chain_shapes(weights)
    dev = weights[0].device
    t = chain_template(shapes)
    bsz = weights[0].shape[0]
    dtype = weights[0].dtype if weights[0].is_floating_point() else torch.float32
    n = int(t["num_nodes"])
    x = chain_node_features(weights, biases)
    k_max = max(s[2] for s in shapes)
    edge_attr = _edge_attr(weights, k_max, dtype)
    e = t["edge_index"].shape[1]
    return {
        "x": x.reshape(bsz * n, -1),
        "edge_index": batched_edge_index(t, bsz, dev),
        "edge_attr": edge_attr.reshape(bsz * e, k_max),
        "layer": t["layer"].to(dev).repeat(bsz),
        "node_kind": t["node_kind"].to(dev).repeat(bsz),
        "n": torch.tensor(n),
    }


def chain_to_graph(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None] | None = None,
    names: Sequence[str] | None = None,
) -> Data:
    """The neural graph of one model (layout in the module docstring).

    Args:
        weights: The chain's weights, raw ([out, in], [out, in, kh, kw]) or [out, in, k].
        biases: One bias or ``None`` per layer.
        names: Layer names for error messages.

    Returns:
        ``Data`` with ``x`` [N, NODE_DIM], ``edge_index`` [2, E], ``edge_attr`` [E, k_max],
        ``layer`` [N] and ``node_kind`` [N]; batch several with ``Batch.from_data_list``.
    """
    ws, bs = chain_from_tensors(weights, biases, names)
    g = _build([w.unsqueeze(0) for w in ws], [b.unsqueeze(0) for b in bs])
    return Data(
        x=g["x"],
        edge_index=g["edge_index"],
        edge_attr=g["edge_attr"],
        layer=g["layer"],
        node_kind=g["node_kind"],
        num_nodes=int(g["n"]),
    )


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
    """The graphs of a batch of same-shaped models at once, as one ``Batch``.

    Equal to ``Batch.from_data_list([chain_to_graph(...) for each model])``, built without a
    Python loop over models.

    Args:
        chain: ``{"weights": [B, out_l, in_l, k_l] per layer, "biases": [B, out_l] per layer}``.
    """
    weights, biases = list(chain["weights"]), list(chain["biases"])
    check_chain_batch(weights, biases)
    g = _build(weights, biases)
    bsz, n = weights[0].shape[0], int(g["n"])
    return Batch(
        x=g["x"],
        edge_index=g["edge_index"],
        edge_attr=g["edge_attr"],
        layer=g["layer"],
        node_kind=g["node_kind"],
        batch=torch.arange(bsz, device=g["x"].device).repeat_interleave(n),
        ptr=torch.arange(bsz + 1, device=g["x"].device) * n,
    )
