"""Spectral diagnostics: the power-law fit against a plain transcription of WeightWatcher 0.7.7's
``WWFit``, conv slicing, the metrics on known spectra, solvers and threads, WeightWatcher itself
when installed, and the ``spectral`` metanetwork input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nwa.weights.spectral import (
    CONV_NORM,
    FEATURES,
    analyze,
    eigenvalues,
    layer_matrices,
    layer_metrics,
    plan_layer,
    powerlaw_fit,
    spectral_features,
)


def ww_fit(evals: np.ndarray) -> tuple[float, float, float, float]:
    """WeightWatcher 0.7.7's WWFit (its default), transcribed loop by loop: the eigenvalues
    above 1e-5, sorted; for each x_min but the last, alpha and the KS distance; the smallest
    distance wins. Under 20 values, its small-sample branch, whose candidates' distances
    ``WWFit.__init__`` then minimizes (the others count as 1)."""
    data = np.sort(evals[evals > 1e-5]).astype(np.float64)
    n_all = len(data)
    alphas, ds = np.zeros(n_all - 1), np.ones(n_all - 1)
    logd = np.log(data)
    if n_all < 20:
        for i in range(n_all - 1):
            n = n_all - i
            s = np.sum(logd[i:]) - n * logd[i]
            if n < 8 or s <= 1e-12:
                continue
            alphas[i] = 1 + (n - 1) / s
            if alphas[i] > 1:
                fit = 1 - (data[i:] / data[i]) ** (1 - alphas[i])
                ds[i] = np.max(np.abs(np.arange(n) / n - fit))
        if not (alphas > 1).any():
            s = np.sum(logd) - n_all * logd[0]
            alphas[0] = 1 + (n_all - 1) / s
            fit = 1 - (data / data[0]) ** (1 - alphas[0])
            ds[0] = np.max(np.abs(np.arange(n_all) / n_all - fit))
    else:
        for i in range(n_all - 1):
            n = float(n_all - i)
            alphas[i] = 1 + n / (np.sum(logd[i:]) - n * logd[i])
            if alphas[i] > 1:
                ds[i] = np.max(
                    np.abs(1 - (data[i:] / data[i]) ** (-alphas[i] + 1) - np.arange(n) / n)
                )
    best = int(np.argmin(ds))
    sigma = (alphas[best] - 1) / np.sqrt(n_all - best)
    return alphas[best], data[best], ds[best], sigma


def spectra(seed: int) -> list[np.ndarray]:
    """ESDs of random, heavy-tailed and low-rank matrices, from 9 to 1,500 eigenvalues."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (9, 12, 19, 20, 64, 200):
        w = rng.standard_normal((2 * n, n)) * rng.uniform(0.05, 3)
        out.append(np.linalg.svd(w, compute_uv=False) ** 2)
        heavy = w @ np.diag(rng.pareto(1.5, n) + 0.1)
        out.append(np.linalg.svd(heavy, compute_uv=False) ** 2)
    low = rng.standard_normal((200, 5)) @ rng.standard_normal((5, 100))
    out.append(np.linalg.svd(low, compute_uv=False) ** 2)  # mostly zeros, below 1e-5
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_powerlaw_fit_is_weightwatchers(seed):
    for ev in spectra(seed):
        got = powerlaw_fit(torch.from_numpy(ev))
        want = ww_fit(ev)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), len(ev)


def test_powerlaw_fit_recovers_a_pareto_exponent_and_fails_cleanly():
    n, alpha = 2000, 3.0
    u = (np.arange(n) + 0.5) / n
    lam = (1.0 - u) ** (-1.0 / (alpha - 1.0))  # quantiles of a Pareto law, x_min = 1
    est, xmin, ks, sigma = powerlaw_fit(lam)
    assert est == pytest.approx(alpha, abs=0.1) and ks < 0.02 and sigma > 0
    assert all(math.isnan(v) for v in powerlaw_fit(np.array([3.0, 1e-7])))
    assert all(math.isnan(v) for v in powerlaw_fit(np.zeros(50)))


def test_conv_kernels_are_sliced_per_position_as_weightwatcher_does():
    w = torch.randn(6, 4, 3, 2, dtype=torch.float64)
    plan = plan_layer("c.weight", w.shape)
    assert (plan.kind, plan.rf, plan.rows, plan.cols) == ("conv2d", 6, 6, 4)
    mats = layer_matrices(plan, w)
    assert mats.shape == (6, 6, 4)
    np.testing.assert_allclose(mats[1], w[:, :, 0, 1].numpy() * CONV_NORM)
    # wide slices are transposed (eigenvalues are those of the smaller Gram matrix)
    wide = plan_layer("c.weight", (4, 6, 3, 3))
    assert (wide.rows, wide.cols) == (6, 4) and (wide.n, wide.m) == (6, 4)  # odd rf: N, M swap
    even = plan_layer("c.weight", (4, 6, 2, 2))
    assert (even.n, even.m) == (4, 6)  # ... an even number of times: they do not
    ev = eigenvalues(mats)
    want = np.sort(
        np.concatenate([np.linalg.svd(m, compute_uv=False) ** 2 for m in mats], axis=None)
    )
    np.testing.assert_allclose(np.sort(ev, axis=None), want, rtol=1e-10, atol=1e-12)


