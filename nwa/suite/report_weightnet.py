"""Report section 2, WeightNet against the flat-weights MLP: per-property errors, scatter,
histograms, bars, radar and loss curves.

On the ResNet trees' property runs when the suite has them (``--quick``), else on the property
zoo's test-accuracy runs (the full suite, where the trees' labels hardly vary).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nwa.suite import figures
from nwa.suite.plan import PROPERTIES
from nwa.suite.properties import SUBSET as PROPERTY_ZOO
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
    subset, names, where = "resnet trees", PROPERTY_NAMES, "ResNet trees"
    if not any(not select(df, task=PROPERTIES, subset=subset, method=m).empty for m in methods):
        subset, names, where = PROPERTY_ZOO, ("test_acc",), "property zoo"
    lines = [f"## 2. WeightNet against the flat-weights MLP (property regression, {where})", ""]
    if not methods:
        return [*lines, "No finished WeightNet or FlatMLP regression run.", ""]
    reg = select(df, task=PROPERTIES, subset=subset)
    rows = []
    for p in (*names, None):
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
    outputs = {m: run_outputs(out, df, task=PROPERTIES, subset=subset, method=m) for m in methods}
    per_seed = {
        m: {
            metric: [column_values(reg, f"{metric}_{p}", method=m) for p in names]
            for metric in ("mae", "r2")
        }
        for m in methods
    }
    lines += figure_lines(
        [
            figures.predicted_vs_true(outputs, names, figs / "weightnet_scatter.png"),
            figures.error_histograms(outputs, names, figs / "weightnet_errors.png"),
            figures.metric_bars(
                {m: v["mae"] for m, v in per_seed.items()},
                names,
                "MAE (test; mean ± std over seeds)",
                figs / "weightnet_mae.png",
                ylabel="MAE (fraction)",
                xlabel="property",
            ),
            figures.radar(
                {m: [finite_mean(v) for v in per_seed[m]["r2"]] for m in methods},
                names,
                "R² per property (test; mean over seeds)",
                figs / "weightnet_r2_radar.png",
            )
            if len(names) >= 3  # a radar of fewer axes has no area to compare
            else None,
            figures.curves(
                {
                    m: run_histories(out, df, task=PROPERTIES, subset=subset, method=m)
                    for m in methods
                },
                ("train/loss", "val/loss"),
                figs / "weightnet_loss_curves.png",
            ),
        ],
        out,
    )
    return lines
