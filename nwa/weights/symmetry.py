"""Hidden-neuron permutations of a layer chain: for invariance tests and data augmentation.

In a chain ``f = W_{L-1} o s o ... o s o W_0`` (``s`` an elementwise nonlinearity, optionally
global pooling), reordering the output neurons of a hidden layer ``l`` by a permutation ``P``,
``W_l <- P W_l``, ``b_l <- P b_l``, ``W_{l+1} <- W_{l+1} P^T`` (rows of layer ``l``, columns of
layer ``l + 1``), leaves the function unchanged. The first layer's inputs and the last layer's
outputs are never permuted.

Whole networks (residual connections, attention) are permuted through their graph plan
(:mod:`nwa.weights.graph`): :func:`random_network_permutation` and :func:`permute_network`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from nwa.errors import ShapeMismatchError

if TYPE_CHECKING:
    from nwa.weights.graph import GraphPlan, Ref


def permute_chain(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    perms: Sequence[torch.Tensor | None],
    batch_dims: int = 0,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Apply one permutation per hidden layer, consistently across adjacent layers.

    Works on raw layouts ([out, in], [out, in, kh, kw]), on chain layouts [out, in, k], and on
    batched ones ([B, out, in, k] with ``batch_dims=1``; the same permutation for every model).

    Args:
        weights: ``L`` weights, out dim at ``batch_dims``, in dim at ``batch_dims + 1``.
        biases: ``L`` biases [..., out] (or ``None``).
        perms: ``L - 1`` permutations (or ``None`` for identity); ``perms[l]`` reorders the
            outputs of layer ``l``: new neuron ``j`` is old neuron ``perms[l][j]``.
        batch_dims: Number of leading batch dims.

    Returns:
        New lists of weights and biases; the inputs are not modified.
    """
    n = len(weights)
    if len(biases) != n:
        raise ValueError(f"got {n} weights and {len(biases)} biases")
    if len(perms) != n - 1:
        raise ValueError(
            f"a chain of {n} layers has {n - 1} hidden layers, got {len(perms)} permutations"
        )
    ws, bs = list(weights), list(biases)
    out_dim, in_dim = batch_dims, batch_dims + 1
    for li, p in enumerate(perms):
        if p is None:
            continue
        size = ws[li].shape[out_dim]
        if p.numel() != size or ws[li + 1].shape[in_dim] != size:
            raise ShapeMismatchError(
                "<chain>",
                f"permutation of {p.numel()} neurons for layer {li} with {size} outputs "
                f"feeding {ws[li + 1].shape[in_dim]} inputs",
                tensor=f"layer {li}",
            )
        p = p.to(device=ws[li].device, dtype=torch.long)
        ws[li] = ws[li].index_select(out_dim, p)
        if bs[li] is not None:
            bs[li] = bs[li].index_select(batch_dims, p)
        ws[li + 1] = ws[li + 1].index_select(in_dim, p)
    return ws, bs


def random_hidden_permutations(
    chain: Mapping[str, Sequence[torch.Tensor]] | Sequence[torch.Tensor],
    generator: torch.Generator | None = None,
    batch_dims: int = 0,
) -> list[torch.Tensor]:
    """One random permutation per hidden layer of a chain.

    Args:
        chain: ``{"weights": [...], ...}`` or the list of weights itself.
        generator: Random source, for reproducibility.
        batch_dims: Number of leading batch dims of the weights.
    """
    weights = chain["weights"] if isinstance(chain, Mapping) else chain
    return [torch.randperm(w.shape[batch_dims], generator=generator) for w in list(weights)[:-1]]


def _bias_name(weight_name: str, state: Mapping[str, torch.Tensor]) -> str | None:
    if weight_name.endswith("weight"):
        name = weight_name[: -len("weight")] + "bias"
        return name if name in state else None
    return None


