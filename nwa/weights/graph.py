"""Networks as neural graphs: neurons are nodes, weights are edges (torch_geometric ``Data``).

A network is read in two steps. A :class:`GraphPlan` is made from tensor names and shapes alone
(:func:`nwa.weights.graph_archs.plan_graph` reads timm ResNets and VisionTransformers and plain
MLP/CNN chains; :func:`chain_plan` a chain of layers): it lists the *node groups* (the output
neurons of one layer, a residual sum, the input channels) and the *blocks* of edges between
them. :meth:`GraphPlan.build` then fills a :class:`NeuralGraph` from the tensor values.

Nodes (one per neuron; the nodes of a group are consecutive, in the tensor's order):

- ``x`` [N, NODE_DIM]: ``[bias, has_norm, norm weight, norm bias, norm mean, norm var,
  extra x3, pos(2F)]``. ``bias`` is the bias of the layer writing the neuron; the norm slots hold
  the normalization that reads it (BatchNorm: weight, bias, running mean and variance;
  LayerNorm: weight and bias); the extra slots hold per-channel vectors such as a ViT's class
  token and the mean and std over tokens of its position embedding. ``pos`` is a sinusoidal code
  of the neuron's index, given only to groups whose order is fixed (the network's inputs and
  outputs), so every hidden permutation symmetry stays a graph automorphism.
- ``layer`` [N]: the group's depth (longest path from an input group); ``node_kind`` [N]: one of
  ``NODE_INPUT``, ``NODE_HIDDEN``, ``NODE_OUTPUT``, ``NODE_SUM`` (a residual sum),
  ``NODE_HEAD`` (an attention head); ``node_group`` [N]: the group's index.

Edges, held block by block rather than as one edge list (a dense block is a layer's weight):

- *dense* blocks join every source neuron ``i`` to every target neuron ``j``; edge ``(i, j)``
  carries the kernel vector ``W[j, i, :]`` (a conv kernel flattened to ``kh * kw`` values, one
  value for a linear layer, ``s`` values for a linear layer reading ``s`` flattened positions of
  each channel). Each block's ``[rows, cols, k]`` values lie in ``w`` at ``block_offset``; its
  source and target groups start at nodes ``block_src_index`` and ``block_dst_index``;
- *sparse* blocks (identity residual connections, query-key pairs, head membership) are an
  explicit edge list ``sparse_edge_index`` [2, Es] with value ``sparse_attr`` [Es, 1] (1.0);
- every edge has a kind (``block_kind``, ``sparse_kind``): ``EDGE_LINEAR``, ``EDGE_CONV``,
  ``EDGE_FLATTEN``, ``EDGE_RESIDUAL``, ``EDGE_QK``, ``EDGE_HEAD``.

Graphs of different networks batch with ``torch_geometric.data.Batch.from_data_list``: node,
group and weight offsets are shifted per graph. :func:`dense_groups` and :func:`edge_list` give
the two views encoders compute on (same-shaped blocks stacked, or one edge list).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch_geometric.data import Batch, Data

from nwa.errors import GraphBuildError, ShapeMismatchError
from nwa.weights.spec import GraphShapes

NODE_INPUT, NODE_HIDDEN, NODE_OUTPUT, NODE_SUM, NODE_HEAD = range(5)
NODE_KINDS = 5
EDGE_LINEAR, EDGE_CONV, EDGE_FLATTEN, EDGE_RESIDUAL, EDGE_QK, EDGE_HEAD = range(6)
EDGE_KINDS = 6
DENSE, DIAG, MEMBER = "dense", "diag", "member"

F_BIAS, F_HAS_NORM, F_NORM_W, F_NORM_B, F_NORM_MEAN, F_NORM_VAR, F_EXTRA = range(7)
N_EXTRA = 3
POS_FREQS = 4
F_POS = F_EXTRA + N_EXTRA
NODE_DIM = F_POS + 2 * POS_FREQS
"""Width of the node features ``x`` of every graph built here."""

_WHERE = "<chain>"


@dataclass(frozen=True)
class Ref:
    """Where a per-neuron vector or a weight block lies in a model's tensors.

    Args:
        name: Tensor name.
        start: First row (output neuron) taken, for tensors holding several groups (``qkv``).
        stop: Row after the last one taken (``None``: to the end).
        reduce: ``tokens_mean`` / ``tokens_std``: per-channel mean / std over the token axis of a
            ``[..., tokens, channels]`` tensor (a position embedding); ``None`` takes the values.
    """

    name: str
    start: int = 0
    stop: int | None = None
    reduce: str | None = None

    def vector(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The per-neuron values [n] (channels last for tensors with leading unit dims)."""
        t = tensors[self.name]
        if self.reduce is not None:
            t = t.reshape(-1, t.shape[-1])
            t = t.mean(0) if self.reduce == "tokens_mean" else t.std(0, correction=0)
        else:
            t = t.reshape(-1)
        return t[self.start : self.stop]

    def block(self, tensors: Mapping[str, torch.Tensor], cols: int) -> torch.Tensor:
        """The weight block [rows, cols, k] (kernels and flattened positions as ``k``)."""
        t = tensors[self.name][self.start : self.stop]
        return t.reshape(t.shape[0], cols, -1)


