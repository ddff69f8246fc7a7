"""Reading a network's tensor names and shapes as a :class:`~nwa.weights.graph.GraphPlan`.

:func:`plan_graph` recognises three families (names as timm and torchvision write them):

- **ResNet** (``conv1``/``bn1`` stem, plain or deep; ``layer{s}.{b}.conv{i}``/``bn{i}`` blocks,
  basic or bottleneck; ``downsample`` conv + norm; ``fc``). Each conv's output channels are a
  group whose nodes carry the following BatchNorm's weight, bias and running statistics; kernels
  ``kh * kw`` are edge features. A block ends in a residual *sum* group fed by identity edges from
  its last conv group and from its shortcut (the block input, or the downsample conv's group), so
  channels tied through residual connections can only be permuted together.
- **ViT** (``patch_embed.proj``, ``cls_token``, ``pos_embed``; ``blocks.{i}`` with ``norm1``,
  ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``/``fc2``, optional ``ls1``/``ls2``; ``norm``
  or ``fc_norm``; ``head``). The residual stream is a chain of groups joined by identity edges
  (one before attention, one after it, one after the MLP, per block); each stream group carries
  the bias written into it and the LayerNorm that reads it. ``qkv`` gives query, key and value
  groups (their biases as node features); each query neuron is joined to its key neuron (they
  meet in the dot product); ``attn.proj`` joins value neurons to the stream. With ``heads`` given
  (it is not in the state dict), head nodes join the channels of each head and permutations of
  query/key/value channels are limited to within a head.
- **Sequential** MLP/CNN chains (the Small CNN Zoo's ``conv2d_1``..., ``nn.Sequential``'s ``0``,
  ``2``...): modules in file order, each with a weight of 2 or more dims reading the previous
  one's outputs; 1-D-only modules (BatchNorm, LayerNorm) are node features of the neurons they
  normalize; a linear layer reading ``c * s`` flattened values of ``c`` channels has ``s``-value
  edges.

A selection of whole units (stem, blocks, head) of a ResNet or ViT is a *layer range*: its first
group becomes the input (not positional: those channels are hidden in the full network).

**Size.** Edges grow with the square of the width: a ViT-S block (384 wide, MLP 1536) has
1.77 M weights, the whole ViT-S 21 M; a ResNet-18 11 M (its 3x3 kernels are 9 values per edge,
1.2 M edges). :func:`plan_graph` refuses plans over ``max_edges`` (default
:data:`MAX_EDGES`), naming the model and the fix: select a layer range (the last blocks and the
head), which keeps the graph's meaning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from nwa.errors import GraphBuildError
from nwa.weights.graph import (
    EDGE_HEAD,
    EDGE_QK,
    EDGE_RESIDUAL,
    F_BIAS,
    F_EXTRA,
    F_NORM_B,
    F_NORM_W,
    MEMBER,
    NODE_HEAD,
    NODE_HIDDEN,
    NODE_INPUT,
    NODE_SUM,
    GraphPlan,
    Group,
    Ref,
)
from nwa.weights.graph_plan import (
    MAX_EDGES,
    SKIP,
    PlanBuilder,
    Shapes,
    chain_modules,
    input_group,
    is_layer,
    modules_of,
    natural_key,
    norm_features,
    output_group,
)

__all__ = ["MAX_EDGES", "model_family", "plan_graph", "resnet_plan", "sequential_plan", "vit_plan"]


def sequential_plan(
    shapes: Shapes, where: str = "<model>", max_edges: int | None = None
) -> GraphPlan:
    """A plain chain of conv/linear layers (with norms) in file order. A file that does not
    record its module order lists names sorted as text (``10.weight`` before ``2.weight``):
    such a list is read in natural order instead (digit runs as numbers)."""
    given = list(shapes)
    natural = sorted(given, key=natural_key)
    orders = [natural, given] if given == sorted(given) else [given, natural]
    try:
        return _sequential(shapes, where, max_edges, orders[0])
    except GraphBuildError as e:
        if orders[1] == orders[0]:
            raise
        try:
            return _sequential(shapes, where, max_edges, orders[1])
        except GraphBuildError:
            raise e from None


def _sequential(
    shapes: Shapes, where: str, max_edges: int | None, order: Sequence[str]
) -> GraphPlan:
    p = PlanBuilder({n: shapes[n] for n in order}, where)
    mods = list(modules_of(list(p.shapes)).items())
    layers = [i for i, (_, leaves) in enumerate(mods) if is_layer(p, leaves)]
    if not layers:
        raise p.fail("no layer weight (a tensor of 2 or more dims named *weight) was selected")
    x = input_group(p, mods[layers[0]][1]["weight"], positional=True)
    if layers[0] > 0:
        raise p.fail("a normalization before any layer", next(iter(mods[0][1].values())))
    last = layers[-1]
    x = chain_modules(p, x, dict(mods[:last]))
    leaves = mods[last][1]
    extra = sorted(set(leaves) - {"weight", "bias"})
    if extra:
        raise p.fail("unexpected tensor beside a layer weight", leaves[extra[0]])
    out = output_group(p, x, leaves["weight"], leaves.get("bias"))
    for _, norm in mods[last + 1 :]:
        p.add_features(out, norm_features(norm, p))
    return p.finish("sequential", max_edges)


# ----- ResNet -----

_RESNET_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(.+)")
_RESNET_PART = re.compile(r"(conv\d+|bn\d+|downsample\.\d+)\.[a-z_]+")


def _resnet_units(p: PlanBuilder) -> tuple[list[str], dict[tuple[int, int], list[str]], list[str]]:
    stem, blocks, head = [], {}, []
    for n in p.shapes:
        m = _RESNET_BLOCK.fullmatch(n)
        if m and not _RESNET_PART.fullmatch(m[3]):
            raise p.fail(
                "a ResNet block part nwa does not read as a graph (only convs, norms, downsample)",
                n,
            )
        if m:
            blocks.setdefault((int(m[1]), int(m[2])), []).append(n)
        elif n.startswith(("conv1.", "bn1.")):
            stem.append(n)
        elif n.startswith("fc."):
            head.append(n)
        elif not n.endswith(SKIP):
            raise p.fail("not a ResNet stem, block or fc tensor", n)
    return stem, dict(sorted(blocks.items())), head


def _block_order(name: str) -> tuple[object, ...]:
    """conv1, bn1, conv2, bn2 ..., then the downsample's modules in index order."""
    m = re.search(r"\.(conv|bn)(\d+)\.", name)
    if m and ".downsample" not in name:
        return (0, int(m[2]), m[1] == "bn")
    return (1, natural_key(name))


