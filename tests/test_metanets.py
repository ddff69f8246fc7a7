"""Encoders: shapes, gradients, parameter counts, PCA determinism, permutation invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from nwa.errors import ShapeMismatchError
from nwa.metanets import (
    NWPA,
    Dense,
    FlatMLP,
    PCAEncoder,
    ProbeX,
    StatNNBoosted,
    StatNNMLP,
    WeightNet,
    count_parameters,
)
from nwa.weights.chain import chain_from_tensors, chain_shapes, chain_to_graph
from nwa.weights.symmetry import permute_chain, random_hidden_permutations
from tests.chains import conv_chain, conv_forward, mlp_chain, mlp_forward

B = 3
LAYERS = {"conv.weight": (8, 27), "fc.weight": (10, 8)}


def _matrices(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {k: torch.randn(B, *s, generator=gen) for k, s in LAYERS.items()}


def _stack(
    models: list[tuple[list[torch.Tensor], list[torch.Tensor]]],
) -> dict[str, list[torch.Tensor]]:
    n = len(models[0][0])
    return {
        "weights": [torch.stack([m[0][i] for m in models]) for i in range(n)],
        "biases": [torch.stack([m[1][i] for m in models]) for i in range(n)],
    }


def _chain_batch(make, gen: torch.Generator) -> dict[str, list[torch.Tensor]]:
    return _stack([chain_from_tensors(*make(gen)) for _ in range(B)])


def _flat(chain: dict[str, list[torch.Tensor]]) -> torch.Tensor:
    return torch.cat([t.flatten(1) for t in chain["weights"] + chain["biases"]], dim=1)


def _encoders(gen: torch.Generator) -> list[tuple[nn.Module, object]]:
    """(encoder, batch) for every encoder family."""
    chain = _chain_batch(conv_chain, gen)
    shapes = chain_shapes(chain["weights"])
    flat = _flat(chain)
    pca = PCAEncoder(flat.shape[1], n_components=4, head="mlp", dim=16)
    pca.fit(torch.randn(10, flat.shape[1], generator=gen))
    stats = torch.randn(B, 21, generator=gen)
    return [
        (ProbeX(LAYERS, rank_u=4, rank_v=5, dim=6), _matrices(gen)),
        (Dense(LAYERS, dim=7), _matrices(gen)),
        (FlatMLP(flat.shape[1]), flat),
        (pca, flat),
        (StatNNMLP(21, hidden=(32, 16)).fit(torch.randn(20, 21, generator=gen)), stats),
        (NWPA(shapes, hidden=16, layers=2, pooling="attention"), chain),
        (WeightNet(shapes, d_model=16, heads=2), chain),
    ]


@pytest.mark.parametrize("idx", range(7))
def test_shapes_out_dim_and_gradients(idx):
    torch.manual_seed(0)
    enc, batch = _encoders(torch.Generator().manual_seed(idx))[idx]
    out = enc(batch)
    assert out.shape == (B, enc.out_dim)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    params = [(n, p) for n, p in enc.named_parameters() if p.requires_grad]
    assert params
    for name, p in params:
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all()
    nonzero = sum(bool(p.grad.abs().sum() > 0) for _, p in params)
    assert nonzero == len(params), [n for n, p in params if not p.grad.abs().sum() > 0]


def test_out_dims():
    assert ProbeX(LAYERS, dim=32).out_dim == 64
    assert Dense(LAYERS, dim=5).out_dim == 10
    assert FlatMLP(10, hidden=(8, 4)).out_dim == 4
    assert PCAEncoder(10, n_components=3, head="none").out_dim == 3
    assert PCAEncoder(10, n_components=3, head="linear", dim=9).out_dim == 9
    assert StatNNMLP(14, hidden=(8, 6)).out_dim == 6
    assert NWPA([(4, 3, 1)], hidden=24).out_dim == 24
    assert WeightNet([(4, 3, 1)], d_model=24).out_dim == 24


def test_matrix_encoders_check_inputs():
    enc = ProbeX(LAYERS, rank_u=2, rank_v=2, dim=2)
    gen = torch.Generator().manual_seed(0)
    bad = _matrices(gen)
    bad["fc.weight"] = torch.randn(B, 8, 10)
    with pytest.raises(ShapeMismatchError, match=r"expects \[B, 10, 8\]"):
        enc(bad)
    with pytest.raises(KeyError, match="fc.weight"):
        enc({"conv.weight": bad["conv.weight"]})
    one = ProbeX({"w": [6, 2, 3, 3]}, rank_u=2, rank_v=2, dim=3)  # raw conv shape -> 6 x 18
    assert one(torch.randn(B, 6, 18)).shape == (B, 3)


def test_probex_much_smaller_than_dense():
    # reference.md: 768 x 768 layer, 100 outputs: Dense ~59.0 M, ProbeX ~2.3 M at r_T = 128
    with torch.device("meta"):
        probex = nn.Sequential(ProbeX({"w": (768, 768)}, 128, 128, dim=128), nn.Linear(128, 100))
        dense = Dense({"w": (768, 768)}, dim=100)
    n_probex, n_dense = count_parameters(probex), count_parameters(dense)
    assert n_probex == pytest.approx(2.3e6, rel=0.02)
    assert n_dense == pytest.approx(59.0e6, rel=0.01)
    assert n_dense / n_probex >= 20


def test_pca_fit_is_deterministic_and_matches_sklearn():
    from sklearn.decomposition import PCA

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 12, generator=gen) @ torch.randn(12, 12, generator=gen)
    a, b = PCAEncoder(12, n_components=4, head="none"), PCAEncoder(12, n_components=4, head="none")
    a.fit(x), b.fit(x.clone())
    for name, buf in a.named_buffers():
        assert torch.equal(buf, b.get_buffer(name)), name
    q = torch.randn(5, 12, generator=gen)
    assert torch.equal(a(q), b(q))
    ref = PCA(4, svd_solver="full").fit(x.double().numpy())
    np.testing.assert_allclose(
        np.abs(a(q).double().numpy()),
        np.abs(ref.transform(q.double().numpy())),
        rtol=1e-4,
        atol=1e-4,
    )
    with pytest.raises(RuntimeError, match="fit"):
        PCAEncoder(12, n_components=4)(q)
    with pytest.warns(UserWarning, match="only 3 principal directions"):
        PCAEncoder(12, n_components=5).fit(x[:3])


@pytest.mark.parametrize("task", ["regression", "multiclass", "multilabel"])
def test_statnn_boosted(task):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5))
    if task == "regression":
        y = np.stack([x[:, 0] * 2, x[:, 1]], axis=1)
    elif task == "multiclass":
        y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int)
    else:
        y = np.stack([x[:, 0] > 0, x[:, 2] > 0, np.ones(120, bool)], axis=1).astype(int)
    model = StatNNBoosted(n_estimators=30, num_leaves=7, min_child_samples=5).fit(x, y, task)
    pred = model.predict(x)
    assert pred.shape == y.shape
    if task == "regression":
        assert np.corrcoef(pred[:, 0], y[:, 0])[0, 1] > 0.9
    else:
        assert (pred == y).mean() > 0.8


def _permuted_batch(make, gen: torch.Generator, fix_outputs: bool = True):
    """A batch of chains and the same networks with hidden neurons permuted (a different
    permutation per model); checks on real inputs that each permuted network is the same function."""
    forward, x_shape = (conv_forward, (4, 1, 6, 6)) if make is conv_chain else (mlp_forward, (4, 6))
    raw = [make(gen) for _ in range(B)]
    permuted = []
    for ws, bs in raw:
        pws, pbs = permute_chain(ws, bs, random_hidden_permutations(ws, gen))
        x = torch.randn(x_shape, generator=gen)
        torch.testing.assert_close(forward(pws, pbs, x), forward(ws, bs, x), atol=1e-5, rtol=1e-5)
        permuted.append((pws, pbs))
    return (
        _stack([chain_from_tensors(*m) for m in raw]),
        _stack([chain_from_tensors(*m) for m in permuted]),
    )


def _permute_outputs(chain: dict[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    """Reorder the last layer's outputs: a different function, no symmetry."""
    perm = torch.roll(torch.arange(chain["weights"][-1].shape[1]), 1)
    return {
        "weights": chain["weights"][:-1] + [chain["weights"][-1][:, perm]],
        "biases": chain["biases"][:-1] + [chain["biases"][-1][:, perm]],
    }


