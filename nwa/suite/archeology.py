"""The bench section "Neural Weight Archeology across architectures": the seed's own experiment.

One zoo of MLPs, CNNs, ResNets and ViTs trained with different optimizers, data sizes and lengths
(``default_mixed``; ``small_mixed`` in the quick suite). Each method predicts every label at once:
the architecture family and the optimizer (accuracy, precision, recall, F1: macro over classes),
the training-set size, test accuracy and the parameter count (R^2, MSE, MAE; the sizes are log10).

- **NWPA** and **WeightNet** train through ``python -m nwa.fit`` on whole networks as graphs
  (``configs/nwpa_mixed.yaml``, ``configs/weightnet_mixed.yaml``), one head per label.
- **StatNN** (LightGBM) and **PCA** (+ MLP) read a common-size view of each network
  (:mod:`nwa.suite.archeology_baselines`): architectures share no tensor.

Every method runs over the suite's seeds and trains on the zoo's ``train`` split; the networks pick
their checkpoint on ``val``; all are scored on ``test`` with torchmetrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nwa.atomic import atomic_path, atomic_write_text
from nwa.suite.archeology_labels import (
    BASELINES,
    CLASS_LABELS,
    CLASS_METRICS,
    LABELS,
    METHODS,
    NETWORKS,
    VALUE_LABELS,
    VALUE_METRICS,
)
from nwa.suite.execute import OUTPUTS, RESULT, load_result, needs_run, recipe_digest, run_all
from nwa.suite.plan import CONFIGS, RunSpec

TASK, SUBSET = "archeology", "mixed"
ZOOS = {"quick": "small_mixed", "full": "default_mixed"}
EPOCHS: dict[str, int | None] = {"quick": 6, "full": None}  # None: the recipe's


def plan_runs(zoo: str, seeds: Sequence[int], epochs: int | None) -> list[RunSpec]:
    """Every run of the section, seed by seed: the networks' ``nwa.fit`` arguments, and the
    baselines' (a name the section reads, not a command)."""
    runs = []
    for seed in seeds:
        for method, config in NETWORKS.items():
            args = ["--config", str(CONFIGS / config), "--data.init_args.zoo", zoo]
            if epochs is not None:
                args += ["--trainer.max_epochs", str(epochs)]
            runs.append(
                RunSpec(TASK, method, SUBSET, seed, (*args, "--seed_everything", str(seed)))
            )
        for method in BASELINES:
            runs.append(RunSpec(TASK, method, SUBSET, seed, ("--baseline", method, "--zoo", zoo)))
    return runs


# ----- the baselines -----


