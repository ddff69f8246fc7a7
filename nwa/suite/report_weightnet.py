"""Report section 2, WeightNet against the flat-weights MLP: per-property errors, scatter,
histograms, bars, radar and loss curves."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nwa.suite import figures
from nwa.suite.plan import PROPERTIES
from nwa.suite.report_common import (
    PROPERTY_NAMES,
    cell,
    column_values,
    figure_lines,
    finite_mean,
    md_table,
    run_histories,
    run_outputs,
    select,
)


def weightnet_section(out: Path, df: pd.DataFrame, figs: Path) -> list[str]:
    methods = [
        m for m in ("WeightNet", "FlatMLP") if not select(df, task=PROPERTIES, method=m).empty
    ]
    lines = ["## 2. WeightNet against the flat-weights MLP (property regression, ResNet trees)", ""]
    if not methods:
        return [*lines, "No finished WeightNet or FlatMLP regression run.", ""]
    reg = select(df, task=PROPERTIES, subset="resnet trees")
    rows = []
    for p in (*PROPERTY_NAMES, None):
        suffix = f"_{p}" if p else ""
        for m in methods:
            rows.append(
                [
                    p or "all",
                    m,
                    *(
                        cell(reg, f"{metric}{suffix}", 4, method=m)
                        for metric in ("mae", "rmse", "r2")
                    ),
                ]
            )
    lines += [md_table(["property", "method", "MAE", "RMSE", "R²"], rows), ""]
    outputs = {
        m: run_outputs(out, df, task=PROPERTIES, subset="resnet trees", method=m) for m in methods
    }
    per_seed = {
        m: {
            metric: [column_values(reg, f"{metric}_{p}", method=m) for p in PROPERTY_NAMES]
            for metric in ("mae", "r2")
        }
        for m in methods
    }
    lines += figure_lines(
        [
            figures.predicted_vs_true(outputs, PROPERTY_NAMES, figs / "weightnet_scatter.png"),
            figures.error_histograms(outputs, PROPERTY_NAMES, figs / "weightnet_errors.png"),
            figures.metric_bars(
                {m: v["mae"] for m, v in per_seed.items()},
                PROPERTY_NAMES,
                "MAE (test; mean ± std over seeds)",
                figs / "weightnet_mae.png",
                ylabel="MAE (fraction)",
                xlabel="property",
            ),
            figures.radar(
                {m: [finite_mean(v) for v in per_seed[m]["r2"]] for m in methods},
                PROPERTY_NAMES,
                "R² per property (test; mean over seeds)",
                figs / "weightnet_r2_radar.png",
            ),
            figures.curves(
                {
                    m: run_histories(out, df, task=PROPERTIES, subset="resnet trees", method=m)
                    for m in methods
                },
                ("train/loss", "val/loss"),
                figs / "weightnet_loss_curves.png",
            ),
        ],
        out,
    )
    return lines