def resnet_plan(shapes: Shapes, where: str = "<model>", max_edges: int | None = None) -> GraphPlan:
    """A timm/torchvision ResNet (or a range of its blocks): see the module docstring."""
    p = PlanBuilder(shapes, where)
    stem, blocks, head = _resnet_units(p)
    if stem:  # conv1 (or the deep stem's conv1.0, conv1.1 ...), then bn1
        stem.sort(key=lambda n: (n.startswith("bn1."), natural_key(n)))
        x = input_group(p, stem[0], positional=True)
        x = chain_modules(p, x, modules_of(stem))
    elif blocks:
        first = next(iter(blocks.values()))[0]
        x = input_group(p, first, positional=False)
    else:
        raise p.fail("no ResNet stem or block was selected")
    for (s, b), names in blocks.items():
        mods = modules_of(sorted(names, key=_block_order))
        main = {m: v for m, v in mods.items() if ".downsample" not in m}
        down = {m: v for m, v in mods.items() if ".downsample" in m}
        y = chain_modules(p, x, main)
        short = chain_modules(p, x, down) if down else x
        if p.groups[y].size != p.groups[short].size:
            raise p.fail(
                f"block layer{s}.{b} adds {p.groups[y].size} channels to a shortcut of "
                f"{p.groups[short].size} (is its downsample selected?)"
            )
        o = p.group(f"layer{s}.{b}", p.groups[y].size, NODE_SUM)
        p.link(y, o, EDGE_RESIDUAL)
        p.link(short, o, EDGE_RESIDUAL)
        x = o
    if head:
        mods = modules_of(head)
        x = output_group(p, x, mods["fc"]["weight"], mods["fc"].get("bias"))
    return p.finish("resnet", max_edges)


