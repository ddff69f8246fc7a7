"""NWPA and WeightNet on neural graphs of whole networks: invariance, mixed batches, and the
block-wise message passing against its torch_geometric edge-list form."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from nwa.metanets import NWPA, WeightNet
from nwa.metanets.graph_layers import PyGConv, WeightAttention
from nwa.weights.graph import graph_shapes_of
from nwa.weights.graph_archs import plan_graph
from nwa.weights.symmetry import permute_network, random_network_permutation
from tests.networks import NETWORKS, float_state, network

FAMILIES = ("mlp", "cnn", "resnet", "vit")


def _graphs(names, seed=0):
    plans, states = [], []
    for name in names:
        model, _, heads = network(name, seed)
        states.append(float_state(model))
        plans.append(plan_graph({k: v.shape for k, v in states[-1].items()}, name, heads=heads))
    return plans, states


def _encoders(shapes):
    torch.manual_seed(0)
    transformer = lambda hidden, edge_dim: PyGConv(hidden, edge_dim, conv="transformer", heads=2)  # noqa: E731
    return {
        "nwpa": NWPA(shapes, hidden=16, layers=2),
        "nwpa-mean": NWPA(shapes, hidden=16, layers=2, pooling="mean"),
        "nwpa-transformer": NWPA(shapes, hidden=16, layers=2, layer=transformer),
        "weightnet": WeightNet(shapes, d_model=16, heads=2),
    }


HEAVY = {"resnet_bottleneck"}  # over 10 s on 2 cores: run with the slow tests


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in sorted(NETWORKS)]
)
def test_invariance_to_hidden_permutations_of_whole_networks(name):
    """Residual streams, downsample shortcuts, attention heads, flatten layers: every hidden
    symmetry of the network leaves every graph encoder's output unchanged (1e-5)."""
    (plan,), (state,) = _graphs([name])
    gen = torch.Generator().manual_seed(3)
    permuted = permute_network(state, plan, random_network_permutation(plan, gen))
    out = next(i for i, g in enumerate(plan.groups) if g.positional and i > 0)
    moved = permute_network(state, plan, {out: torch.roll(torch.arange(plan.groups[out].size), 1)})
    graphs = [plan.build(s) for s in (state, permuted, moved)]
    for enc_name, enc in _encoders(graph_shapes_of([plan])).items():
        enc.eval()
        with torch.no_grad():
            ref, got = (enc(Batch.from_data_list([g])) for g in graphs[:2])
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5, msg=f"{enc_name} on {name}")
        # reordering the outputs is no symmetry (in float64, far above the summation noise)
        enc.double()
        with torch.no_grad():
            ref, got, other = (enc(Batch.from_data_list([_double(g)])) for g in graphs)
        noise, moved_by = (got - ref).abs().max(), (other - ref).abs().max()
        assert noise < 1e-12 and moved_by > 1e-8, f"{enc_name} ignores the output order of {name}"


def _double(g):
    g = g.clone()
    g.x, g.w, g.sparse_attr = g.x.double(), g.w.double(), g.sparse_attr.double()
    return g


def test_mixed_batch_equals_each_model_alone():
    """An MLP, a CNN, a ResNet and a ViT in one batch: each model's output is its output alone."""
    plans, states = _graphs(FAMILIES)
    graphs = [p.build(s) for p, s in zip(plans, states)]
    for enc_name, enc in _encoders(graph_shapes_of(plans)).items():
        enc.eval()
        with torch.no_grad():
            mixed = enc(Batch.from_data_list(graphs))
            alone = torch.cat([enc(Batch.from_data_list([g])) for g in graphs])
        assert mixed.shape == (4, enc.out_dim)
        torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=1e-5, msg=enc_name)
        # and the batch order does not matter
        with torch.no_grad():
            flipped = enc(Batch.from_data_list(graphs[::-1]))
        torch.testing.assert_close(flipped.flip(0), mixed, atol=1e-5, rtol=1e-5, msg=enc_name)


def test_weight_attention_blocks_equal_edge_list():
    """The block-wise computation is the torch_geometric MessagePassing one: values and every
    gradient, on a batch of different networks (dense blocks, identity and head edges)."""
    plans, states = _graphs(FAMILIES + ("resnet_bottleneck",))
    batch = Batch.from_data_list([p.build(s) for p, s in zip(plans, states)])
    batch.x, batch.w, batch.sparse_attr = (
        batch.x.double(),
        batch.w.double(),
        batch.sparse_attr.double(),
    )
    batch.w.requires_grad_(True)
    enc = NWPA(graph_shapes_of(plans), hidden=16, layers=2).double()
    params = [batch.w, *enc.parameters()]
    results = []
    for blockwise in (True, False):
        for layer in enc.layers:
            layer.blockwise = blockwise
        out = enc(batch)
        results.append((out, torch.autograd.grad(out.square().sum(), params)))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, atol=1e-9, rtol=1e-9)
    assert ga[0].abs().sum() > 0, "gradients reach the weights"


@pytest.mark.parametrize("conv", ["transformer", "gatv2", "gine"])
def test_pyg_backbones_train(conv):
    plans, states = _graphs(("cnn", "resnet"))
    batch = Batch.from_data_list([p.build(s) for p, s in zip(plans, states)])
    enc = NWPA(
        graph_shapes_of(plans), hidden=16, layers=2, layer=lambda h, e: PyGConv(h, e, conv, heads=2)
    )
    out = enc(batch)
    assert out.shape == (2, 16) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(p.grad is not None for p in enc.layers.parameters())


def test_weight_attention_dropout_and_errors():
    plans, states = _graphs(("mlp",))
    batch = Batch.from_data_list([plans[0].build(states[0])])
    enc = NWPA(graph_shapes_of(plans), hidden=16, layers=1, dropout=0.5)
    enc.train()
    assert not torch.equal(enc(batch), enc(batch))
    enc.eval()
    assert torch.equal(enc(batch), enc(batch))
    with pytest.raises(ValueError, match="divisible"):
        WeightAttention(10, 4, heads=4)
    small = NWPA(graph_shapes_of(plans), hidden=8)
    vit_plans, vit_states = _graphs(("vit",))
    with pytest.raises(ValueError, match="depth"):
        small(Batch.from_data_list([vit_plans[0].build(vit_states[0])]))