def permute_state_dict(
    state: Mapping[str, torch.Tensor],
    layers: Sequence[str],
    perms: Sequence[torch.Tensor | None],
    per_neuron: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Permute the hidden neurons of a plain MLP/conv chain stored as a named state dict.

    Args:
        state: Name to tensor, e.g. ``model.state_dict()``.
        layers: Weight names of the chain in forward order; each layer's bias is the name with
            ``weight`` replaced by ``bias`` when present.
        perms: ``len(layers) - 1`` permutations (or ``None``), as in :func:`permute_chain`.
        per_neuron: Other tensors indexed by a layer's output neurons on dim 0 (a norm layer's
            weight, bias, running stats): name to index of that layer in ``layers``.

    Returns:
        A new dict; tensors not in the chain are passed through unchanged.

    Raises:
        ShapeMismatchError: Adjacent layers do not chain (``in_{l+1} != out_l``).
    """
    missing = [n for n in list(layers) + list(per_neuron or {}) if n not in state]
    if missing:
        raise KeyError(f"not in the state dict: {', '.join(missing)}")
    for li in range(len(layers) - 1):
        a, b = state[layers[li]], state[layers[li + 1]]
        if b.dim() < 2 or b.shape[1] != a.shape[0]:
            raise ShapeMismatchError(
                "<state dict>",
                f"{layers[li + 1]} of shape {list(b.shape)} does not read the {a.shape[0]} outputs of {layers[li]}",
                tensor=layers[li + 1],
            )
    bias_names = [_bias_name(n, state) for n in layers]
    ws, bs = permute_chain(
        [state[n] for n in layers], [state[n] if n else None for n in bias_names], perms
    )
    out = dict(state)
    out.update(zip(layers, ws))
    out.update({n: b for n, b in zip(bias_names, bs) if n is not None and b is not None})
    for name, li in (per_neuron or {}).items():
        if li < len(perms) and perms[li] is not None:
            out[name] = state[name].index_select(0, perms[li].to(torch.long))
    return out


def random_permute_state_dict(
    state: Mapping[str, torch.Tensor],
    layers: Sequence[str],
    generator: torch.Generator | None = None,
    per_neuron: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Data augmentation: :func:`permute_state_dict` with random hidden permutations."""
    perms = random_hidden_permutations([state[n] for n in layers], generator=generator)
    return permute_state_dict(state, layers, perms, per_neuron=per_neuron)


def tied_groups(plan: GraphPlan) -> list[list[int]]:
    """The plan's groups in classes that must be permuted together (joined by identity edges:
    residual connections, query-key pairs), each class the groups of one hidden symmetry; groups
    in a class with a positional group (inputs, outputs) or a head group are fixed."""
    from nwa.weights.graph import DIAG, NODE_HEAD

    parent = list(range(len(plan.groups)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for b in plan.blocks:
        if b.pattern == DIAG:
            parent[root(b.src)] = root(b.dst)
    classes: dict[int, list[int]] = {}
    for i in range(len(plan.groups)):
        classes.setdefault(root(i), []).append(i)
    fixed = lambda g: g.positional or g.kind == NODE_HEAD  # noqa: E731
    return [c for c in classes.values() if not any(fixed(plan.groups[i]) for i in c)]


def random_network_permutation(
    plan: GraphPlan, generator: torch.Generator | None = None
) -> dict[int, torch.Tensor]:
    """A random hidden-neuron permutation of a network: group index -> permutation (new neuron
    ``j`` is old neuron ``perm[j]``); tied groups share one, and groups with a ``chunk`` (the
    channels of attention heads) are permuted within each chunk."""
    perms: dict[int, torch.Tensor] = {}
    for cls in tied_groups(plan):
        size = plan.groups[cls[0]].size
        chunk = min((plan.groups[i].chunk or size) for i in cls)
        perm = torch.cat(
            [torch.randperm(chunk, generator=generator) + c for c in range(0, size, chunk)]
        )
        perms.update(dict.fromkeys(cls, perm))
    return perms


def permute_network(
    tensors: Mapping[str, torch.Tensor], plan: GraphPlan, perms: Mapping[int, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Apply hidden-neuron permutations (group index -> permutation) to a network's tensors as
    the plan reads them: each layer's rows for its output group, its columns for its input
    group, and every per-neuron vector (biases, norms, class token, position embedding)."""
    from nwa.weights.graph import DENSE

    out = dict(tensors)
    done: set[tuple[str, int, int | None]] = set()
    for gi, g in enumerate(plan.groups):
        if gi not in perms:
            continue
        for _, ref in g.features:
            key = (ref.name, ref.start, ref.stop)
            if key not in done:
                done.add(key)
                out[ref.name] = _permute_channels(out[ref.name], ref, perms[gi])
    for b in plan.blocks:
        if b.pattern != DENSE or (b.src not in perms and b.dst not in perms):
            continue
        t = out[b.weight.name].clone()
        part = t[b.weight.start : b.weight.stop]
        rows = part.reshape(part.shape[0], plan.groups[b.src].size, -1)
        if b.dst in perms:
            rows = rows[perms[b.dst]]
        if b.src in perms:
            rows = rows[:, perms[b.src]]
        t[b.weight.start : b.weight.stop] = rows.reshape(part.shape)
        out[b.weight.name] = t
    return out


def _permute_channels(t: torch.Tensor, ref: Ref, perm: torch.Tensor) -> torch.Tensor:
    """Permute the channels ``ref`` reads: dim 0 of a vector (within ``start:stop``), the last
    dim of a per-token tensor (class token, position embedding)."""
    t = t.clone()
    if t.dim() == 1:
        part = t[ref.start : ref.stop]
        t[ref.start : ref.stop] = part[perm]
        return t
    return t[..., perm]
