r"""Message-passing layers of NWPA on neural graphs (:mod:`nwa.weights.graph`).

Every layer is built as ``layer(hidden, edge_dim)`` and called as ``layer(h, view)`` with node
states ``h`` [N, hidden] and an :class:`EdgeView` whose edge features ``phi`` [., edge_dim] the
encoder computed from the weights; it returns the new states [N, hidden]. Each weight edge is
used in both directions (towards the layer's outputs and back towards its inputs).

:class:`WeightAttention` (NWPA's default) is attention over neighbours whose messages carry the
weight: for a target :math:`i` and neighbour :math:`j` over edge :math:`e_{ij}` in direction
:math:`\delta`, with :math:`u = \mathrm{LN}(h)`,

.. math::
    s_{ij}^h = \frac{(Q_\delta u_i)_h \cdot (K_\delta u_j)_h}{\sqrt{C}} + (B_\delta \phi_{ij})_h,
    \qquad \alpha_{ij}^h = \mathrm{softmax}_{j \in \mathcal{N}(i)}\, s_{ij}^h

    m_i^h = \sum_j \alpha_{ij}^h \sum_{c=1}^{M} (G_\delta \phi_{ij})_{h,c}\, (V_c u_j)_h,
    \qquad h_i \leftarrow h_i + O m_i, \quad h_i \leftarrow h_i + \mathrm{FFN}(\mathrm{LN}(h_i))

so the message is :math:`\mathrm{MESSAGE}(h_i, h_j, e_{ij})`: the attention depends on both
neurons and the weight, and the weight gates the value the neighbour sends (as a network's
forward pass multiplies an activation by a weight). Queries, keys and gates are per direction,
the M value maps shared. The softmax runs over all of a node's incoming edges, of every block
and both directions.

Two computations of the same function: :meth:`WeightAttention.forward_edges` is a
``torch_geometric`` ``MessagePassing`` over the edge list (any graph; per-edge ``[E, hidden]``
tensors), :meth:`WeightAttention.forward_blocks` runs each stack of same-shaped weight blocks as
batched matrix products, so its per-edge tensors are ``[E, heads * M]`` instead
(``benchmarks/nwpa_layers.py`` measures both; ``tests/test_graph_layers.py`` checks they agree).

:class:`PyGConv` wraps a ``torch_geometric`` convolution that takes edge features
(``TransformerConv``, ``GATv2Conv``, ``GINEConv``) as an alternative backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch_geometric.nn import GATv2Conv, GINEConv, MessagePassing, TransformerConv
from torch_geometric.utils import softmax

from nwa.weights.graph import EDGE_KINDS, DenseGroup


@dataclass
class EdgeView:
    """A batch of neural graphs as encoders see it: same-shaped dense blocks stacked, with
    edge features, plus the sparse edges.

    Attributes:
        num_nodes: Nodes in the batch.
        dense: ``(block stack, phi [G, P, R, S])`` pairs (features first: every per-edge
            tensor of :meth:`WeightAttention.forward_blocks` is then made without a copy).
        sparse_index: [2, Es] source and target of each sparse edge.
        sparse_phi: [Es, P] their features.
    """

    num_nodes: int
    dense: list[tuple[DenseGroup, torch.Tensor]]
    sparse_index: torch.Tensor
    sparse_phi: torch.Tensor
    _edges: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _index: tuple[torch.Tensor, torch.Tensor, list[int], list[int]] | None = field(
        default=None, repr=False
    )

    def dense_index(self) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
        """The source and target nodes of every dense block stack, concatenated (one gather
        per node tensor serves every stack), and each stack's share of them."""
        if self._index is None:
            src = [g.src.reshape(-1) for g, _ in self.dense]
            dst = [g.dst.reshape(-1) for g, _ in self.dense]
            empty = self.sparse_index.new_zeros(0)
            self._index = (
                torch.cat(src) if src else empty,
                torch.cat(dst) if dst else empty,
                [len(i) for i in src],
                [len(i) for i in dst],
            )
        return self._index

    def edges(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every edge in both directions: ``edge_index`` [2, 2E] (source, target), ``phi``
        [2E, P] and ``direction`` [2E] (0: towards the layer's outputs, 1: back)."""
        if self._edges is None:
            index, phi = [self.sparse_index], [self.sparse_phi]
            for g, p in self.dense:
                count, _, rows, cols = p.shape
                index.append(
                    torch.stack(
                        [
                            g.src[:, None, :].expand(count, rows, cols).reshape(-1),
                            g.dst[:, :, None].expand(count, rows, cols).reshape(-1),
                        ]
                    )
                )
                phi.append(p.permute(0, 2, 3, 1).reshape(-1, p.shape[1]))
            ei, ph = torch.cat(index, 1), torch.cat(phi)
            e = ei.shape[1]
            direction = torch.cat([ei.new_zeros(e), ei.new_ones(e)])
            self._edges = (torch.cat([ei, ei.flip(0)], 1), torch.cat([ph, ph]), direction)
        return self._edges


def feed_forward(hidden: int) -> nn.Module:
    """The node-wise update after message passing: ``Linear(GELU(Linear(LN(h))))``, 2x wide."""
    return nn.Sequential(
        nn.LayerNorm(hidden),
        nn.Linear(hidden, 2 * hidden),
        nn.GELU(),
        nn.Linear(2 * hidden, hidden),
    )


class WeightAttention(MessagePassing):
    """Attention over neighbours with weight-gated messages (equations in the module docstring).

    Args:
        hidden: Node state width (divisible by ``heads``).
        edge_dim: Width of the edge features ``phi``.
        heads: Attention heads.
        edge_channels: Gated value maps M per head.
        dropout: Dropout on the attention and feed-forward updates.
        blockwise: Compute dense blocks as batched matrix products (else the edge list).
    """

    def __init__(
        self,
        hidden: int,
        edge_dim: int,
        heads: int = 4,
        edge_channels: int = 2,
        dropout: float = 0.0,
        blockwise: bool = True,
    ) -> None:
        super().__init__(aggr="add", node_dim=0)
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.heads, self.channels, self.m = heads, hidden // heads, edge_channels
        self.blockwise = blockwise
        self.norm = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, (4 + edge_channels) * hidden)
        self.edge = nn.Linear(edge_dim, 2 * heads * (1 + edge_channels))
        self.out = nn.Linear(hidden, hidden)
        self.ffn = feed_forward(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, view: EdgeView) -> torch.Tensor:
        msg = self.forward_blocks(h, view) if self.blockwise else self.forward_edges(h, view)
        h = h + self.dropout(self.out(msg))
        return h + self.dropout(self.ffn(h))

    def _roles(self, h: torch.Tensor) -> torch.Tensor:
        """[N, (4 + M) * H * C]: per node, in column order, the forward query ``q0``, the
        backward key ``k1``, the M value maps ``v`` (shared by both directions), the forward
        key ``k0`` and the backward query ``q1``. A target's roles (``q0, k1, v``) and a
        source's (``v, k0, q1``) are each one column range, gathered at once."""
        return self.proj(self.norm(h))

    def _split_roles(self, p: torch.Tensor) -> list[torch.Tensor]:
        """``q0, k1, v, k0, q1`` column views of :meth:`_roles`."""
        d = self.heads * self.channels
        return list(p.split([d, d, self.m * d, d, d], dim=1))

    def _edge_terms(self, phi: torch.Tensor) -> list[torch.Tensor]:
        """Per direction the logit term [..., H] and the gates [..., H, M] (split, not sliced:
        the backward of a slice would zero-fill a tensor of the whole projection per use)."""
        h, m = self.heads, self.m
        l0, l1, g0, g1 = self.edge(phi).split([h, h, h * m, h * m], -1)
        return [l0, g0.unflatten(-1, (h, m)), l1, g1.unflatten(-1, (h, m))]

    # ----- the edge list (torch_geometric) -----

    def forward_edges(self, h: torch.Tensor, view: EdgeView) -> torch.Tensor:
        """The attention output [N, hidden] computed edge by edge."""
        edge_index, phi, direction = view.edges()
        n, shape = h.shape[0], (self.heads, self.channels)
        q0, k1, v, k0, q1 = self._split_roles(self._roles(h))
        qk = torch.stack([q0, k0, q1, k1], 1).view(n, 2, 2, *shape)  # [N, direction, q/k, H, C]
        l0, g0, l1, g1 = self._edge_terms(phi)
        back = direction.bool().view(-1, 1, 1)
        terms = torch.where(
            back, torch.cat([l1.unsqueeze(-1), g1], -1), torch.cat([l0.unsqueeze(-1), g0], -1)
        )
        out = self.propagate(
            edge_index, qk=qk, v=v.view(n, self.m, *shape), terms=terms, direction=direction
        )
        return out.reshape(h.shape[0], -1)

    def message(
        self,
        qk_i: torch.Tensor,
        qk_j: torch.Tensor,
        v_j: torch.Tensor,
        terms: torch.Tensor,
        direction: torch.Tensor,
        index: torch.Tensor,
        ptr: torch.Tensor | None,
        size_i: int | None,
    ) -> torch.Tensor:
        rows = torch.arange(len(direction), device=direction.device)
        q, k = qk_i[rows, direction, 0], qk_j[rows, direction, 1]
        logits = (q * k).sum(-1) / math.sqrt(self.channels) + terms[..., 0]
        alpha = softmax(logits, index, ptr, size_i)
        gated = (terms[..., 1:].permute(0, 2, 1).unsqueeze(-1) * v_j).sum(1)
        return alpha.unsqueeze(-1) * gated

    # ----- dense blocks as batched matrix products -----

    def forward_blocks(self, h: torch.Tensor, view: EdgeView) -> torch.Tensor:
        """The attention output [N, hidden], dense blocks computed block-stack by block-stack.

        Per stack both directions share one layout, ``[G, ., R, S]`` (target rows, source
        columns of the forward direction): logits of both in one batched product, the backward
        direction's softmax over rows and its messages through the transposed blocks, so no
        per-edge tensor is ever permuted or copied.
        """
        n, heads, d = h.shape[0], self.heads, self.heads * self.channels
        p = self._roles(h)
        q0, k1, v, k0, q1 = self._split_roles(p)
        stacks = self._stack_logits(view, p[:, : (2 + self.m) * d], p[:, 2 * d :])
        a, b = view.sparse_index  # (source, target) of the forward direction
        sparse = self._sparse_logits(view, (q0, k0, q1, k1), a, b)
        with torch.no_grad():  # any constant per target gives the same softmax
            peak = h.new_full((n, heads), -torch.inf)
            for g, logits, _, _ in stacks:
                fwd, bwd = logits[:, :heads].amax(-1), logits[:, heads:].amax(-2)  # [G, H, .]
                for top, nodes in ((fwd, g.dst), (bwd, g.src)):
                    peak.index_reduce_(
                        0, nodes.reshape(-1), top.transpose(1, 2).flatten(0, 1), "amax"
                    )
            for s, _, target in sparse:
                peak.index_reduce_(0, target, s, "amax")
        index, nums, dens = self._stack_messages(stacks, peak)
        _, sg0, _, sg1 = self._edge_terms(view.sparse_phi)
        for (s, source, target), gates in zip(sparse, (sg0, sg1)):
            e = torch.exp(s - peak[target])
            vals = v[source].view(-1, self.m, heads, self.channels).transpose(1, 2)  # [Es, H, M, C]
            nums.append(e.unsqueeze(-1) * (gates.unsqueeze(-1) * vals).sum(2))
            dens.append(e)
            index.append(target)
        index = torch.cat(index)
        num = h.new_zeros(n, heads, self.channels).index_add(0, index, torch.cat(nums))
        den = h.new_zeros(n, heads).index_add(0, index, torch.cat(dens))
        return (num / (den.unsqueeze(-1) + 1e-16)).reshape(n, -1)

    def _stack_logits(self, view: EdgeView, at_dst: torch.Tensor, at_src: torch.Tensor) -> list:
        """Per block stack: ``(stack, logits [G, 2H, R, S] (forward heads, then backward),
        gates [G, 2, H, M, R, S], (source values, target values) [G, H, M, ., C])``.

        ``at_dst`` holds each node's forward query, backward key and values, ``at_src`` its
        values, forward key and backward query: one gather of each serves every stack.
        """
        heads, ch, m = self.heads, self.channels, self.m
        src, dst, src_sizes, dst_sizes = view.dense_index()
        at_dst, at_src = at_dst[dst].split(dst_sizes), at_src[src].split(src_sizes)
        stacks = []
        for i, (g, phi) in enumerate(view.dense):
            count, _, rows, cols = phi.shape
            t = self.edge.weight @ phi.flatten(2) + self.edge.bias[:, None]  # [G, Q, R*S]
            t = t.view(count, -1, rows, cols)
            a = at_dst[i].view(count, rows, 2 + m, heads, ch)
            b = at_src[i].view(count, cols, m + 2, heads, ch)
            qd = a[:, :, :2].permute(0, 2, 3, 1, 4).reshape(count, 2 * heads, rows, ch)
            ks = b[:, :, m:].permute(0, 2, 3, 1, 4).reshape(count, 2 * heads, cols, ch)
            logits = torch.matmul(qd, ks.transpose(-1, -2)) / math.sqrt(ch) + t[:, : 2 * heads]
            gates = t[:, 2 * heads :].view(count, 2, heads, m, rows, cols)
            values = (b[:, :, :m].permute(0, 3, 2, 1, 4), a[:, :, 2:].permute(0, 3, 2, 1, 4))
            stacks.append((g, logits, gates, values))
        return stacks

    def _stack_messages(self, stacks: list, peak: torch.Tensor) -> tuple[list, list, list]:
        """Targets, unnormalised messages [., H, C] and softmax terms [., H] of every stack in
        both directions."""
        heads, ch = self.heads, self.channels
        index, nums, dens = [], [], []
        for g, logits, gates, (vs, vd) in stacks:
            # towards the layer's outputs: softmax over each row (its sources)
            e = torch.exp(logits[:, :heads] - peak[g.dst].permute(0, 2, 1).unsqueeze(-1))
            out = (e.unsqueeze(2) * gates[:, 0]) @ vs  # [G, H, M, R, C]
            nums.append(out.sum(2).transpose(1, 2).reshape(-1, heads, ch))
            dens.append(e.sum(-1).transpose(1, 2).reshape(-1, heads))
            index.append(g.dst.reshape(-1))
            # back towards its inputs: softmax over each column (its targets)
            e = torch.exp(logits[:, heads:] - peak[g.src].permute(0, 2, 1).unsqueeze(-2))
            out = (e.unsqueeze(2) * gates[:, 1]).transpose(-1, -2) @ vd  # [G, H, M, S, C]
            nums.append(out.sum(2).transpose(1, 2).reshape(-1, heads, ch))
            dens.append(e.sum(-2).transpose(1, 2).reshape(-1, heads))
            index.append(g.src.reshape(-1))
        return index, nums, dens

    def _sparse_logits(
        self,
        view: EdgeView,
        roles: tuple[torch.Tensor, ...],
        a: torch.Tensor,
        b: torch.Tensor,
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Logits [Es, H], source and target of the sparse edges, per direction."""
        scale = 1.0 / math.sqrt(self.channels)
        q0, k0, q1, k1 = roles
        l0, _, l1, _ = self._edge_terms(view.sparse_phi)
        shape = (-1, self.heads, self.channels)
        return [
            ((q0[b] * k0[a]).view(shape).sum(-1) * scale + l0, a, b),
            ((q1[a] * k1[b]).view(shape).sum(-1) * scale + l1, b, a),
        ]


CONVS = ("transformer", "gatv2", "gine")


class PyGConv(nn.Module):
    """A ``torch_geometric`` convolution with edge features as NWPA's message passing.

    ``h <- h + conv(LN(h), edges, [phi, direction])``, then ``h <- h + FFN(LN(h))``, over the
    edge list in both directions. ``transformer`` is ``TransformerConv`` (attention whose values
    add a projection of the edge features), ``gatv2`` is ``GATv2Conv`` (edge features in the
    attention logits only), ``gine`` is ``GINEConv`` (sum of ``ReLU(h_j + W e_ij)``).

    Args:
        hidden: Node state width (divisible by ``heads``).
        edge_dim: Width of the edge features ``phi``.
        conv: ``transformer``, ``gatv2`` or ``gine``.
        heads: Attention heads (``transformer``, ``gatv2``).
        dropout: Dropout on the updates.
    """

    def __init__(
        self,
        hidden: int,
        edge_dim: int,
        conv: str = "transformer",
        heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if conv not in CONVS:
            raise ValueError(f"conv must be one of {CONVS}, got {conv!r}")
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        e = edge_dim + 1
        if conv == "transformer":
            self.conv: nn.Module = TransformerConv(hidden, hidden // heads, heads=heads, edge_dim=e)
        elif conv == "gatv2":
            self.conv = GATv2Conv(
                hidden, hidden // heads, heads=heads, edge_dim=e, add_self_loops=False
            )
        else:
            mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
            self.conv = GINEConv(mlp, edge_dim=e)
        self.norm = nn.LayerNorm(hidden)
        self.ffn = feed_forward(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, view: EdgeView) -> torch.Tensor:
        edge_index, phi, direction = view.edges()
        attr = torch.cat([phi, direction.unsqueeze(1).to(phi.dtype)], 1)
        h = h + self.dropout(self.conv(self.norm(h), edge_index, attr))
        return h + self.dropout(self.ffn(h))


class EdgeEncoder(nn.Module):
    """Edge features ``phi = MLP([kernel values zero-padded to k_max], kind)`` [., out_dim].

    Args:
        k_max: Largest kernel vector.
        out_dim: Width of ``phi``.
    """

    def __init__(self, k_max: int, out_dim: int) -> None:
        super().__init__()
        self.k_max = k_max
        self.inp = nn.Linear(k_max, out_dim)
        self.kind = nn.Embedding(EDGE_KINDS, out_dim)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, values: torch.Tensor, kind: torch.Tensor | int) -> torch.Tensor:
        """``values`` [..., k] (``k <= k_max``: the missing values are zeros) -> [..., out_dim]."""
        k = values.shape[-1]
        if k > self.k_max:
            raise ValueError(
                f"edges of {k} values; this encoder was built for at most {self.k_max}"
            )
        pre = nn.functional.linear(values, self.inp.weight[:, :k], self.inp.bias)
        kind = torch.as_tensor(kind, device=values.device)
        return self.out(pre + self.kind(kind))

    def blocks(self, w: torch.Tensor, kind: int) -> torch.Tensor:
        """A stack of weight blocks ``w`` [G, R, S, k] -> features first, [G, out_dim, R, S]."""
        count, rows, cols, k = w.shape
        if k > self.k_max:
            raise ValueError(
                f"edges of {k} values; this encoder was built for at most {self.k_max}"
            )
        bias = self.inp.bias + self.kind(torch.as_tensor(kind, device=w.device))
        pre = self.inp.weight[:, :k] @ w.view(count, rows * cols, k).transpose(1, 2)
        act = nn.functional.gelu(pre + bias[:, None])
        lin = self.out[1]
        out = lin.weight @ act + lin.bias[:, None]
        return out.view(count, -1, rows, cols)
