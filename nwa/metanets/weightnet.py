"""WeightNet: a permutation-invariant transformer over neuron tokens (seed "Permutation-Invariant Transformer")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch_geometric.data import Data

from nwa.metanets.nwpa import as_graph, graph_shapes
from nwa.weights.graph import EDGE_KINDS, NODE_KINDS, dense_groups
from nwa.weights.spec import GraphShapes, WeightShapes

POOLINGS = ("cls", "mean")


def _encoder(d_model: int, heads: int, blocks: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model,
        heads,
        dim_feedforward=2 * d_model,
        dropout=dropout,
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)


def pad_sets(
    values: torch.Tensor, owner: torch.Tensor, n_sets: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of ``values`` [n, d] grouped by ``owner`` [n] (sorted) into a zero-padded
    [n_sets, longest, d] batch, with its padding mask [n_sets, longest] (``True``: padding) and
    each row's position in it."""
    counts = torch.bincount(owner, minlength=n_sets)
    longest = int(counts.max()) if owner.numel() else 1
    pos = torch.arange(owner.numel(), device=owner.device) - (counts.cumsum(0) - counts)[owner]
    out = values.new_zeros(n_sets, longest, values.shape[1]).index_put((owner, pos), values)
    pad = torch.ones(n_sets, longest, dtype=torch.bool, device=owner.device)
    pad[owner, pos] = False
    return out, pad, pos