# ----- VisionTransformer -----

_VIT_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_VIT_BLOCK_LEAVES = {
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
    "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
    "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma",
}  # fmt: skip
_VIT_TOP = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
_VIT_END = {
    "norm.weight",
    "norm.bias",
    "fc_norm.weight",
    "fc_norm.bias",
    "head.weight",
    "head.bias",
}


def _vit_blocks(p: PlanBuilder) -> dict[int, dict[str, str]]:
    blocks: dict[int, dict[str, str]] = {}
    for n in p.shapes:
        m = _VIT_BLOCK.fullmatch(n)
        if m and m[2] in _VIT_BLOCK_LEAVES:
            blocks.setdefault(int(m[1]), {})[m[2]] = n
        elif not m and (n in _VIT_TOP or n in _VIT_END):
            continue
        else:
            raise p.fail("not a VisionTransformer tensor nwa reads as a graph", n)
    return dict(sorted(blocks.items()))


def _layer_norm(p: PlanBuilder, g: int, prefix: str) -> None:
    feats = [
        (slot, Ref(f"{prefix}.{leaf}")) for leaf, slot in (("weight", F_NORM_W), ("bias", F_NORM_B))
    ]
    p.add_features(g, [f for f in feats if f[1].name in p.shapes])


def _vit_attention(p: PlanBuilder, s: int, leaves: Mapping[str, str], heads: int | None) -> int:
    """Query/key/value groups from stream group ``s``; returns the value group."""
    qkv = leaves["attn.qkv.weight"]
    d = p.shapes[qkv][0] // 3
    chunk = d // heads if heads else None
    groups = []
    for i, part in enumerate("qkv"):
        g = p.weight(s, qkv, i * d, (i + 1) * d)
        p.groups[g] = Group(qkv.replace("qkv.weight", part), d, NODE_HIDDEN, chunk=chunk)
        if "attn.qkv.bias" in leaves:
            p.add_features(g, [(F_BIAS, Ref(leaves["attn.qkv.bias"], i * d, (i + 1) * d))])
        groups.append(g)
    q, k, v = groups
    p.link(q, k, EDGE_QK)
    if heads:
        h = p.group(qkv.replace("qkv.weight", "heads"), heads, NODE_HEAD)
        for g in groups:
            p.link(g, h, EDGE_HEAD, MEMBER)
    return v


def _vit_block(p: PlanBuilder, s: int, i: int, leaves: Mapping[str, str], heads: int | None) -> int:
    missing = sorted(
        {"attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"} - set(leaves)
    )
    if missing:
        raise p.fail(f"block {i} lacks {', '.join(missing)} (select whole blocks)")
    _layer_norm(p, s, f"blocks.{i}.norm1")
    v = _vit_attention(p, s, leaves, heads)
    mid = _residual(p, s, v, f"blocks.{i}.attn", leaves, "attn.proj", "ls1.gamma")
    _layer_norm(p, mid, f"blocks.{i}.norm2")
    hidden = p.weight(mid, leaves["mlp.fc1.weight"])
    if "mlp.fc1.bias" in leaves:
        p.add_features(hidden, [(F_BIAS, Ref(leaves["mlp.fc1.bias"]))])
    return _residual(p, mid, hidden, f"blocks.{i}", leaves, "mlp.fc2", "ls2.gamma")


def _residual(
    p: PlanBuilder,
    stream: int,
    branch: int,
    name: str,
    leaves: Mapping[str, str],
    layer: str,
    scale: str,
) -> int:
    """The stream after adding ``layer`` (from group ``branch``) to ``stream``: a sum group
    with the layer's bias and layer scale as node features."""
    out = p.weight(branch, leaves[f"{layer}.weight"])
    p.groups[out] = Group(name, p.groups[out].size, NODE_SUM)
    p.link(stream, out, EDGE_RESIDUAL)
    for leaf, slot in ((f"{layer}.bias", F_BIAS), (scale, F_EXTRA)):
        if leaf in leaves:
            p.add_features(out, [(slot, Ref(leaves[leaf]))])
    return out


