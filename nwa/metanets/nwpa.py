"""NWPA: attention message passing on the neural graph of a network (seed "Neural Weight Archeology")."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.nn import global_add_pool, global_mean_pool
from torch_geometric.nn.aggr import AttentionalAggregation

from nwa.metanets.graph_layers import EdgeEncoder, EdgeView, WeightAttention
from nwa.weights.chain import chain_batch_to_graph
from nwa.weights.graph import (
    NODE_DIM,
    NODE_KINDS,
    NODE_OUTPUT,
    dense_groups,
)
from nwa.weights.spec import GraphShapes, WeightShapes

POOLINGS = ("mean", "add", "attention")
LayerFactory = Callable[[int, int], nn.Module]


def graph_shapes(shapes: GraphShapes | WeightShapes | Sequence[Sequence[int]]) -> GraphShapes:
    """The graph shapes an encoder is built for: from the data's :class:`WeightShapes` (its
    ``graph``, else its ``chain``), a :class:`GraphShapes`, or a chain's ``(out, in, k)`` list."""
    if isinstance(shapes, GraphShapes):
        return shapes
    if isinstance(shapes, WeightShapes):
        if shapes.graph is not None:
            return shapes.graph
        shapes = shapes.chain
    chain = [tuple(int(v) for v in s) for s in shapes]
    if not chain:
        raise ValueError("a graph encoder needs the data's graph shapes (input: graph or chain)")
    return GraphShapes(NODE_DIM, max(s[2] for s in chain), len(chain), chain[-1][0])


def as_graph(batch: Data | Mapping[str, Sequence[torch.Tensor]]) -> Data:
    """A graph batch as is; a batched chain dict as the graphs of its chains."""
    return chain_batch_to_graph(batch) if isinstance(batch, Mapping) else batch


