"""Report section 1, Neural Weight Archeology: training classes and properties of the ResNet
trees by every method, costs, maps of the learned representations, training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from nwa.suite import figures
from nwa.suite.plan import CLASSES, METHODS, PROPERTIES
from nwa.suite.report_common import (
    CLASS_METRICS,
    PROPERTY_NAMES,
    cell,
    figure_lines,
    md_table,
    method_names,
    param_count,
    run_histories,
    run_outputs,
    select,
)


def nwa_section(out: Path, df: pd.DataFrame, figs: Path) -> list[str]:
    lines = ["## 1. Neural Weight Archeology: what the weights say (ResNet trees)", ""]
    cls = select(df, task=CLASSES, subset="resnet trees")
    methods = method_names(df, METHODS, task=CLASSES, subset="resnet trees")
    if methods:
        rows = [
            [
                m,
                *(cell(cls, c, method=m) for c in CLASS_METRICS),
                param_count(cls, method=m),
            ]
            for m in methods
        ]
        lines += [
            "### Training-class prediction (test split; which 5 of 10 classes each model saw)",
            "",
            md_table(["method", *CLASS_METRICS.values(), "parameters"], rows),
            "",
        ]
        rows = [
            [
                m,
                param_count(cls, method=m),
                cell(cls, "train_s_per_epoch", 3, method=m),
                cell(cls, "train_s_per_epoch_per_1000", 2, method=m),
                cell(cls, "epochs", 0, method=m),
                cell(cls, "wall_s", 1, method=m),
            ]
            for m in methods
        ]
        lines += [
            "### Cost of the classification runs",
            "",
            "Training seconds per epoch count the training loop alone (no start-up, validation "
            "or checkpoints); wall seconds the whole run, testing included.",
            "",
            md_table(
                [
                    "method",
                    "parameters (encoder)",
                    "train s / epoch",
                    "train s / epoch / 1,000 models",
                    "epochs",
                    "wall s",
                ],
                rows,
            ),
            "",
        ]
    reg = select(df, task=PROPERTIES, subset="resnet trees")
    reg_methods = method_names(df, METHODS, task=PROPERTIES, subset="resnet trees")
    if reg_methods:
        rows = [
            [
                m,
                *(cell(reg, c, method=m) for c in ("r2", "mse", "mae")),
                *(cell(reg, f"r2_{p}", method=m) for p in PROPERTY_NAMES),
            ]
            for m in reg_methods
        ]
        lines += [
            "### Property regression (test split): overall and per-property R²",
            "",
            md_table(["method", "R²", "MSE", "MAE", *(f"R² {p}" for p in PROPERTY_NAMES)], rows),
            "",
        ]
    elif not cls.empty:
        lines += [
            "No property regression on the ResNet trees in this suite (their fine-tunes all "
            "converge, so the labels hardly vary): see the property zoo's section.",
            "",
        ]
    lines += figure_lines(
        [
            figures.embeddings(
                _on_resnet(out, df, CLASSES, methods),
                figs / "nwa_embeddings_trees.png",
                colour="tree",
                title="Learned representations by tree (first seed; hollow: test models)",
            ),
            figures.embeddings(
                _on_resnet(out, df, PROPERTIES, reg_methods),
                figs / "nwa_embeddings_test_acc.png",
                colour="test_acc",
                title="Learned representations, coloured by the model's test accuracy",
            ),
            figures.curves(
                {
                    f"{task} · {m}": run_histories(
                        out, df, task=task, subset="resnet trees", method=m
                    )
                    for task in (CLASSES, PROPERTIES)
                    for m in method_names(df, METHODS, task=task, subset="resnet trees")
                },
                ("train/loss", "val/loss"),
                figs / "nwa_training_curves.png",
            ),
        ],
        out,
    )
    return lines


def _on_resnet(
    out: Path, df: pd.DataFrame, task: str, methods: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Each method's outputs of ``task`` on the ResNet trees, one entry per seed."""
    return {m: run_outputs(out, df, task=task, subset="resnet trees", method=m) for m in methods}
