"""Assembling a :class:`~nwa.weights.graph.GraphPlan` from tensor names and shapes: the steps
every family's reader (:mod:`nwa.weights.graph_archs`) shares."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from nwa.errors import GraphBuildError
from nwa.weights.graph import (
    DENSE,
    DIAG,
    EDGE_CONV,
    EDGE_FLATTEN,
    EDGE_LINEAR,
    F_BIAS,
    F_NORM_B,
    F_NORM_MEAN,
    F_NORM_VAR,
    F_NORM_W,
    NODE_HIDDEN,
    NODE_INPUT,
    NODE_OUTPUT,
    Block,
    GraphPlan,
    Group,
    Ref,
)

MAX_EDGES = 4_000_000
"""Default limit on a plan's edges (one direction): about 1.5 GB of NWPA training state at batch 1."""

Shapes = Mapping[str, Sequence[int]]
NORM_SLOTS = {
    "weight": F_NORM_W,
    "bias": F_NORM_B,
    "running_mean": F_NORM_MEAN,
    "running_var": F_NORM_VAR,
}
SKIP = ("num_batches_tracked",)


class PlanBuilder:
    """Groups and blocks being assembled into a plan; errors name the model's file."""

    def __init__(self, shapes: Shapes, where: str) -> None:
        self.shapes = {n: tuple(int(v) for v in s) for n, s in shapes.items()}
        self.where = where
        self.groups: list[Group] = []
        self.blocks: list[Block] = []

    def fail(self, reason: str, tensor: str | None = None) -> GraphBuildError:
        return GraphBuildError(self.where, reason, tensor=tensor)

    def group(self, name: str, size: int, kind: int, positional: bool = False, **kw) -> int:
        self.groups.append(Group(name, size, kind, positional, **kw))
        return len(self.groups) - 1

    def add_features(self, g: int, features: Sequence[tuple[int, Ref]]) -> None:
        old = self.groups[g]
        for _, ref in features:
            n = _numel_vector(self.shapes[ref.name], ref)
            if n != old.size:
                raise self.fail(f"has {n} values per neuron for a group of {old.size}", ref.name)
        self.groups[g] = Group(
            old.name, old.size, old.kind, old.positional, old.features + tuple(features), old.chunk
        )

    def weight(self, src: int, name: str, start: int = 0, stop: int | None = None) -> int:
        """A new group fed by weight ``name`` (rows ``start:stop``) from group ``src``."""
        shape = self.shapes[name]
        if len(shape) < 2:
            raise self.fail(f"shape {list(shape)} is not a layer weight", name)
        rows = (stop if stop is not None else shape[0]) - start
        cols = self.groups[src].size
        per = 1
        for s in shape[1:]:
            per *= s
        if per % cols:
            raise self.fail(f"reads {shape[1]} inputs but the layer before has {cols}", name)
        k = per // cols
        kind = EDGE_CONV if len(shape) > 2 else EDGE_LINEAR if shape[1] == cols else EDGE_FLATTEN
        dst = self.group(name.rpartition(".")[0] or name, rows, NODE_HIDDEN)
        self.blocks.append(Block(src, dst, kind, DENSE, Ref(name, start, stop), k))
        return dst

    def link(self, src: int, dst: int, kind: int, pattern: str = DIAG) -> None:
        self.blocks.append(Block(src, dst, kind, pattern))

    def finish(self, family: str, max_edges: int | None) -> GraphPlan:
        names = {r.name for g in self.groups for _, r in g.features}
        names |= {b.weight.name for b in self.blocks if b.weight is not None}
        shapes = tuple((n, s) for n, s in self.shapes.items() if n in names)
        plan = GraphPlan(family, tuple(self.groups), tuple(self.blocks), shapes)
        limit = MAX_EDGES if max_edges is None else max_edges
        if plan.num_edges > limit:
            raise self.fail(
                f"its graph has {plan.num_edges:,} edges, more than the limit of {limit:,}; "
                "select a layer range (the last blocks and the head) or raise the limit"
            )
        return plan


def _numel_vector(shape: Sequence[int], ref: Ref) -> int:
    n = shape[-1] if ref.reduce else 1
    if not ref.reduce:
        for s in shape:
            n *= s
    stop = n if ref.stop is None else ref.stop
    return stop - ref.start


def natural_key(name: str) -> list[object]:
    """Sort key reading digit runs as numbers (``layers.10`` after ``layers.2``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def modules_of(names: Sequence[str]) -> dict[str, dict[str, str]]:
    """``prefix -> {leaf: full name}`` in order of first appearance."""
    out: dict[str, dict[str, str]] = {}
    for n in names:
        prefix, _, leaf = n.rpartition(".")
        if leaf not in SKIP:
            out.setdefault(prefix, {})[leaf] = n
    return out


def norm_features(leaves: Mapping[str, str], p: PlanBuilder) -> list[tuple[int, Ref]]:
    bad = [n for leaf, n in leaves.items() if leaf not in NORM_SLOTS]
    if bad or any(len(p.shapes[n]) != 1 for n in leaves.values()):
        name = (bad or list(leaves.values()))[0]
        raise p.fail("not a layer weight, bias or normalization parameter", name)
    return [(NORM_SLOTS[leaf], Ref(n)) for leaf, n in leaves.items()]


def chain_modules(p: PlanBuilder, x: int, modules: Mapping[str, Mapping[str, str]]) -> int:
    """Layers and norms in order, starting from group ``x``; returns the last group."""
    for leaves in modules.values():
        w = leaves.get("weight")
        if w is not None and len(p.shapes[w]) >= 2:
            extra = sorted(set(leaves) - {"weight", "bias"})
            if extra:
                raise p.fail("unexpected tensor beside a layer weight", leaves[extra[0]])
            x = p.weight(x, w)
            if "bias" in leaves:
                p.add_features(x, [(F_BIAS, Ref(leaves["bias"]))])
        elif p.groups[x].kind == NODE_INPUT:
            raise p.fail("a normalization before any layer", next(iter(leaves.values())))
        else:
            p.add_features(x, norm_features(leaves, p))
    return x


def input_group(p: PlanBuilder, first_weight: str, positional: bool) -> int:
    shape = p.shapes[first_weight]
    if len(shape) < 2:
        raise p.fail("the first tensor is not a layer weight", first_weight)
    return p.group("input", shape[1], NODE_INPUT, positional)


def output_group(p: PlanBuilder, x: int, weight: str, bias: str | None) -> int:
    out = p.weight(x, weight)
    old = p.groups[out]
    p.groups[out] = Group(old.name, old.size, NODE_OUTPUT, True, old.features)
    if bias:
        p.add_features(out, [(F_BIAS, Ref(bias))])
    return out


def is_layer(p: PlanBuilder, leaves: Mapping[str, str]) -> bool:
    return len(p.shapes.get(leaves.get("weight", ""), ())) >= 2