def _vit_stem(p: PlanBuilder, blocks: Mapping[int, Mapping[str, str]]) -> int:
    proj = "patch_embed.proj.weight"
    if proj not in p.shapes:
        if not blocks:
            raise p.fail("no ViT patch embedding or block was selected")
        first = next(iter(blocks.values()))["attn.qkv.weight"]
        return p.group("input", p.shapes[first][1], NODE_INPUT, False)
    x = input_group(p, proj, positional=True)
    s = p.weight(x, proj)
    p.groups[s] = Group("patch_embed", p.groups[s].size, NODE_HIDDEN)
    feats = [(F_BIAS, Ref("patch_embed.proj.bias")), (F_EXTRA, Ref("cls_token"))]
    feats += [(F_EXTRA + 1, Ref("pos_embed", reduce="tokens_mean"))]
    feats += [(F_EXTRA + 2, Ref("pos_embed", reduce="tokens_std"))]
    p.add_features(s, [f for f in feats if f[1].name in p.shapes])
    return s


def vit_plan(
    shapes: Shapes, where: str = "<model>", heads: int | None = None, max_edges: int | None = None
) -> GraphPlan:
    """A timm VisionTransformer (or a range of its blocks): see the module docstring."""
    p = PlanBuilder(shapes, where)
    blocks = _vit_blocks(p)
    s = _vit_stem(p, blocks)
    for i, leaves in blocks.items():
        s = _vit_block(p, s, i, leaves, heads)
    norm = "fc_norm" if "fc_norm.weight" in p.shapes else "norm"
    _layer_norm(p, s, norm)
    if "head.weight" in p.shapes:
        output_group(p, s, "head.weight", "head.bias" if "head.bias" in p.shapes else None)
    return p.finish("vit", max_edges)


# ----- dispatch -----


def model_family(names: Sequence[str]) -> str:
    """``resnet``, ``vit`` or ``sequential``, from a model's tensor names."""
    if any(_RESNET_BLOCK.fullmatch(n) for n in names):
        return "resnet"
    if any(n.endswith("attn.qkv.weight") for n in names):
        return "vit"
    return "sequential"


def _check_whole_units(
    family: str, selected: Sequence[str], available: Sequence[str], where: str
) -> None:
    """A ResNet or ViT graph needs whole units: every tensor of each selected block."""
    unit = (
        (lambda n: (m := _RESNET_BLOCK.fullmatch(n)) and m[1] + "." + m[2])
        if family == "resnet"
        else (lambda n: (m := _VIT_BLOCK.fullmatch(n)) and m[1])
    )
    chosen = {unit(n) for n in selected} - {None}
    missing = [
        n for n in available if unit(n) in chosen and n not in selected and not n.endswith(SKIP)
    ]
    if missing:
        raise GraphBuildError(
            where,
            f"the layer selection cuts a block: {missing[0]} is not selected (select whole blocks)",
        )


def plan_graph(
    shapes: Shapes,
    where: str = "<model>",
    available: Sequence[str] | None = None,
    heads: int | None = None,
    max_edges: int | None = None,
) -> GraphPlan:
    """The graph plan of a model from the names and shapes of its selected tensors.

    The family comes from the names (:func:`model_family`). A ResNet or ViT selection that is
    not a set of whole blocks but forms a plain chain (``layer4.0.conv1``, ``layer4.0.conv2``,
    ``fc``) is read as a chain.

    Args:
        shapes: Name -> shape of the selected tensors, in the file's order.
        where: The model's file, for error messages.
        available: Every tensor name of the model (to tell a whole block from a cut one).
        heads: Attention heads of a ViT (not in its state dict); ``None``: no head nodes.
        max_edges: Refuse plans with more edges (default :data:`MAX_EDGES`).

    Raises:
        GraphBuildError: The tensors do not form a network of a known family, or are too many.
    """
    family = model_family(list(shapes))
    if family == "sequential":
        return sequential_plan(shapes, where, max_edges)
    try:
        if available is not None:
            _check_whole_units(family, list(shapes), available, where)
        if family == "resnet":
            return resnet_plan(shapes, where, max_edges)
        return vit_plan(shapes, where, heads, max_edges)
    except GraphBuildError as e:
        try:
            return sequential_plan(shapes, where, max_edges)
        except GraphBuildError:
            raise e from None
