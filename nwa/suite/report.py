"""The benchmark report: tables of mean and standard deviation over seeds, in Markdown, with figures.

Every number comes from the runs' ``result.json`` and ``outputs.npz`` files (see
:mod:`nwa.suite.execute`); a missing or failed run shows as ``-`` and is listed under "Runs".
One module per section: :mod:`nwa.suite.report_nwa`, :mod:`nwa.suite.report_weightnet`,
:mod:`nwa.suite.report_probex`; what they share is in :mod:`nwa.suite.report_common`.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from nwa.suite import properties
from nwa.suite.plan import RunSpec
from nwa.suite.report_common import fmt, load_results, md_table, mean_std
from nwa.suite.report_nwa import nwa_section
from nwa.suite.report_probex import probex_section, tree_accuracy
from nwa.suite.report_weightnet import weightnet_section
from nwa.zoo.build import cpu_cores

__all__ = ["load_results", "mean_std", "runs_section", "tree_accuracy", "write_report"]


def runs_section(df: pd.DataFrame) -> list[str]:
    rows = []
    for _, r in df.iterrows():
        err = r.get("error")
        rows.append(
            [
                r["key"],
                r["status"],
                fmt(r.get("epochs")),
                fmt(r.get("wall_s")),
                str(err)[:120] if isinstance(err, str) else "",
            ]
        )
    done = df[df["status"] == "done"]
    total = float(df["wall_s"].fillna(0).sum()) if "wall_s" in df else 0.0
    return [
        "## Runs",
        "",
        f"{len(done)} of {len(df)} runs finished; their wall times add up to {total / 60:.1f} min.",
        "",
        md_table(["run", "status", "epochs", "wall s", "error"], rows),
        "",
    ]


def write_report(
    out: Path, runs: Sequence[RunSpec], header: dict[str, Any]
) -> tuple[Path, pd.DataFrame]:
    """Write ``<out>/report.md``, ``<out>/results.csv`` and ``<out>/figures/*.png`` (+ ``.pdf``)."""
    from nwa.atomic import atomic_write_text
    from nwa.tables import write_rows

    df = load_results(out, runs)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    import torch

    meta = header | {
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {cpu_cores()} CPU cores, torch {torch.__version__}",
    }
    lines = [
        "# nwa benchmark report",
        "",
        *(f"- **{k}**: {v}" for k, v in meta.items()),
        "",
        "Mean ± standard deviation over seeds; `-`: no finished run.",
        "",
    ]
    lines += nwa_section(out, df, figs)
    lines += weightnet_section(out, df, figs)
    lines += probex_section(out, df, figs)
    lines += properties.section(out, df, figs)
    lines += runs_section(df)
    write_rows(df.to_dict("records"), out / "results.csv")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    atomic_write_text(out / "report.json", json.dumps(meta, indent=1))
    return path, df
