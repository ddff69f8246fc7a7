"""Several labels at once: one head per label, cross-entropy for classes, MSE for properties."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nwa.data import ModelZooDataModule
from nwa.tasks import Targets, compute_metrics, task_for
from nwa.tasks.multitask import MultiTask
from tests.zoo_factory import write_mixed_zoo

TARGETS = Targets(
    "multitask",
    ("family", "acc"),
    (Targets("multiclass", ("cnn", "mlp", "vit")), Targets("regression", ("acc",))),
)


def test_loss_is_the_mean_of_each_labels_loss_over_known_entries():
    torch.manual_seed(0)
    task = task_for(6, TARGETS)
    assert isinstance(task, MultiTask)
    y = torch.tensor([[0, 0.5], [2, math.nan], [-1, 0.9], [1, 0.1]])
    task.fit_scaler(y)
    assert task.tasks[1].y_mean.item() == pytest.approx(0.5)  # the known values only
    z = torch.randn(4, 6)
    out = task(z)
    assert out.shape == (4, 3 + 1)
    ce = nn.functional.cross_entropy(out[[0, 1, 3], :3], torch.tensor([0, 2, 1]))
    std = task.tasks[1].y_std
    mse = nn.functional.mse_loss((out[[0, 2, 3], 3] - 0.5) / std, (y[[0, 2, 3], 1] - 0.5) / std)
    torch.testing.assert_close(task.loss(out, y), (ce + mse) / 2)
    task.loss(out, y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in task.parameters())


def test_metrics_per_label():
    task = task_for(4, TARGETS)
    metrics = task.metrics()
    y = torch.tensor([[0, 0.2], [1, 0.4], [2, 0.6], [-1, math.nan], [1, 0.8]])
    out = torch.cat(
        [nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 0]), 3).float() * 5, y[:, 1:] + 0.01], 1
    )
    metrics.update(out, y)
    values = compute_metrics(metrics, "test")
    assert values["test/family_acc"] == pytest.approx(3 / 4)  # the unknown row is left out
    assert values["test/acc_mae"] == pytest.approx(0.01, abs=1e-5)
    assert values["test/acc_r2"] > 0.99
    assert torch.allclose(task.predict(out)[:, :3].sum(1), torch.ones(5))


def test_labels_target_from_a_zoo(tmp_path):
    zoo = write_mixed_zoo(tmp_path / "zoo")
    dm = ModelZooDataModule(
        str(zoo.root), layers="*", input="graph", target="labels", properties=["family", "test_acc"]
    )
    t = dm.targets
    assert t.kind == "multitask" and t.names == ("family", "test_acc")
    assert t.labels[0] == Targets("multiclass", ("cnn", "mlp", "resnet", "vit"))
    assert t.labels[1].kind == "regression"
    y = dm.dataset("train").targets
    rows = dm.dataset("train").rows
    assert y.shape == (len(rows), 2)
    assert [t.labels[0].names[int(i)] for i in y[:, 0]] == list(rows["arch"])
    torch.testing.assert_close(
        y[:, 1], torch.tensor(rows["test_acc"].to_numpy(), dtype=torch.float32)
    )