@dataclass(frozen=True)
class Group:
    """A set of neurons: one node each.

    Args:
        name: Where it is in the network (``layer1.0.conv1``, ``blocks.0.attn.q``).
        size: Number of neurons.
        kind: ``NODE_*``.
        positional: Whether its order is fixed (inputs, outputs): its nodes get positions.
        features: ``(slot, Ref)`` per filled node-feature slot.
        chunk: Neurons may only be permuted inside consecutive chunks of this size (the
            channels of one attention head); ``None``: any permutation.
    """

    name: str
    size: int
    kind: int
    positional: bool = False
    features: tuple[tuple[int, Ref], ...] = ()
    chunk: int | None = None


@dataclass(frozen=True)
class Block:
    """Edges from group ``src`` to group ``dst``.

    ``dense``: every pair, values ``weight.block(...)`` [dst size, src size, k]; ``diag``: neuron
    ``i`` to neuron ``i`` (equal sizes); ``member``: source ``i`` to target ``i // m`` where
    ``m = src size / dst size`` (channels to their attention head).
    """

    src: int
    dst: int
    kind: int
    pattern: str = DENSE
    weight: Ref | None = None
    k: int = 1


@dataclass(frozen=True)
class GraphPlan:
    """The node groups and edge blocks of one network, from names and shapes only.

    Args:
        family: ``chain``, ``sequential``, ``resnet`` or ``vit``.
        groups: Node groups, inputs first.
        blocks: Edge blocks; every block's source group comes before its target group.
        tensor_shapes: ``(name, shape)`` of every tensor the plan reads.
    """

    family: str
    groups: tuple[Group, ...]
    blocks: tuple[Block, ...]
    tensor_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @functools.cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.tensor_shapes)

    @functools.cached_property
    def levels(self) -> list[int]:
        """Each group's depth: the longest path (in blocks) from a group with no inputs."""
        level = [0] * len(self.groups)
        for b in sorted(self.blocks, key=lambda b: b.dst):
            level[b.dst] = max(level[b.dst], level[b.src] + 1)
        return level

    @functools.cached_property
    def offsets(self) -> list[int]:
        out = [0]
        for g in self.groups:
            out.append(out[-1] + g.size)
        return out

    @property
    def num_nodes(self) -> int:
        return self.offsets[-1]

    @property
    def num_edges(self) -> int:
        """Edges of all blocks, one direction."""
        return sum(_block_edges(b, self.groups) for b in self.blocks)

    @property
    def k_max(self) -> int:
        return max((b.k for b in self.blocks), default=1)

    @property
    def num_outputs(self) -> int:
        return sum(g.size for g in self.groups if g.kind == NODE_OUTPUT)

    @property
    def depth(self) -> int:
        return max(self.levels, default=0)

    @property
    def names(self) -> list[str]:
        """The tensors the plan reads."""
        refs = [r for g in self.groups for _, r in g.features]
        refs += [b.weight for b in self.blocks if b.weight is not None]
        return list(dict.fromkeys(r.name for r in refs))

    def build(self, tensors: Mapping[str, torch.Tensor], where: str = "<model>") -> NeuralGraph:
        """The graph of a network whose tensors have the planned shapes.

        Raises:
            ShapeMismatchError: A tensor's shape differs from the planned one.
        """
        for name in self.names:
            if name not in tensors:
                raise GraphBuildError(where, "tensor missing from the model", tensor=name)
            if self.shapes and tuple(tensors[name].shape) != tuple(self.shapes[name]):
                raise ShapeMismatchError(
                    where,
                    f"shape {list(tensors[name].shape)} differs from {list(self.shapes[name])}",
                    tensor=name,
                )
        first = next(iter(tensors.values()))
        dtype = first.dtype if first.is_floating_point() else torch.float32
        x = _node_features(self, tensors, dtype)
        return NeuralGraph(x=x, **_structure(self), w=_dense_values(self, tensors, dtype))