def _invariant_encoders(shapes):
    return {
        "nwpa-mean": NWPA(shapes, hidden=16, layers=2, pooling="mean"),
        "nwpa-attn": NWPA(shapes, hidden=16, layers=2, pooling="attention"),
        "weightnet-cls": WeightNet(shapes, d_model=16, heads=2),
        "weightnet-mean": WeightNet(shapes, d_model=16, heads=2, intra_blocks=2, pooling="mean"),
    }


@pytest.mark.parametrize("make", [conv_chain, mlp_chain], ids=["conv", "mlp"])
def test_invariance_to_hidden_permutations(make):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(5)
    chain, permuted = _permuted_batch(make, gen)
    shapes = chain_shapes(chain["weights"])
    for name, enc in _invariant_encoders(shapes).items():
        enc.eval()
        with torch.no_grad():
            ref, got = enc(chain), enc(permuted)
            moved = enc(_permute_outputs(chain))
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5, msg=name)
        assert (moved - ref).abs().max() > 1e-4, f"{name} ignores the output order"
    flat = FlatMLP(_flat(chain).shape[1]).eval()
    with torch.no_grad():
        assert (flat(_flat(permuted)) - flat(_flat(chain))).abs().max() > 1e-4, (
            "flat MLP should not be invariant"
        )


