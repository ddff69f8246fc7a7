"""Hidden-neuron permutations preserve the function of real conv and MLP chains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nwa.errors import ShapeMismatchError
from nwa.weights.graph import chain_from_tensors
from nwa.weights.symmetry import (
    permute_chain,
    permute_state_dict,
    random_hidden_permutations,
    random_permute_state_dict,
)
from tests.chains import conv_chain, conv_forward, mlp_chain, mlp_forward


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
