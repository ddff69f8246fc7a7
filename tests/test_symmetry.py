"""Hidden-neuron permutations preserve the function of real conv and MLP chains."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nwa.errors import ShapeMismatchError
from nwa.weights.chain import chain_from_tensors
from nwa.weights.graph_archs import plan_graph
from nwa.weights.symmetry import (
    permute_chain,
    permute_network,
    permute_state_dict,
    random_hidden_permutations,
    random_network_permutation,
    random_permute_state_dict,
    tied_groups,
)
from tests.chains import conv_chain, conv_forward, mlp_chain, mlp_forward
from tests.networks import NETWORKS, float_state, network


@pytest.mark.parametrize(
    "make, forward, x_shape",
    [(conv_chain, conv_forward, (5, 1, 7, 7)), (mlp_chain, mlp_forward, (5, 6))],
)
def test_permute_chain_preserves_function(make, forward, x_shape):
    gen = torch.Generator().manual_seed(0)
    ws, bs = make(gen)
    perms = random_hidden_permutations(ws, gen)
    assert [p.numel() for p in perms] == [w.shape[0] for w in ws[:-1]]
    pws, pbs = permute_chain(ws, bs, perms)
    x = torch.randn(x_shape, generator=gen)
    torch.testing.assert_close(forward(pws, pbs, x), forward(ws, bs, x), atol=1e-5, rtol=1e-5)
    assert not torch.equal(pws[0], ws[0]), "the permutation must actually move weights"
    # an inconsistent permutation (rows only) changes the function: the check can fail
    bad_w = [ws[0][perms[0]]] + ws[1:]
    bad_b = [bs[0][perms[0]]] + bs[1:]
    assert not torch.allclose(forward(bad_w, bad_b, x), forward(ws, bs, x), atol=1e-4)


def test_permute_chain_batched_matches_per_model():
    gen = torch.Generator().manual_seed(1)
    models = [chain_from_tensors(*conv_chain(gen)) for _ in range(3)]
    perms = random_hidden_permutations(models[0][0], gen)
    bw = [torch.stack([m[0][i] for m in models]) for i in range(3)]
    bb = [torch.stack([m[1][i] for m in models]) for i in range(3)]
    pw, pb = permute_chain(bw, bb, perms, batch_dims=1)
    for j, (ws, bs) in enumerate(models):
        ew, eb = permute_chain(ws, bs, perms)
        for i in range(3):
            assert torch.equal(pw[i][j], ew[i]) and torch.equal(pb[i][j], eb[i])


def test_permute_chain_bad_arguments():
    gen = torch.Generator().manual_seed(2)
    ws, bs = mlp_chain(gen)
    with pytest.raises(ValueError, match="2 hidden layers"):
        permute_chain(ws, bs, [None])
    with pytest.raises(ShapeMismatchError, match="permutation of 5 neurons"):
        permute_chain(ws, bs, [torch.randperm(5), None])


def test_permute_state_dict_of_torch_mlp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    layers = ["0.weight", "2.weight", "4.weight"]
    state = net.state_dict()
    new = random_permute_state_dict(state, layers, torch.Generator().manual_seed(3))
    assert set(new) == set(state)
    assert not torch.equal(new["0.bias"], state["0.bias"])
    other = nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)
    )
    other.load_state_dict(new)
    x = torch.randn(8, 6)
    torch.testing.assert_close(other(x), net(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ShapeMismatchError, match="does not read"):
        permute_state_dict(state, ["0.weight", "4.weight"], [None])


def test_permute_state_dict_with_norm_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 1)).eval()
    net[1].running_mean.normal_()
    net[1].running_var.uniform_(0.5, 2.0)
    state = net.state_dict()
    per_neuron = {f"1.{k}": 0 for k in ("weight", "bias", "running_mean", "running_var")}
    perm = torch.randperm(8)
    new = permute_state_dict(state, ["0.weight", "3.weight"], [perm], per_neuron=per_neuron)
    other = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 1)
    ).eval()
    other.load_state_dict(new)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(other(x), net(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_network_permutation_preserves_function(name):
    """Whole networks (residual sums, downsample shortcuts, attention with heads, flatten, norms)
    permuted through their graph plan compute the same function; untying one tied group breaks it."""
    model, x, heads = network(name)
    state = float_state(model)
    plan = plan_graph({k: v.shape for k, v in state.items()}, name, list(state), heads=heads)
    perms = random_network_permutation(plan, torch.Generator().manual_seed(1))
    assert perms, "every network here has hidden neurons"
    new = permute_network(state, plan, perms)
    moved = [k for k in state if not torch.equal(state[k], new[k])]
    assert len(moved) >= 3
    other = copy.deepcopy(model)
    other.load_state_dict(new, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), atol=1e-5, rtol=1e-5)
        # reordering the outputs is no symmetry: the check can fail
        out = next(i for i, g in enumerate(plan.groups) if g.positional and i > 0)
        bad = {out: torch.roll(torch.arange(plan.groups[out].size), 1)}
        other.load_state_dict(permute_network(state, plan, bad), strict=False)
        assert not torch.allclose(other(x), model(x), atol=1e-4)
        cls = max(tied_groups(plan), key=len)
        if len(cls) > 1:  # one group of a tied class permuted apart from the others
            loose = dict(perms) | {cls[0]: torch.roll(perms[cls[0]], 1)}
            other.load_state_dict(permute_network(state, plan, loose), strict=False)
            assert not torch.allclose(other(x), model(x), atol=1e-4)


def test_tied_groups_follow_residual_connections():
    model, _, _ = network("resnet")
    state = float_state(model)
    plan = plan_graph({k: v.shape for k, v in state.items()}, "resnet", list(state))
    names = [[plan.groups[i].name for i in c] for c in tied_groups(plan)]
    # layer2.1 has an identity shortcut: layer2.0's sum, its conv2 and its sum share one
    # permutation; layer2.0 has a downsample: its conv2, downsample conv and sum are tied, apart
    # from layer1's
    assert any({"layer2.0", "layer2.1.conv2", "layer2.1"} <= set(c) for c in names)
    assert any({"layer2.0.conv2", "layer2.0.downsample.0", "layer2.0"} <= set(c) for c in names)
    assert all(not ({"layer1.0", "layer2.0"} <= set(c)) for c in names)
    assert ["layer2.1.conv1"] in names  # a block's inner channels are free
