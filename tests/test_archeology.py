"""The bench section "Neural Weight Archeology across architectures", end to end at tiny scale:
every method runs, the tables are filled, the figures are drawn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nwa.suite import archeology


def test_common_size_views_do_not_depend_on_the_architecture():
    import torch

    from nwa.suite.archeology_baselines import common_flat, common_stats

    mlp = {"1.weight": torch.randn(8, 12), "1.bias": torch.randn(8), "3.weight": torch.randn(3, 8)}
    cnn = {
        "conv1.weight": torch.randn(4, 3, 3, 3),
        "bn1.weight": torch.ones(4),
        "bn1.running_var": torch.full((4,), 100.0),  # a buffer, not a parameter
        "fc.weight": torch.randn(3, 4),
    }
    for state in (mlp, cnn):
        assert common_stats(state).shape == (28,) and common_flat(state, 64).shape == (64,)
    # the head pool is the last weight: its maximum is the 28th feature
    assert common_stats(cnn)[-1] == pytest.approx(float(cnn["fc.weight"].max()))
    assert common_stats(cnn)[7 + 6] == pytest.approx(1.0)  # vectors: BN scale, no running_var


def test_metrics_are_torchmetrics_on_known_targets():
    from nwa.suite.archeology_baselines import label_metrics

    m = label_metrics("opt", "multiclass", np.array([0, 1, 1, 0]), np.array([0, 1, 0, -1]), 2)
    assert m["test/opt_acc"] == pytest.approx(2 / 3)
    r = label_metrics(
        "acc", "regression", np.array([1.0, 2.0, 0.0]), np.array([1.0, 3.0, np.nan]), 0
    )
    assert r["test/acc_mae"] == pytest.approx(0.5) and r["test/acc_mse"] == pytest.approx(0.5)


@pytest.mark.slow
def test_the_section_runs_every_method(tiny_mixed_zoo, tmp_path):
    runs = archeology.plan_runs(str(tiny_mixed_zoo), seeds=(0,), epochs=1)
    assert {r.method for r in runs} == set(archeology.METHODS)
    archeology.run_section(tmp_path, runs, jobs=1, say=lambda _: None)
    report = tmp_path / "report.md"
    assert archeology.append_section(report, tmp_path, runs, "tiny_mixed") == 0
    text = report.read_text()
    assert "## 5. Neural Weight Archeology across architectures" in text
    df = archeology.load_section(tmp_path, runs)
    for label in archeology.CLASS_LABELS:
        for method in archeology.METHODS:
            acc = df.loc[df["method"] == method, f"test/{label}_acc"].iloc[0]
            assert 0 <= acc <= 1
    for prop in archeology.VALUE_LABELS:
        assert df[f"test/{prop}_mae"].map(math.isfinite).all()
    assert "| NWPA |" in text and "| PCA |" in text and " - |" not in text
    for name in ("classification", "regression", "r2", "projection", "curves"):
        assert (tmp_path / "figures" / f"archeology_{name}.png").is_file()
        assert f"figures/archeology_{name}.png" in text
    # finished runs are not redone
    assert not [
        s
        for s in runs
        if archeology.needs_run(s, archeology.load_result(tmp_path / "runs" / s.key))
    ]