def test_nwpa_accepts_graph_batches():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    models = [chain_from_tensors(*mlp_chain(gen)) for _ in range(B)]
    chain = _stack(models)
    enc = NWPA(chain_shapes(chain["weights"]), hidden=16, layers=2).eval()
    graphs = Batch.from_data_list([chain_to_graph(w, b) for w, b in models])
    with torch.no_grad():
        torch.testing.assert_close(enc(graphs), enc(chain))
        torch.testing.assert_close(enc(chain_to_graph(*models[1])), enc(chain)[1:2])


def test_chain_encoders_reject_wrong_chains():
    chain = {
        "weights": [torch.randn(B, 4, 3, 1), torch.randn(B, 2, 5, 1)],
        "biases": [torch.randn(B, 4), torch.randn(B, 2)],
    }
    for enc in (
        WeightNet([(4, 3, 1), (2, 4, 1)], d_model=8),
        NWPA([(4, 3, 1), (2, 4, 1)], hidden=8),
    ):
        with pytest.raises(ShapeMismatchError, match="takes 5 inputs"):
            enc(chain)
        deeper = _chain_batch(conv_chain, torch.Generator().manual_seed(0))
        with pytest.raises(ValueError, match="depth 2"):
            enc(deeper)


def test_gradient_modules_train_with_fused_adam():
    # before: the per-tensor Adam, whose step-sized temporaries made a step on Dense's 75 M
    # weights 2.3x as long (benchmarks/adam_step.py)
    from functools import partial

    from nwa.lit import WeightModule
    from nwa.tasks import Targets
    from nwa.weights.spec import WeightShapes

    module = WeightModule(
        partial(Dense, dim=4),
        shapes=WeightShapes({"w": (4, 8)}),
        targets=Targets("multilabel", ("a", "b")),
        lr=0.01,
    )
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["fused"] is True
    assert opt.defaults["lr"] == 0.01