class NWPA(nn.Module):
    r"""Message passing on neural graphs (:mod:`nwa.weights.graph`), read out to a vector.

    Nodes are neurons, edges are weights. With node features :math:`x_v` (bias, normalization
    parameters, a position only for input/output neurons), layer :math:`\ell_v` and kind
    :math:`\kappa_v`, and edge features from the kernel values and edge kind:

    .. math::
        h_v^{(0)} = A x_v + E_\text{layer}[\ell_v] + E_\text{kind}[\kappa_v], \qquad
        \phi_{uv} = \mathrm{MLP}(w_{uv}, \kappa_{uv})

        h^{(t+1)} = \mathrm{Layer}_t(h^{(t)}, \phi), \qquad
        z = \mathrm{MLP}\big([\mathrm{pool}_v\, \mathrm{LN}(h_v^{(T)}),
            \mathrm{LN}(h_{o_1}^{(T)}), \dots, \mathrm{LN}(h_{o_K}^{(T)})]\big)

    The layer is :class:`~nwa.metanets.graph_layers.WeightAttention` by default (attention over
    neighbours, messages gated by the weight: the seed's MESSAGE(h_i, h_j, e_ij)); ``layer``
    takes any ``(hidden, edge_dim) -> module`` factory, e.g.
    :class:`~nwa.metanets.graph_layers.PyGConv`. ``pool`` is the mean, sum or attentional
    aggregation (softmax gate over nodes); with ``outputs`` the states of the output neurons
    :math:`o_1 \dots o_K` (fixed order: a class's neuron) join the pooled vector, zero-padded to
    the data's largest ``K``.

    Invariance: hidden neurons carry no positional feature and every operation is a node-wise
    map, an aggregation over neighbours or a pooling; output neurons are read in their fixed
    order. Relabelling hidden neurons (with their edges) leaves ``z`` unchanged up to float
    summation order.

    Args:
        shapes: The data's graph shapes (linked from the data module).
        hidden: Node state width; also the output size.
        layers: Message-passing rounds T.
        edge_dim: Width of the edge features ``phi``.
        layer: Factory of one round, called as ``layer(hidden, edge_dim)``; ``None``:
            ``WeightAttention`` with its defaults (4 heads, 2 gated value maps).
        pooling: ``"mean"``, ``"add"`` or ``"attention"``.
        outputs: Also read out the output neurons' states, in order.
        dropout: Dropout on the message-passing updates (default layer only).

    Shapes:
        - input: a ``torch_geometric`` ``Batch`` of :class:`~nwa.weights.graph.NeuralGraph`
          (networks of any architectures and sizes), or a batched chain dict
          ``{"weights": [B, out_l, in_l, k_l], "biases": [B, out_l]}``
        - output: [B, out_dim] with ``out_dim = hidden``
    """

    inputs = ("graph", "chain")
    """The ``data.input`` families this encoder reads."""

    def __init__(
        self,
        shapes: GraphShapes | WeightShapes | Sequence[Sequence[int]],
        hidden: int = 64,
        layers: int = 3,
        edge_dim: int = 16,
        layer: LayerFactory | None = None,
        pooling: str = "attention",
        outputs: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.shapes = graph_shapes(shapes)
        s = self.shapes
        self.node_in = nn.Linear(s.node_dim, hidden)
        self.layer_emb = nn.Embedding(s.depth + 1, hidden)
        self.kind_emb = nn.Embedding(NODE_KINDS, hidden)
        self.edges = EdgeEncoder(s.edge_dim, edge_dim)
        if layer is None:
            self.layers = nn.ModuleList(
                WeightAttention(hidden, edge_dim, dropout=dropout) for _ in range(layers)
            )
        else:
            self.layers = nn.ModuleList(layer(hidden, edge_dim) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.pooling = pooling
        if pooling == "attention":
            self.pool = AttentionalAggregation(
                nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
            )
        self.n_outputs = s.outputs if outputs else 0
        self.readout = nn.Sequential(
            nn.Linear(hidden * (1 + self.n_outputs), hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.out_dim = hidden

    def view(self, graph: Data) -> EdgeView:
        """The batch's blocks with their edge features (computed once for every layer)."""
        dense = [(g, self.edges.blocks(g.w, g.kind)) for g in dense_groups(graph)]
        return EdgeView(
            graph.num_nodes,
            dense,
            graph.sparse_edge_index,
            self.edges(graph.sparse_attr, graph.sparse_kind),
        )

    def _check(self, graph: Data) -> None:
        s = self.shapes
        if graph.x.shape[1] != s.node_dim:
            raise ValueError(
                f"NWPA built for node_dim={s.node_dim}; the graph has {graph.x.shape[1]}"
            )
        if graph.layer.numel() and int(graph.layer.max()) > s.depth:
            raise ValueError(
                f"NWPA built for graphs of depth {s.depth}; this one has {int(graph.layer.max())}"
            )

    def forward(self, graph: Data | Mapping[str, Sequence[torch.Tensor]]) -> torch.Tensor:
        graph = as_graph(graph)
        self._check(graph)
        batch, size = _batch_vector(graph)
        h = self.node_in(graph.x) + self.layer_emb(graph.layer) + self.kind_emb(graph.node_kind)
        view = self.view(graph)
        for layer in self.layers:
            h = layer(h, view)
        h = self.norm(h)
        parts = [self._pool(h, batch, size)]
        if self.n_outputs:
            parts.append(output_states(h, graph.node_kind, batch, size, self.n_outputs).flatten(1))
        return self.readout(torch.cat(parts, 1))

    def _pool(self, h: torch.Tensor, batch: torch.Tensor, size: int) -> torch.Tensor:
        if self.pooling == "mean":
            return global_mean_pool(h, batch, size)
        if self.pooling == "add":
            return global_add_pool(h, batch, size)
        return self.pool(h, batch, dim_size=size)


def _batch_vector(graph: Data) -> tuple[torch.Tensor, int]:
    batch = getattr(graph, "batch", None)
    if batch is None:
        return torch.zeros(graph.num_nodes, dtype=torch.long, device=graph.x.device), 1
    return batch, int(graph.num_graphs)


def output_states(
    h: torch.Tensor, kind: torch.Tensor, batch: torch.Tensor, size: int, n: int
) -> torch.Tensor:
    """[B, n, hidden]: each graph's output-neuron states in order, zero-padded to ``n``.

    Raises:
        ValueError: A graph has more than ``n`` output neurons.
    """
    idx = (kind == NODE_OUTPUT).nonzero().squeeze(1)
    owner = batch[idx]
    counts = torch.bincount(owner, minlength=size)
    if idx.numel() and int(counts.max()) > n:
        raise ValueError(f"a graph has {int(counts.max())} output neurons; this encoder reads {n}")
    rank = torch.arange(idx.numel(), device=h.device) - (counts.cumsum(0) - counts)[owner]
    out = h.new_zeros(size, n, h.shape[1])
    out[owner, rank] = h[idx]
    return out
