"""Networks as neural graphs: neurons are nodes, weights are edges (torch_geometric ``Data``).

A network is read in two steps. A :class:`GraphPlan` is made from tensor names and shapes alone
(:func:`nwa.weights.graph_archs.plan_graph` reads timm ResNets and VisionTransformers and plain
MLP/CNN chains; :func:`nwa.weights.chain.chain_plan` a chain of layers): it lists the *node groups* (the output
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

Chains of layers have their own reader, :mod:`nwa.weights.chain`. Graphs of different networks
batch with ``torch_geometric.data.Batch.from_data_list``: node,
group and weight offsets are shifted per graph. :func:`dense_groups` and :func:`edge_list` give
the two views encoders compute on (same-shaped blocks stacked, or one edge list).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch_geometric.data import Data

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