def test_skips_say_why():
    assert "no spectrum" in plan_layer("b.bias", (5,))
    assert "not a layer weight" in plan_layer("pos_embed", (1, 197, 768))
    assert not isinstance(plan_layer("pos_embed", (197, 768), any_name=True), str)
    assert "fewer than min_evals=8" in plan_layer("fc.weight", (10, 3))
    assert "more than max_evals" in plan_layer("e.weight", (20000, 16000))
    assert "exceeds max_n" in plan_layer("e.weight", (60000, 16))
    assert not isinstance(plan_layer("fc.weight", (10, 3), min_evals=0), str)


def test_metrics_on_a_known_spectrum():
    s = np.array([4.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.2, 0.1, 0.05])
    u, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((12, 12)))
    v, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((9, 9)))
    w = u[:, :9] @ np.diag(s) @ v.T
    m = layer_metrics(eigenvalues(layer_matrices(plan_layer("w.weight", w.shape), w)))
    lam = s**2
    assert m["log_spectral_norm"] == pytest.approx(math.log10(16.0))
    assert m["log_norm"] == pytest.approx(math.log10(lam.sum()))
    assert m["stable_rank"] == pytest.approx(lam.sum() / 16.0)
    assert m["alpha_weighted"] == pytest.approx(m["alpha"] * math.log10(16.0))
    assert m["log_alpha_norm"] == pytest.approx(math.log10((lam ** m["alpha"]).sum()))
    assert m["num_pl_spikes"] == int((lam >= m["xmin"] * (1 - 1e-12)).sum())
    assert m["num_evals"] == 9


class Arrays:
    """A dict of arrays as an analyzable source."""

    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        self.tensors = tensors

    def infos(self):
        return self.tensors

    def get(self, name: str) -> np.ndarray:
        return self.tensors[name]


def test_solvers_threads_and_batching_agree():
    rng = np.random.default_rng(0)
    tensors = {f"b{i}.fc.weight": rng.standard_normal((96, 64)) for i in range(5)}
    tensors |= {f"b{i}.conv.weight": rng.standard_normal((32, 16, 3, 3)) for i in range(3)}
    tensors |= {"b0.fc.bias": rng.standard_normal(96), "norm.weight": rng.standard_normal(64)}
    source = Arrays(tensors)
    base = analyze(source, threads=1, max_batch_numel=1)  # one layer per batch
    for kw in ({"threads": 2}, {"solver": "svd"}, {"threads": 3, "max_batch_numel": 10**9}):
        other = analyze(source, **kw)
        assert [r.plan.name for r in other.layers] == [r.plan.name for r in base.layers]
        for a, b in zip(base.layers, other.layers):
            assert a.metrics == pytest.approx(b.metrics, rel=1e-9), (kw, a.plan.name)
    assert [s[0] for s in base.skipped] == ["b0.fc.bias", "norm.weight"]
    summary = base.summary()
    assert summary["layers"] == 8 and summary["skipped"] == 2
    assert summary["alpha"] == pytest.approx(np.mean([r.metrics["alpha"] for r in base.layers]))


def test_spectral_input_features():
    w, conv = torch.randn(24, 16), torch.randn(8, 4, 3, 3)
    feats = spectral_features([w, conv])
    assert feats.shape == (2 * len(FEATURES),) and feats.dtype == torch.float32
    m = layer_metrics(eigenvalues(layer_matrices(plan_layer("x", conv.shape, True, 0), conv)))
    assert feats[len(FEATURES) :].tolist() == pytest.approx([m[k] for k in FEATURES], rel=1e-5)
    with pytest.raises(ValueError, match="no spectrum"):
        spectral_features([torch.randn(4)])


@pytest.mark.slow
def test_agrees_with_weightwatcher():
    ww = pytest.importorskip("weightwatcher")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3),
        torch.nn.Conv2d(16, 32, 3),
        torch.nn.Conv2d(32, 8, 1),  # wide slices, N and M swapped
        torch.nn.Flatten(),
        torch.nn.Linear(200, 120),
        torch.nn.Linear(120, 12),  # 12 eigenvalues: the small-sample fit
    )
    details = ww.WeightWatcher(model=model).analyze()
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    ours = {r.plan.name.removesuffix(".weight"): r.metrics for r in analyze(Arrays(state)).layers}
    assert len(ours) == len(details) == 5
    for row in details.to_dict("records"):
        mine = ours[row["longname"]]
        for key in ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank"):
            assert mine[key] == pytest.approx(row[key], rel=1e-6), (row["longname"], key)
        assert mine["num_pl_spikes"] == row["num_pl_spikes"]


@pytest.mark.slow
def test_spectral_input_of_the_data_module(tiny_zoo):
    from nwa.data import ModelZooDataModule
    from nwa.data.reading import read_layers
    from nwa.errors import ConfigError

    layers = ["re:layer\\d\\.0\\.conv\\d\\.weight", "fc.weight"]
    dm = ModelZooDataModule(str(tiny_zoo), arch="resnet_*", layers=layers, input="spectral")
    assert dm.stats_dim == len(FEATURES) * 9 == dm.shapes.stats_dim
    item = dm.dataset("train")[0]
    raw = read_layers(dm.zoo, dm.dataset("train").rows.iloc[0], dm.spec.names)
    # features of the raw weights: no normalization for this input
    torch.testing.assert_close(item["x"], spectral_features([raw[n] for n in dm.spec.names]))
    with pytest.raises(ConfigError, match="1-D"):
        ModelZooDataModule(str(tiny_zoo), arch="resnet_*", layers="*weight", input="spectral")
