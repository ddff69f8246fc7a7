"""StatNN features against numpy; chains and neural graphs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from nwa.errors import ShapeMismatchError
from nwa.weights.chain import (
    chain_batch_to_graph,
    chain_from_tensors,
    chain_shapes,
    chain_to_graph,
)
from nwa.weights.graph import (
    F_BIAS,
    F_POS,
    NODE_DIM,
    NODE_HIDDEN,
    NODE_INPUT,
    NODE_OUTPUT,
    edge_list,
)
from nwa.weights.stats import statnn_feature_names, statnn_features, statnn_features_batched


def test_statnn_features_match_numpy():
    gen = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(7, 5, generator=gen),
        torch.arange(11.0) ** 2,
        torch.randn(3, 2, 3, 3, generator=gen),
    ]
    feats = statnn_features(tensors)
    assert feats.shape == (21,)
    expect = []
    for t in tensors:
        a = t.numpy().astype(np.float64).ravel()
        expect += [a.mean(), a.std(), *np.quantile(a, [0, 0.25, 0.5, 0.75, 1.0])]
    np.testing.assert_allclose(feats.numpy(), np.array(expect), rtol=1e-5, atol=1e-6)
    # a hand-checked case: 0, 1, 4, ..., 100
    assert feats[7:14].tolist() == pytest.approx(
        [35.0, math.sqrt(25333 / 11 - 35.0**2), 0.0, 6.5, 25.0, 56.5, 100.0], rel=1e-6
    )
    names = statnn_feature_names(["a", "b", "c"])
    assert len(names) == 21 and names[8] == "b/std"


def test_statnn_batched_matches_single():
    gen = torch.Generator().manual_seed(1)
    batch = [torch.randn(4, 6, 3, generator=gen), torch.randn(4, 6, generator=gen)]
    out = statnn_features_batched(batch)
    assert out.shape == (4, 14)
    for b in range(4):
        torch.testing.assert_close(out[b], statnn_features([t[b] for t in batch]))


def test_chain_from_tensors_shapes_and_errors():
    ws = [torch.randn(8, 1, 3, 3), torch.randn(8, 8, 3, 3), torch.randn(10, 8)]
    cw, cb = chain_from_tensors(ws, [torch.randn(8), None, torch.randn(10)])
    assert chain_shapes(cw) == [(8, 1, 9), (8, 8, 9), (10, 8, 1)]
    assert torch.equal(cb[1], torch.zeros(8))
    assert torch.equal(cw[2][:, :, 0], ws[2])
    with pytest.raises(
        ShapeMismatchError, match=r"fc \(\d\).* takes 72 inputs but layer 1 \(conv2\) has 8 outputs"
    ):
        chain_from_tensors([ws[0], ws[1], torch.randn(10, 72)], None, ["conv1", "conv2", "fc (2)"])
    with pytest.raises(ShapeMismatchError, match="does not match 8 outputs"):
        chain_from_tensors(ws, [torch.randn(7), None, None])


def test_chain_to_graph_layout():
    gen = torch.Generator().manual_seed(0)
    ws = [
        torch.randn(8, 1, 3, 3, generator=gen),
        torch.randn(8, 8, 3, 3, generator=gen),
        torch.randn(10, 8, generator=gen),
    ]
    bs = [
        torch.randn(8, generator=gen),
        torch.randn(8, generator=gen),
        torch.randn(10, generator=gen),
    ]
    g = chain_to_graph(ws, bs)
    edge_index, edge_attr, _ = edge_list(g)
    assert g.num_nodes == 1 + 8 + 8 + 10 and g.x.shape == (27, NODE_DIM)
    assert edge_index.shape == (2, 8 + 64 + 80) and edge_attr.shape == (152, 9)
    assert g.layer.tolist() == [0] + [1] * 8 + [2] * 8 + [3] * 10
    assert g.node_kind.tolist() == [NODE_INPUT] + [NODE_HIDDEN] * 16 + [NODE_OUTPUT] * 10
    assert torch.equal(g.x[1:9, F_BIAS], bs[0]) and g.x[0, F_BIAS] == 0
    assert torch.all(g.x[1:17, F_POS:] == 0), "hidden neurons carry no position"
    assert torch.any(g.x[17:, F_POS:] != 0) and torch.any(g.x[:1, F_POS:] != 0)
    # edge from input-side neuron i of conv2 (node 1 + i) to its neuron j (node 9 + j)
    hit = ((edge_index[0] == 1 + 3) & (edge_index[1] == 9 + 5)).nonzero().item()
    torch.testing.assert_close(edge_attr[hit], ws[1][5, 3].reshape(-1))
    hit = ((edge_index[0] == 9 + 2) & (edge_index[1] == 17 + 7)).nonzero().item()
    assert edge_attr[hit, 0] == ws[2][7, 2] and torch.all(edge_attr[hit, 1:] == 0)


def test_chain_batch_to_graph_equals_from_data_list():
    gen = torch.Generator().manual_seed(0)
    models = [
        chain_from_tensors(
            [torch.randn(5, 3, generator=gen), torch.randn(4, 5, 2, 2, generator=gen)],
            [None, torch.randn(4, generator=gen)],
        )
        for _ in range(3)
    ]
    ref = Batch.from_data_list([chain_to_graph(w, b) for w, b in models])
    chain = {
        k: [torch.stack([m[i][layer] for m in models]) for layer in range(2)]
        for i, k in enumerate(("weights", "biases"))
    }
    got = chain_batch_to_graph(chain)
    assert got.num_graphs == 3
    for key in ("x", "w", "block_offset", "block_src_index", "layer", "node_kind", "batch", "ptr"):
        assert torch.equal(getattr(got, key), getattr(ref, key)), key
    for a, b in zip(edge_list(got), edge_list(ref)):
        assert torch.equal(a, b)
