"""What every section of the benchmark report shares: the results table (one row per planned
run, from the runs' ``result.json``), cells of mean ± std over seeds, run selection, the runs'
outputs and histories, Markdown tables (:func:`nwa.tables.markdown_table`) and figure links.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nwa.suite.execute import OUTPUTS, load_result, log_dir, needs_run
from nwa.suite.plan import RunSpec
from nwa.tables import markdown_table

PROPERTY_NAMES = ("test_acc", "gen_gap", "robustness")
CLASS_METRICS = {
    "acc": "element-wise acc",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "exact": "exact-set acc",
}


def load_results(out: Path, runs: Sequence[RunSpec]) -> pd.DataFrame:
    """One row per planned run: its fields, status, flattened metrics and costs."""
    rows = []
    for spec in runs:
        res = load_result(out / "runs" / spec.key)
        row: dict[str, Any] = spec.to_dict() | {"status": "missing"}
        if res is not None and "error" not in res and needs_run(spec, res):
            row["status"] = "outdated"  # finished with another command or recipe than planned now
        elif res is not None:
            row["status"] = "failed" if "error" in res else "done"
            row |= {k: v for k, v in res.items() if k not in ("metrics", "alignment", "args")}
            row |= {k.removeprefix("test/"): v for k, v in (res.get("metrics") or {}).items()}
            row |= _alignment_columns(res.get("alignment") or {})
        rows.append(row)
    # the columns every section selects on, even with no run planned (archeology alone)
    columns = [*RunSpec("", "", "", 0, ()).to_dict(), "status"]
    return pd.DataFrame(rows, columns=None if rows else columns)


def _alignment_columns(a: dict[str, Any]) -> dict[str, Any]:
    keys = ("top1", "chance", "top1_lo", "top1_hi", "top5", "top5_chance", "n")
    cols = {
        f"{part}_{k}": a.get(f"{part}_{k}")
        for part in ("in_distribution", "zero_shot")
        for k in keys
    }
    for rep in ("learned", "raw"):
        for part, values in (a.get(rep) or {}).items():
            for metric, v in (values or {}).items():
                cols[f"{rep}:{part}:{metric}"] = v
    return cols


def mean_std(values: Sequence[Any], digits: int = 3) -> str:
    """``mean ± std`` over the finite values (std with one degree of freedom), ``-`` if none."""
    v = np.array([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def cell(df: pd.DataFrame, column: str, digits: int = 3, **where: Any) -> str:
    sel = select(df, **where)
    if column not in sel:
        return "-"
    return mean_std(sel[column].tolist(), digits)


def select(df: pd.DataFrame, **where: Any) -> pd.DataFrame:
    sel = df[df["status"] == "done"] if "status" in df else df
    for k, v in where.items():
        sel = sel[sel[k] == v]
    return sel


def column_values(df: pd.DataFrame, column: str, **where: Any) -> list[Any]:
    """``column`` of the finished runs matching ``where`` (none when no run logged it)."""
    sel = select(df, **where)
    return sel[column].tolist() if column in sel else []


def param_number(df: pd.DataFrame, **where: Any) -> int | None:
    """Parameters of the first matching run's encoder (its whole module when it has none)."""
    sel = select(df, **where)
    if sel.empty:
        return None
    enc = sel["encoder_params"].dropna() if "encoder_params" in sel else pd.Series([])
    return int(enc.iloc[0]) if len(enc) else int(sel["params"].iloc[0])


def param_count(df: pd.DataFrame, **where: Any) -> str:
    n = param_number(df, **where)
    return "-" if n is None else f"{n:,}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table of display strings (see :func:`nwa.tables.markdown_table`)."""
    return markdown_table(header, rows)


def method_names(df: pd.DataFrame, only: Any = None, **where: Any) -> list[str]:
    """Methods of the runs matching ``where`` (restricted to ``only``), in plan order."""
    sel = df
    for k, v in where.items():
        sel = sel[sel[k] == v]
    return [m for m in dict.fromkeys(sel["method"]) if only is None or m in only]


def run_outputs(
    out: Path, df: pd.DataFrame, keys: Sequence[str] | None = None, **where: Any
) -> list[dict[str, np.ndarray]]:
    """The selected runs' ``outputs.npz`` arrays; only ``keys`` where given (each array of an
    npz is decompressed on access, so the representations are skipped when not needed)."""
    found = []
    for key in select(df, **where)["key"]:
        path = out / "runs" / key / OUTPUTS
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                found.append({k: z[k] for k in (z.files if keys is None else keys)})
    return found


def run_histories(out: Path, df: pd.DataFrame, **where: Any) -> list[pd.DataFrame]:
    from nwa.runs import RunError, load_run

    found = []
    for key in select(df, **where)["key"]:
        try:
            found.append(load_run(log_dir(out / "runs" / key)).history)
        except RunError:
            continue
    return found


def finite_mean(values: Sequence[Any]) -> float:
    v = np.array([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:g}" if isinstance(v, float) else str(v)


def figure_lines(paths: Sequence[Path | None], out: Path) -> list[str]:
    return [f"![{p.stem}]({p.relative_to(out).as_posix()})\n" for p in paths if p is not None]