class WeightNet(nn.Module):
    r"""Neuron-token transformer over a network's neural graph, exactly invariant to
    hidden-neuron permutations.

    The network's neurons come in groups (a layer's outputs, a residual sum, the inputs; see
    :mod:`nwa.weights.graph`), taken level by level from the inputs. Neuron :math:`j` of a group
    is one token.

    **Token embedding.** A token starts from its own features (bias, normalization parameters,
    a position for input and output neurons only) with layer and kind embeddings,
    :math:`t^0_j = A x_j + E_\text{layer} + E_\text{kind}`. A dense block of weights
    :math:`W \in \mathbb{R}^{n_\text{out} \times n_\text{in} \times k}` into the group is indexed
    by the source group's neurons, which a permutation reorders, so each incoming weight is paired
    with the (equivariant) state :math:`h_i` of its source neuron and the pairs are averaged, a
    DeepSets sum over incoming connections:

    .. math::
        m_j = \sum_\text{blocks} \Big( P \big(\tfrac{1}{n_\text{in}} \textstyle\sum_i
            W[j, i, :] \otimes h_i\big) + E_\text{edge} \Big), \qquad
        t_j = \mathrm{LN}(t^0_j + m_j)

    (kernel vectors zero-padded to the data's largest ``k``; identity edges of residual
    connections contribute :math:`P(h_i)` of their one source). Permuting the source group
    permutes both :math:`i`-indexed factors, so :math:`m_j` is unchanged.

    **Intra-layer attention.** :math:`h = \mathrm{Enc}_\text{intra}(t)` over the neurons of one
    group with no positions (equivariant; shared weights across groups; groups of one level are
    padded into one batch with a padding mask). The group token is the mean
    :math:`s_g = \frac{1}{n_g}\sum_j h_j` (invariant), and :math:`h` feeds the groups above.

    **Cross-layer attention.** ``[CLS, s_1 + p_1, ..., s_G + p_G]`` (a group's level embedding
    :math:`p`; group order is fixed) through :math:`\mathrm{Enc}_\text{cross}` with a padding mask
    (networks differ in their number of groups), then the CLS output or the mean.

    Args:
        shapes: The data's graph shapes (linked from the data module).
        d_model: Token width; also the output size.
        heads: Attention heads in both encoders.
        intra_blocks: Transformer blocks of the intra-layer encoder.
        cross_blocks: Transformer blocks of the cross-layer encoder.
        pooling: ``"cls"`` or ``"mean"`` over the cross-layer outputs.
        dropout: Dropout inside the transformer blocks.

    Shapes:
        - input: a ``torch_geometric`` ``Batch`` of :class:`~nwa.weights.graph.NeuralGraph`
          (networks of any architectures and sizes), or a batched chain dict
          ``{"weights": [B, out_l, in_l, k_l], "biases": [B, out_l]}``
        - output: [B, out_dim] with ``out_dim = d_model``
    """

    inputs = ("graph", "chain")
    """The ``data.input`` families this encoder reads."""

    def __init__(
        self,
        shapes: GraphShapes | WeightShapes | Sequence[Sequence[int]],
        d_model: int = 64,
        heads: int = 2,
        intra_blocks: int = 1,
        cross_blocks: int = 1,
        pooling: str = "cls",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.shapes = s = graph_shapes(shapes)
        d = d_model
        self.node_in = nn.Linear(s.node_dim, d)
        self.layer_emb = nn.Embedding(s.depth + 1, d)
        self.kind_emb = nn.Embedding(NODE_KINDS, d)
        self.incoming = nn.Parameter(torch.randn(d, s.edge_dim, d) / (s.edge_dim * d) ** 0.5)
        self.incoming_bias = nn.Parameter(torch.zeros(d))
        self.edge_emb = nn.Embedding(EDGE_KINDS, d)
        self.token_norm = nn.LayerNorm(d)
        self.intra = _encoder(d, heads, intra_blocks, dropout)
        self.level_emb = nn.Embedding(s.depth + 1, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.cross = _encoder(d, heads, cross_blocks, dropout)
        self.out_norm = nn.LayerNorm(d)
        self.pooling = pooling
        self.out_dim = d

    def _project(self, m: torch.Tensor, kind: torch.Tensor | int) -> torch.Tensor:
        """``P`` on ``m`` [..., k, d] (``k`` <= edge_dim: missing values are zeros) plus the edge
        kind's embedding -> [..., d]."""
        k = m.shape[-2]
        if k > self.shapes.edge_dim:
            raise ValueError(f"edges of {k} values; WeightNet was built for {self.shapes.edge_dim}")
        out = torch.einsum("...kd,ekd->...e", m, self.incoming[:, :k]) + self.incoming_bias
        return out + self.edge_emb(torch.as_tensor(kind, device=m.device))

    def _messages(
        self, h: torch.Tensor, blocks: list, sparse: tuple, level: int, group_level: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets and incoming messages of the groups at ``level``, from final source states."""
        index, values = [], []
        for g in blocks:
            if int(group_level[g.dst_group[0]]) != level:
                continue
            count, rows, cols, _ = g.w.shape
            m = torch.einsum("grsk,gsd->grkd", g.w, h[g.src]) / cols
            index.append(g.dst.reshape(-1))
            values.append(self._project(m, g.kind).reshape(count * rows, -1))
        src, dst, attr, kind, at_level, share = sparse
        keep = at_level == level
        if keep.any():
            m = attr[keep].view(-1, 1, 1) * h[src[keep]].unsqueeze(1)  # [Es, 1, d]
            index.append(dst[keep])
            values.append(self._project(m, kind[keep]) * share[keep].unsqueeze(1))
        if not index:
            return h.new_zeros(0, dtype=torch.long), h.new_zeros(0, h.shape[1])
        return torch.cat(index), torch.cat(values)

    def forward(self, graph: Data | Mapping[str, Sequence[torch.Tensor]]) -> torch.Tensor:
        graph = as_graph(graph)
        if graph.layer.numel() and int(graph.layer.max()) > self.shapes.depth:
            raise ValueError(
                f"WeightNet built for graphs of depth {self.shapes.depth}; "
                f"this one has {int(graph.layer.max())}"
            )
        n = graph.num_nodes
        t0 = self.node_in(graph.x) + self.layer_emb(graph.layer) + self.kind_emb(graph.node_kind)
        node_group, group_level = graph.node_group, graph.group_level
        blocks = dense_groups(graph, by_level=True)
        sparse = self._sparse(graph)
        h = torch.zeros_like(t0)
        tokens = t0.new_zeros(group_level.numel(), t0.shape[1])
        for level in range(int(group_level.max()) + 1 if group_level.numel() else 0):
            groups = (group_level == level).nonzero().squeeze(1)
            nodes = torch.isin(node_group, groups).nonzero().squeeze(1)
            index, values = self._messages(h, blocks, sparse, level, group_level)
            m = t0.new_zeros(n, t0.shape[1]).index_add(0, index, values)[nodes]
            rank = torch.searchsorted(groups, node_group[nodes])
            padded, pad, pos = pad_sets(self.token_norm(t0[nodes] + m), rank, len(groups))
            out = self.intra(padded, src_key_padding_mask=pad)
            h = h.index_put((nodes,), out[rank, pos])
            keep = (~pad).unsqueeze(-1).to(out.dtype)
            tokens = tokens.index_put((groups,), (out * keep).sum(1) / keep.sum(1))
        return self._cross(tokens, graph)

    def _sparse(self, graph: Data) -> tuple[torch.Tensor, ...]:
        """Sparse edges with their target level and ``1 / count`` per (target, kind), so each
        kind's messages into a node are averaged."""
        src, dst = graph.sparse_edge_index
        kind = graph.sparse_kind
        key = dst * EDGE_KINDS + kind
        count = torch.bincount(key, minlength=int(key.max()) + 1 if key.numel() else 1)[key]
        level = graph.group_level[graph.node_group[dst]]
        return src, dst, graph.sparse_attr[:, 0], kind, level, 1.0 / count.to(graph.x.dtype)

    def _cross(self, tokens: torch.Tensor, graph: Data) -> torch.Tensor:
        """Cross-layer attention over each network's group tokens, then pooling."""
        sizes = graph.group_size
        owner = getattr(graph, "batch", None)
        if owner is None:
            owner = torch.zeros(graph.num_nodes, dtype=torch.long, device=tokens.device)
        size = int(getattr(graph, "num_graphs", 1))
        group_owner = owner[graph.group_first_index] if sizes.numel() else owner[:0]
        z = tokens + self.level_emb(graph.group_level)
        padded, pad, _ = pad_sets(z, group_owner, size)
        if self.pooling == "cls":
            padded = torch.cat([self.cls.expand(size, -1, -1), padded], 1)
            pad = torch.cat([pad.new_zeros(size, 1), pad], 1)
        out = self.cross(padded, src_key_padding_mask=pad)
        if self.pooling == "cls":
            return self.out_norm(out[:, 0])
        keep = (~pad).unsqueeze(-1).to(out.dtype)
        return self.out_norm((out * keep).sum(1) / keep.sum(1))
