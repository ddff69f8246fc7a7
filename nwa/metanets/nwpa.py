"""NWPA: attention message passing on the neural graph of a network (seed "Neural Weight Archeology")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.nn import GATv2Conv, global_add_pool, global_mean_pool
from torch_geometric.nn.aggr import AttentionalAggregation

from nwa.metanets.gatv2_dense import gatv2_chain, supports
from nwa.weights.graph import (
    NODE_DIM,
    batched_edge_index,
    chain_batch_to_graph,
    chain_node_features,
    chain_template,
    check_chain_batch,
)
from nwa.weights.spec import WeightShapes, from_shapes

POOLINGS = ("mean", "add", "attention")


class NWPA(nn.Module):
    r"""Graph attention network on a neural graph (:mod:`nwa.weights.graph`), pooled to a vector.

    Nodes are neurons, edges are weights. With node features :math:`x_v` (bias, kind flags,
    positional code for input/output neurons only), node group (layer) :math:`\ell_v` and kind
    :math:`\kappa_v`:

    .. math::
        h_v^{(0)} = A x_v + E_\text{layer}[\ell_v] + E_\text{kind}[\kappa_v]

        h_v^{(t+1)} = \mathrm{LN}\big(h_v^{(t)} + \mathrm{GELU}(
            \mathrm{GATv2}(h^{(t)}, \{(u, v, e_{uv})\}))\big)

        z = \mathrm{MLP}\big(\mathrm{pool}_v\, h_v^{(T)}\big)

    GATv2 attends over neighbours with the edge features in the attention logits (the messages
    are the neighbours' projected states, so a weight acts through how much attention its source
    neuron gets); every weight edge is used in both directions, with a direction flag appended to
    its kernel vector (``edge_dim + 1`` features). ``pool`` is the mean, the sum, or attentional
    aggregation (softmax gate over nodes).

    Computation: a neural graph is a stack of complete bipartite blocks, so when the input is a
    batched chain, or a graph batch laid out as :func:`~nwa.weights.graph.chain_to_graph` lays out
    chains of the shapes given here, the GATv2 layers run block-wise
    (:func:`nwa.metanets.gatv2_dense.gatv2_chain`: the same parameters and the same function, without
    per-edge ``[E, hidden]`` tensors). Any other graph goes through ``GATv2Conv`` edge by edge.

    Invariance: hidden neurons carry no positional feature and every operation is a node-wise
    map, a neighbourhood aggregation or a global pooling, so relabelling the hidden neurons of any
    layer (with their edges) leaves ``z`` unchanged up to float summation order.

    Args:
        node_dim: Width of the graph's node features (``nwa.weights.graph.NODE_DIM``).
        edge_dim: Width of the graph's edge features (the largest kernel size k in the chain).
        depth: Number of weight layers L in the chain (node groups 0..L get layer embeddings).
        hidden: Node state width (divisible by ``heads``); also the output size.
        heads: Attention heads per GATv2 layer.
        layers: Message-passing rounds T.
        pooling: ``"mean"``, ``"add"`` or ``"attention"``.
        dropout: Dropout on the message-passing updates.

    Shapes:
        - input: a ``torch_geometric`` ``Batch`` of :func:`~nwa.weights.graph.chain_to_graph`
          graphs (``x`` [N, node_dim], ``edge_attr`` [E, edge_dim], ``layer`` and ``node_kind``
          [N]), or a batched chain dict ``{"weights": [B, out_l, in_l, k_l], "biases": [B, out_l]}``
        - output: [B, out_dim] with ``out_dim = hidden``
    """

    def __init__(
        self,
        chain_shapes: Sequence[Sequence[int]] | WeightShapes,
        hidden: int = 64,
        heads: int = 4,
        layers: int = 3,
        pooling: str = "mean",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        chain_shapes = from_shapes(chain_shapes, "chain")
        if not chain_shapes:
            raise ValueError("NWPA needs the chain's layer shapes (input: graph or chain)")
        self.node_dim = NODE_DIM
        self.chain_shapes = [tuple(int(v) for v in s) for s in chain_shapes]
        self.edge_dim = max(int(s[2]) for s in chain_shapes)
        self.depth = len(chain_shapes)
        self.node_in = nn.Linear(self.node_dim, hidden)
        self.layer_emb = nn.Embedding(self.depth + 1, hidden)
        self.kind_emb = nn.Embedding(3, hidden)
        self.convs = nn.ModuleList(
            GATv2Conv(
                hidden,
                hidden // heads,
                heads=heads,
                edge_dim=self.edge_dim + 1,
                add_self_loops=False,
            )
            for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.pooling = pooling
        if pooling == "attention":
            self.pool = AttentionalAggregation(
                nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
            )
        self.readout = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.out_dim = hidden
        self._index_cache: dict[tuple[int, torch.device], torch.Tensor] = {}

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state["_index_cache"] = {}  # a cache, not state: never pickled or deep-copied
        return state

    def _pool(self, h: torch.Tensor, batch: torch.Tensor, size: int) -> torch.Tensor:
        if self.pooling == "mean":
            return global_mean_pool(h, batch, size)
        if self.pooling == "add":
            return global_add_pool(h, batch, size)
        return self.pool(h, batch, dim_size=size)

    def _dense_blocks(self, graph: Data) -> list[torch.Tensor] | None:
        """The per-layer edge features [B, out, in, k_max] of a graph batch laid out as the chain
        this model was built for, or ``None`` if its graphs are anything else."""
        t = chain_template(self.chain_shapes)
        n, e = int(t["num_nodes"]), t["edge_index"].shape[1]
        x, ei, ea = graph.x, graph.edge_index, graph.edge_attr
        if x.shape[0] % n or ei.shape != (2, x.shape[0] // n * e) or ea.shape[0] != ei.shape[1]:
            return None
        bsz = x.shape[0] // n
        key = (bsz, ei.device)
        want = self._index_cache.get(key)
        if want is None:
            want = batched_edge_index(t, bsz, ei.device)
            if len(self._index_cache) >= 4:
                self._index_cache.pop(next(iter(self._index_cache)))
            self._index_cache[key] = want
        if ei.dtype != want.dtype or not torch.equal(ei, want):
            return None
        edges = ea.reshape(bsz, e, ea.shape[1])
        blocks, e0 = [], 0
        for out, inp, _ in self.chain_shapes:
            blocks.append(edges[:, e0 : e0 + out * inp].view(bsz, out, inp, ea.shape[1]))
            e0 += out * inp
        return blocks

    def forward(self, graph: Data | Mapping[str, Sequence[torch.Tensor]]) -> torch.Tensor:
        dense = all(supports(c) for c in self.convs)
        if isinstance(graph, Mapping):
            if dense:
                return self._forward_chain(list(graph["weights"]), list(graph["biases"]))
            graph = chain_batch_to_graph(graph)
        x, ea = graph.x, graph.edge_attr
        if x.shape[1] != self.node_dim or ea.shape[1] != self.edge_dim:
            raise ValueError(
                f"NWPA built for node_dim={self.node_dim}, edge_dim={self.edge_dim}; "
                f"the graph has {x.shape[1]} and {ea.shape[1]}"
            )
        if int(graph.layer.max()) > self.depth:
            raise ValueError(
                f"NWPA built for chains of {self.depth} layers; the graph has {int(graph.layer.max())}"
            )
        batch = getattr(graph, "batch", None)
        if batch is None:
            batch = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        size = int(graph.num_graphs) if hasattr(graph, "num_graphs") else int(batch.max()) + 1
        h = self.node_in(x) + self.layer_emb(graph.layer) + self.kind_emb(graph.node_kind)
        blocks = self._dense_blocks(graph) if dense else None
        if blocks is not None:
            return self._run(h, batch, size, blocks=blocks)
        return self._run(h, batch, size, edges=(graph.edge_index, ea))

    def _forward_chain(
        self, weights: list[torch.Tensor], biases: list[torch.Tensor]
    ) -> torch.Tensor:
        """A batched chain straight to the block-wise layers (no edge list is built)."""
        check_chain_batch(weights, biases)
        k_max = max(int(w.shape[3]) for w in weights)
        if k_max != self.edge_dim:
            raise ValueError(
                f"NWPA built for node_dim={self.node_dim}, edge_dim={self.edge_dim}; "
                f"the graph has {self.node_dim} and {k_max}"
            )
        if len(weights) > self.depth:
            raise ValueError(
                f"NWPA built for chains of {self.depth} layers; the graph has {len(weights)}"
            )
        bsz = weights[0].shape[0]
        x = chain_node_features(weights, biases)
        n = x.shape[1]
        t = chain_template([w.shape[1:] for w in weights])
        layer = t["layer"].to(x.device).repeat(bsz)
        kind = t["node_kind"].to(x.device).repeat(bsz)
        batch = torch.arange(bsz, device=x.device).repeat_interleave(n)
        h = self.node_in(x.reshape(bsz * n, -1)) + self.layer_emb(layer) + self.kind_emb(kind)
        return self._run(h, batch, bsz, blocks=weights)

    def _run(
        self,
        h: torch.Tensor,
        batch: torch.Tensor,
        size: int,
        blocks: list[torch.Tensor] | None = None,
        edges: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Message passing from the initial node states, then pooling and readout."""
        if blocks is not None:
            bsz = blocks[0].shape[0]

            def conv_fn(conv: GATv2Conv, h: torch.Tensor) -> torch.Tensor:
                return gatv2_chain(conv, h.view(bsz, -1, h.shape[1]), blocks).flatten(0, 1)
        else:
            assert edges is not None
            ei, ea = edges
            ones, zeros = ea.new_ones(ea.shape[0], 1), ea.new_zeros(ea.shape[0], 1)
            edge_index = torch.cat([ei, ei.flip(0)], dim=1)
            edge_attr = torch.cat([torch.cat([ea, zeros], 1), torch.cat([ea, ones], 1)], dim=0)

            def conv_fn(conv: GATv2Conv, h: torch.Tensor) -> torch.Tensor:
                return conv(h, edge_index, edge_attr)

        for conv, norm in zip(self.convs, self.norms):
            h = norm(h + self.dropout(self.act(conv_fn(conv, h))))
        return self.readout(self._pool(h, batch, size))