def _block_edges(b: Block, groups: Sequence[Group]) -> int:
    if b.pattern == DENSE:
        return groups[b.src].size * groups[b.dst].size
    return groups[b.src].size


def position_code(index: torch.Tensor) -> torch.Tensor:
    """Sinusoidal code [n, 2F] of integer positions (transformer style)."""
    freqs = torch.exp(
        -torch.arange(POS_FREQS, dtype=torch.float32) * (torch.log(torch.tensor(1e4)) / POS_FREQS)
    )
    ang = index.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


def _node_features(
    plan: GraphPlan, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> torch.Tensor:
    x = torch.zeros(plan.num_nodes, NODE_DIM, dtype=dtype)
    for g, start in zip(plan.groups, plan.offsets):
        rows = x[start : start + g.size]
        for slot, ref in g.features:
            rows[:, slot] = ref.vector(tensors).to(dtype)
            if slot == F_NORM_W:
                rows[:, F_HAS_NORM] = 1.0
        if g.positional:
            rows[:, F_POS:] = position_code(torch.arange(g.size)).to(dtype)
    return x


@functools.lru_cache(maxsize=256)
def _structure_cached(plan: GraphPlan) -> dict[str, torch.Tensor]:
    groups, offsets, levels = plan.groups, plan.offsets, plan.levels
    kind = torch.cat([torch.full((g.size,), g.kind) for g in groups])
    gid = torch.cat([torch.full((g.size,), i) for i, g in enumerate(groups)])
    dense = [b for b in plan.blocks if b.pattern == DENSE]
    sparse = [b for b in plan.blocks if b.pattern != DENSE]
    numel = [groups[b.src].size * groups[b.dst].size * b.k for b in dense]
    edges, kinds = [], []
    for b in sparse:
        i = torch.arange(groups[b.src].size)
        j = i if b.pattern == DIAG else i // (groups[b.src].size // groups[b.dst].size)
        edges.append(torch.stack([i + offsets[b.src], j + offsets[b.dst]]))
        kinds.append(torch.full((len(i),), b.kind))
    t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    out = {
        "layer": t(levels)[gid],
        "node_kind": kind.long(),
        "node_group": gid.long(),
        "group_first_index": t(offsets[:-1]),
        "group_size": t([g.size for g in groups]),
        "group_level": t(levels),
        "block_src_index": t([offsets[b.src] for b in dense]),
        "block_dst_index": t([offsets[b.dst] for b in dense]),
        "block_src_group": t([b.src for b in dense]),
        "block_dst_group": t([b.dst for b in dense]),
        "block_rows": t([groups[b.dst].size for b in dense]),
        "block_cols": t([groups[b.src].size for b in dense]),
        "block_k": t([b.k for b in dense]),
        "block_kind": t([b.kind for b in dense]),
        "block_offset": t([sum(numel[:i]) for i in range(len(dense))]),
        "sparse_edge_index": torch.cat(edges, 1) if edges else torch.zeros(2, 0, dtype=torch.long),
        "sparse_kind": torch.cat(kinds).long() if kinds else torch.zeros(0, dtype=torch.long),
    }
    for v in out.values():  # shared by every graph of this plan: never written to
        v.requires_grad_(False)
    return out


def _structure(plan: GraphPlan) -> dict[str, object]:
    s = dict(_structure_cached(plan))
    s["sparse_attr"] = torch.ones(s["sparse_kind"].shape[0], 1)
    s["num_nodes"] = plan.num_nodes
    return s


def _dense_values(
    plan: GraphPlan, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> torch.Tensor:
    parts = []
    for b in plan.blocks:
        if b.pattern != DENSE:
            continue
        assert b.weight is not None
        v = b.weight.block(tensors, plan.groups[b.src].size)
        parts.append(v.to(dtype).reshape(-1))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)


class NeuralGraph(Data):
    """One network's neural graph (layout in the module docstring); batches with PyG."""

    def __inc__(self, key: str, value: object, *args: object, **kwargs: object) -> object:
        if key == "block_offset":
            return self.w.numel()
        if key in ("node_group", "block_src_group", "block_dst_group"):
            return self.group_size.numel()
        return super().__inc__(key, value, *args, **kwargs)

    @property
    def num_groups(self) -> int:
        return int(self.group_size.numel())


@dataclass
class DenseGroup:
    """Same-shaped dense blocks of a graph batch, stacked.

    Attributes:
        kind: Edge kind of the blocks.
        src: [G, S] source node of every column; ``dst``: [G, R] target node of every row.
        w: [G, R, S, k] edge values.
        src_group / dst_group: [G] the source and target group of each block.
    """

    kind: int
    src: torch.Tensor
    dst: torch.Tensor
    w: torch.Tensor
    src_group: torch.Tensor
    dst_group: torch.Tensor


def dense_groups(graph: Data, by_level: bool = False) -> list[DenseGroup]:
    """The dense blocks of a (batched) neural graph, stacked by shape and kind.

    Args:
        graph: A :class:`NeuralGraph` or a ``Batch`` of them.
        by_level: Also split by the target group's level (for encoders that go level by level).
    """
    n = graph.block_rows.numel()
    if n == 0:
        return []
    keys = [graph.block_rows, graph.block_cols, graph.block_k, graph.block_kind]
    if by_level:
        keys.append(graph.group_level[graph.block_dst_group])
    uniq, inverse = torch.unique(torch.stack(keys, 1), dim=0, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=len(uniq)).tolist()
    out, at, dev = [], 0, graph.w.device
    for key, count in zip(uniq.tolist(), counts):
        rows, cols, k, kind = key[:4]
        idx = order[at : at + count]
        at += count
        numel = rows * cols * k
        flat = graph.block_offset[idx, None] + torch.arange(numel, device=dev)
        out.append(
            DenseGroup(
                kind=kind,
                src=graph.block_src_index[idx, None] + torch.arange(cols, device=dev),
                dst=graph.block_dst_index[idx, None] + torch.arange(rows, device=dev),
                w=graph.w[flat].view(count, rows, cols, k),
                src_group=graph.block_src_group[idx],
                dst_group=graph.block_dst_group[idx],
            )
        )
    return out


def edge_list(
    graph: Data, k_max: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every edge of a (batched) neural graph, one direction: ``edge_index`` [2, E],
    ``edge_attr`` [E, k_max] (kernel values zero-padded) and ``edge_kind`` [E]. Dense blocks come
    first, each row-major (target ``j`` major, source ``i`` minor), then the sparse edges."""
    groups = dense_groups(graph)
    k_max = k_max or max([g.w.shape[3] for g in groups] + [graph.sparse_attr.shape[1]])
    index, attr, kind = [graph.sparse_edge_index], [graph.sparse_attr], [graph.sparse_kind]
    for g in groups:
        count, rows, cols, k = g.w.shape
        src = g.src[:, None, :].expand(count, rows, cols).reshape(-1)
        dst = g.dst[:, :, None].expand(count, rows, cols).reshape(-1)
        index.insert(-1, torch.stack([src, dst]))
        attr.insert(-1, g.w.reshape(-1, k))
        kind.insert(-1, torch.full_like(src, g.kind))
    attr = [torch.nn.functional.pad(a, (0, k_max - a.shape[1])) for a in attr]
    return torch.cat(index, 1), torch.cat(attr), torch.cat(kind)


def graph_shapes_of(plans: Sequence[GraphPlan]) -> GraphShapes:
    """The :class:`GraphShapes` that covers every one of ``plans``."""
    return GraphShapes(
        NODE_DIM,
        max(p.k_max for p in plans),
        max(p.depth for p in plans),
        max(p.num_outputs for p in plans),
    )


# ----- chains: a sequence of layers where layer l reads exactly the outputs of layer l - 1 -----


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
