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
        dense: ``(block stack, phi [G, R, S, P])`` pairs.
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
                count, rows, cols = p.shape[:3]
                index.append(
                    torch.stack(
                        [
                            g.src[:, None, :].expand(count, rows, cols).reshape(-1),
                            g.dst[:, :, None].expand(count, rows, cols).reshape(-1),
                        ]
                    )
                )
                phi.append(p.reshape(-1, p.shape[-1]))
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

    def _roles(self, h: torch.Tensor) -> list[torch.Tensor]:
        """``q0, k0, q1, k1`` [N, H*C] (query and key per direction) and the values
        [N, M*H*C] (shared by both directions), as column splits of one projection (split,
        not selected: its backward concatenates instead of zero-filling)."""
        d = self.heads * self.channels
        return list(self.proj(self.norm(h)).split([d, d, d, d, self.m * d], dim=1))

    def _edge_terms(self, phi: torch.Tensor) -> list[torch.Tensor]:
        """Per direction the logit term [..., H] and the gates [..., H, M] (split, not sliced:
        the backward of a slice would zero-fill a tensor of the whole projection per use)."""
        h, m = self.heads, self.m
        l0, g0, l1, g1 = self.edge(phi).split([h, h * m, h, h * m], -1)
        return [l0, g0.unflatten(-1, (h, m)), l1, g1.unflatten(-1, (h, m))]

    # ----- the edge list (torch_geometric) -----

    def forward_edges(self, h: torch.Tensor, view: EdgeView) -> torch.Tensor:
        """The attention output [N, hidden] computed edge by edge."""
        edge_index, phi, direction = view.edges()
        n, shape = h.shape[0], (self.heads, self.channels)
        q0, k0, q1, k1, v = self._roles(h)
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
        """The attention output [N, hidden], dense blocks computed block-stack by block-stack."""
        n, heads, ch, m = h.shape[0], self.heads, self.channels, self.m
        scale = 1.0 / math.sqrt(ch)
        q0, k0, q1, k1, v = self._roles(h)
        src, dst, src_sizes, dst_sizes = view.dense_index()
        at_src = [t[src].split(src_sizes) for t in (k0, q1, v)]
        at_dst = [t[dst].split(dst_sizes) for t in (q0, k1, v)]
        stacks = []  # per direction: (logits [G, H, T, U], gates [G, T, U, H, M], values, targets)
        for i, (g, phi) in enumerate(view.dense):
            count, rows, cols = phi.shape[:3]
            (ks, qs, vs), (qd, kd, vd) = ([t[i] for t in at] for at in (at_src, at_dst))
            l0, g0, l1, g1 = self._edge_terms(phi)  # [G, R, S, H] and [G, R, S, H, M]
            fwd = torch.einsum(
                "grhc,gshc->ghrs", qd.view(count, rows, heads, ch), ks.view(count, cols, heads, ch)
            )
            bwd = torch.einsum(
                "gshc,grhc->ghsr", qs.view(count, cols, heads, ch), kd.view(count, rows, heads, ch)
            )
            stacks.append(
                (
                    fwd * scale + l0.permute(0, 3, 1, 2),
                    g0,
                    vs.view(count, cols, m, heads, ch),
                    g.dst,
                )
            )
            bwd = bwd * scale + l1.permute(0, 3, 2, 1)
            stacks.append((bwd, g1.transpose(1, 2), vd.view(count, rows, m, heads, ch), g.src))
        a, b = view.sparse_index  # (source, target) of the forward direction
        sl0, sg0, sl1, sg1 = self._edge_terms(view.sparse_phi)
        sparse = [  # (logits [Es, H], gates [Es, H, M], source values, targets)
            ((q0[b] * k0[a]).view(-1, heads, ch).sum(-1) * scale + sl0, sg0, v[a], b),
            ((q1[a] * k1[b]).view(-1, heads, ch).sum(-1) * scale + sl1, sg1, v[b], a),
        ]
        with torch.no_grad():  # any constant per target gives the same softmax
            peak = h.new_full((n, heads), -torch.inf)
            for s, _, _, targets in stacks:
                top = s.amax(-1).transpose(1, 2).reshape(-1, heads)
                peak.index_reduce_(0, targets.reshape(-1), top, "amax")
            for s, _, _, targets in sparse:
                peak.index_reduce_(0, targets, s, "amax")
        index, nums, dens = [], [], []
        for s, gates, values, targets in stacks:
            num, den = self._messages(s, gates, values, peak[targets].permute(0, 2, 1))
            index.append(targets.reshape(-1))
            nums.append(num)
            dens.append(den)
        for s, gates, values, targets in sparse:
            e = torch.exp(s - peak[targets])
            gated = (gates.unsqueeze(-1) * values.view(-1, m, heads, ch).transpose(1, 2)).sum(2)
            index.append(targets)
            nums.append(e.unsqueeze(-1) * gated)
            dens.append(e)
        index = torch.cat(index)
        num = h.new_zeros(n, heads, ch).index_add(0, index, torch.cat(nums))
        den = h.new_zeros(n, heads).index_add(0, index, torch.cat(dens))
        return (num / (den.unsqueeze(-1) + 1e-16)).reshape(n, -1)

    def _messages(
        self, logits: torch.Tensor, gates: torch.Tensor, values: torch.Tensor, peak: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block stack's unnormalised messages [G * T, H, C] and softmax terms [G * T, H]:
        ``logits`` [G, H, T, U], ``gates`` [G, T, U, H, M], source ``values`` [G, U, M, H, C],
        ``peak`` [G, H, T]."""
        count, heads, nt, _ = logits.shape
        e = torch.exp(logits - peak.unsqueeze(-1))
        a = e.unsqueeze(3) * gates.permute(0, 3, 1, 4, 2)  # [G, H, T, M, U]
        v = values.permute(0, 3, 2, 1, 4).reshape(count, heads, -1, self.channels)  # [G, H, M*U, C]
        out = a.reshape(count, heads, nt, -1) @ v
        den = e.sum(-1).transpose(1, 2).reshape(-1, heads)
        return out.transpose(1, 2).reshape(-1, heads, self.channels), den


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