def _features(zoo: Any, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    from nwa.suite.archeology_baselines import common_flat, common_stats

    stats, flat = [], []
    for row in rows.to_dict("records"):
        with zoo.open_model(row) as src:
            tensors = {n: src.get(n) for n in src.names()}
        stats.append(common_stats(tensors))
        flat.append(common_flat(tensors))
    return {"StatNN-GBT": np.stack(stats), "PCA": np.stack(flat)}


def _baseline_data(zoo_ref: str) -> dict[str, Any]:
    """The zoo's rows by split, their label targets and both baselines' features."""
    from nwa.data.targets import Target
    from nwa.zoo.adapters import open_zoo
    from nwa.zoo.cache import zoo_path

    zoo = open_zoo(zoo_path(zoo_ref))
    rows = zoo.table[zoo.table["split"].isin(["train", "val", "test"])].reset_index(drop=True)
    target = Target(zoo, "labels", LABELS)
    rows = target.keep(rows).reset_index(drop=True)  # also learns each label's kind
    targets = target.targets(rows[rows["split"] == "train"])
    return {
        "rows": rows,
        "targets": targets,
        "y": target.encode(rows, targets).numpy(),
        "x": _features(zoo, rows),
    }


def run_baseline(spec: RunSpec, folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Fit one baseline on the training models, score it on the test models, and keep what the
    report reads (``result.json``, ``outputs.npz``) in ``folder``."""
    from nwa.suite.archeology_baselines import fit_predict, label_metrics

    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    split = data["rows"]["split"].to_numpy()
    train, test = split == "train", split == "test"
    x, y, t = data["x"][spec.method], data["y"], data["targets"]
    kinds = [lab.kind for lab in t.labels]
    preds = fit_predict(spec.method, x[train], y[train], x[test], kinds, spec.seed)
    metrics: dict[str, float] = {}
    for j, (name, lab) in enumerate(zip(t.names, t.labels)):
        metrics |= label_metrics(name, lab.kind, preds[j], y[test, j], len(lab.names))
    result = spec.to_dict() | {
        "recipes": recipe_digest(spec.args),
        "metrics": metrics,
        "classes": {
            n: list(lab.names) for n, lab in zip(t.names, t.labels) if lab.kind == "multiclass"
        },
        "n_train": int(train.sum()),
        "n_eval": int(test.sum()),
        "wall_s": round(time.perf_counter() - start, 2),
    }
    with atomic_path(folder / OUTPUTS) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, z=x, target=y, split=split.astype(str))
    atomic_write_text(folder / RESULT, json.dumps(result, indent=1))
    return result


def run_section(
    out: Path, runs: Sequence[RunSpec], jobs: int, force: bool = False, say: Any = print
) -> None:
    """Run what is not finished yet: the networks through the suite's executor, then the
    baselines (features read once for all seeds)."""
    todo = [s for s in runs if force or needs_run(s, load_result(out / "runs" / s.key))]
    networks = [s for s in todo if s.method in NETWORKS]
    if networks:
        run_all(networks, out, jobs, finished=lambda s, r: say(f"{s.key}: {_summary(r)}"))
    baselines = [s for s in todo if s.method in BASELINES]
    if baselines:
        data = _baseline_data(baselines[0].args[-1])
        for spec in baselines:
            say(f"{spec.key}: {_summary(run_baseline(spec, out / 'runs' / spec.key, data))}")


def _summary(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"FAILED {res['error'][:100]}"
    m = res.get("metrics") or {}
    shown = " ".join(
        f"{k.split('/')[1]} {m[k]:.3f}"
        for k in ("test/family_acc", "test/optimizer_acc", "test/test_acc_r2")
        if isinstance(m.get(k), float)
    )
    return f"{shown} ({res.get('wall_s', 0):.1f} s)"


# ----- the report -----


def load_section(out: Path, runs: Sequence[RunSpec]) -> pd.DataFrame:
    """One row per run: its fields, status and test metrics (``test/{label}_{metric}``)."""
    rows = []
    for spec in runs:
        res = load_result(out / "runs" / spec.key)
        status = "missing" if res is None else "failed" if "error" in res else "done"
        row = spec.to_dict() | {"status": status}
        if res and status == "done":
            row |= (res.get("metrics") or {}) | {
                k: res.get(k) for k in ("train_s_per_epoch_per_1000", "epochs", "wall_s")
            }
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(df: pd.DataFrame, method: str, column: str) -> str:
    from nwa.suite.report import mean_std

    sel = df[(df["method"] == method) & (df["status"] == "done")]
    digits = 4 if column.endswith(("_mse", "_mae")) else 3  # accuracies' errors are small
    return mean_std(sel[column].tolist(), digits) if column in sel else "-"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def tables(df: pd.DataFrame) -> list[str]:
    """The seed's tables: classification (per label) and regression (per property)."""
    methods = [m for m in METHODS if m in set(df["method"])]
    out = []
    for label in CLASS_LABELS:
        header = ["method", *(f"{label} {m}" for m in CLASS_METRICS)]
        body = [[m, *(_cell(df, m, f"test/{label}_{k}") for k in CLASS_METRICS)] for m in methods]
        out += [f"**{label}** (test models; precision, recall, F1 macro over classes)", ""]
        out += [_md_table(header, body), ""]
    header = ["method", *(f"{p} {k}" for p in VALUE_LABELS for k in ("R^2", "MSE", "MAE"))]
    body = [
        [m, *(_cell(df, m, f"test/{p}_{k}") for p in VALUE_LABELS for k in VALUE_METRICS)]
        for m in methods
    ]
    out += ["**Regressed properties** (data_size and n_params in log10)", ""]
    return out + [_md_table(header, body), ""]


def _mean(df: pd.DataFrame, method: str, column: str) -> float:
    sel = df[(df["method"] == method) & (df["status"] == "done")]
    return float(np.nanmean(sel[column])) if column in sel and len(sel) else float("nan")


def targets_text(df: pd.DataFrame, chance: dict[str, float]) -> list[str]:
    """The section's targets, read off the measured means: NWPA above chance on every class
    label, and at or above StatNN on at least one label (accuracy, or R^2)."""
    lines = []
    for label in CLASS_LABELS:
        acc = _mean(df, "NWPA", f"test/{label}_acc")
        if not np.isfinite(acc):
            lines.append(f"- NWPA {label}: no finished NWPA run")
            continue
        verdict = "above" if acc > chance[label] else "not above"
        lines.append(
            f"- NWPA {label} accuracy {acc:.3f}: {verdict} chance "
            f"({chance[label]:.3f}, the test split's largest class)"
        )
    wins = []
    for label in LABELS:
        key = f"test/{label}_{'acc' if label in CLASS_LABELS else 'r2'}"
        a, b = _mean(df, "NWPA", key), _mean(df, "StatNN-GBT", key)
        if np.isfinite(a) and np.isfinite(b) and a >= b:
            wins.append(f"{label} ({a:.3f} vs {b:.3f})")
    lines.append("- NWPA at or above StatNN-GBT on: " + (", ".join(wins) if wins else "no label"))
    return lines


def chance_levels(out: Path, df: pd.DataFrame) -> dict[str, float]:
    """Per class label, the share of the largest class among the test models (from a run's
    targets)."""
    for key in df[df["status"] == "done"]["key"]:
        path = out / "runs" / key / OUTPUTS
        if not path.is_file():
            continue
        with np.load(path, allow_pickle=False) as z:
            y, split = z["target"], z["split"]
        test = y[split == "test"]
        levels = {}
        for j, label in enumerate(CLASS_LABELS):
            col = test[:, j][test[:, j] >= 0].astype(int)
            levels[label] = float(np.bincount(col).max() / len(col)) if len(col) else float("nan")
        return levels
    return dict.fromkeys(CLASS_LABELS, float("nan"))


def section(out: Path, runs: Sequence[RunSpec], zoo: str) -> str:
    """The section's Markdown (tables, targets, costs, figures), written into ``out``."""
    from nwa.suite.archeology_figures import draw_all

    df = load_section(out, runs)
    done = df[df["status"] == "done"]
    lines = ["## 5. Neural Weight Archeology across architectures", ""]
    lines += [
        f"Zoo `{zoo}`: MLPs, CNNs, ResNets and ViTs trained from scratch with SGD or Adam on "
        "sampled data sizes and lengths; every method predicts the family, the optimizer, "
        "log10 data size, test accuracy and log10 parameter count of each test model. NWPA and "
        "WeightNet read whole networks as graphs (one head per label, multi-task loss); StatNN "
        "(LightGBM on the 7 statistics of 4 pools every network has: all weights, all vectors, "
        "first and last weight) and PCA (32 components of the module-order parameters resampled "
        "to 4,096 values, then an MLP) read a common-size view, since the architectures share "
        f"no tensor. Mean ± std over {df['seed'].nunique()} seed(s); "
        f"{len(done)} of {len(df)} runs finished.",
        "",
    ]
    lines += tables(df)
    lines += targets_text(df, chance_levels(out, df)) + [""]
    per_1000 = {m: _mean(df, m, "train_s_per_epoch_per_1000") for m in NETWORKS}
    cost = [f"{m} {v:.1f} s" for m, v in per_1000.items() if np.isfinite(v)]
    if cost:
        lines += ["Training cost per epoch per 1,000 models: " + ", ".join(cost) + ".", ""]
    for path in draw_all(out, df):
        lines += [f"![{path.stem}]({path.relative_to(out)})", ""]
    return "\n".join(lines)


def append_section(report: Path, out: Path, runs: Sequence[RunSpec], zoo: str) -> int:
    """Add the section to the bench report ``report``; returns how many of its runs did not
    finish."""
    text = section(out, runs, zoo)
    body = report.read_text() if report.is_file() else ""
    atomic_write_text(report, body.rstrip("\n") + "\n\n" + text + "\n")
    df = load_section(out, runs)
    return int((df["status"] != "done").sum())
