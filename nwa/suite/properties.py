"""The bench's property section: test-accuracy prediction on the property zoo.

The zoo (``configs/zoo/default_properties.yaml``, ``small_properties`` for ``--quick``) holds
small CNNs trained from scratch with sampled hyperparameters, as the Small CNN Zoo does. Every
method predicts each CNN's test accuracy from its weights; the report gives test R^2 and
Kendall's tau (mean ± std over seeds) against the targets (best R^2 >= 0.90, tau >= 0.85),
where NWPA and WeightNet stand against StatNN, and an independent check of nwa's StatNN-GBT: a
plain ``lightgbm.LGBMRegressor`` with the recipe's boosting settings, fitted here on the same
StatNN statistics (:mod:`nwa.weights.stats`) and split, outside nwa's data module and
Lightning, whose R^2 nwa's must match within :data:`LGBM_TOLERANCE`. The zoo's binomial noise ceiling stands beside the
table.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nwa.suite.plan import CONFIGS, METHODS, PROPERTIES, Family, RunSpec, Suite, _method_args

SUBSET = "property zoo"
ZOOS = {"quick": "small_properties", "full": "default_properties"}
FAMILY = Family("small_cnn", ("conv2d*.weight",))  # ProbeX, Dense, PCA: the three convolutions
EPOCHS = {  # the suite's presets are sized for the vision trees; these for thousands of CNNs
    "quick": {"default": 20, "NWPA": 8},
    # 3 seeds of all eight methods in about 25 minutes of the full suite's 2 hours on 2 cores:
    # over 2,800 CNNs WeightNet costs about 7 s an epoch and NWPA 13; at 15 epochs WeightNet
    # was still improving (R^2 0.57)
    "full": {"default": 60, "NWPA": 30},
}
TARGETS = {"r2_test_acc": 0.90, "kendall_test_acc": 0.85}
LGBM_TOLERANCE = 0.03
CHECKS = "property-checks"


def runs(suite: Suite, zoo: str, methods: Sequence[str], layers: Sequence[str]) -> list[RunSpec]:
    """Every method's test-accuracy run on the small CNNs of ``zoo``, seed by seed.

    Args:
        suite: The preset (its seeds; its name picks the epochs of :data:`EPOCHS`).
        zoo: The property zoo (name or folder).
        methods: Method names of :data:`~nwa.suite.plan.METHODS`.
        layers: Tensor names of one small CNN.
    """
    from dataclasses import replace

    epochs = EPOCHS.get(suite.name, {})
    sized = replace(suite, epochs=epochs) if epochs else suite
    out = []
    for seed in suite.seeds:
        for name in methods:
            args = _method_args(sized, METHODS[name], FAMILY, layers, name)
            args += ["--config", str(CONFIGS / "shared" / "regression.yaml")]
            args += ["--data.init_args.properties", "[test_acc]", "--data.init_args.zoo", zoo]
            args += ["--data.init_args.drop_nonfinite", "true", "--seed_everything", str(seed)]
            out.append(RunSpec(PROPERTIES, name, SUBSET, seed, tuple(args)))
    return out


def plan_runs(
    suite: Suite, zoo: str | None, methods: Sequence[str] | None
) -> tuple[list[RunSpec], Path]:
    """The section's runs on ``zoo`` (default: the suite's, built on first use) and its folder."""
    from nwa.zoo.adapters import open_zoo
    from nwa.zoo.cache import zoo_path

    path = zoo_path(zoo or ZOOS.get(suite.name, ZOOS["full"]))
    table = open_zoo(path).table
    cnns = table[table["arch"].astype(str).map(lambda a: fnmatch.fnmatch(a, FAMILY.arch))]
    if cnns.empty:
        raise ValueError(f"{path}: no {FAMILY.arch} models for the property section")
    layers = open_zoo(path).open_model(cnns.iloc[0]).names()
    return runs(suite, str(path), methods or list(METHODS), layers), path


def cnn_rows(zoo: Any) -> tuple[pd.DataFrame, int]:
    """The zoo's small CNNs with finite weights (those the data module keeps), with their StatNN
    statistics in ``features``; and how many were left out as diverged."""
    from nwa.weights.stats import statnn_features

    arch = zoo.table["arch"].astype(str).map(lambda a: fnmatch.fnmatch(a, FAMILY.arch))
    rows = zoo.table[arch]
    keep = np.array([float(labels.get("diverged", 0.0)) == 0.0 for labels in rows["labels"]])
    rows = rows[keep].reset_index(drop=True)
    feats = []
    for _, row in rows.iterrows():
        with zoo.open_model(row) as src:
            names = [n for n in src.names() if n.endswith((".weight", ".bias"))]
            feats.append(statnn_features([src.get(n).double() for n in names]).numpy())
    rows["features"] = feats
    return rows, int((~keep).sum())


def noise_ceiling(rows: pd.DataFrame) -> float:
    """``1 - E[p (1 - p) / n] / Var(test_acc)`` over the test models: the share of the
    measured accuracies' variance that is not binomial measurement noise."""
    test = rows[rows["split"] == "test"]
    n = np.array([float(lb.get("eval_images", np.nan)) for lb in test["labels"]])
    p = test["test_acc"].to_numpy(float)
    return float(1 - np.nanmean(p * (1 - p) / n) / p.var())


def boosting() -> dict[str, Any]:
    """The boosting settings of StatNN-GBT's recipe (rounds, learning rate, leaves): the check
    fits the same trees on statistics computed outside nwa's pipeline, so a gap is the
    pipeline's (features, split, targets), not another model's."""
    from nwa.recipes import compose

    recipe = compose(CONFIGS / METHODS["StatNN-GBT"].config)
    args = recipe["model"]["init_args"]
    keys = ("n_estimators", "learning_rate", "num_leaves", "min_child_samples")
    return {k: args[k] for k in keys if k in args}


def lgbm_check(rows: pd.DataFrame, seed: int) -> dict[str, Any]:
    """An independent LightGBM on the StatNN statistics of :func:`cnn_rows`: fitted on the train
    split, scored on the test split (R^2, Kendall's tau)."""
    import lightgbm as lgb
    from scipy.stats import kendalltau
    from sklearn.metrics import r2_score

    x, y = np.stack(rows["features"]), rows["test_acc"].to_numpy(float)
    fit, test = (rows["split"] == "train").to_numpy(), (rows["split"] == "test").to_numpy()
    model = lgb.LGBMRegressor(**boosting(), random_state=seed, verbose=-1)
    pred = model.fit(x[fit], y[fit]).predict(x[test])
    return {
        "seed": seed,
        "r2": float(r2_score(y[test], pred)),
        "kendall": float(kendalltau(pred, y[test]).statistic),
        "n_train": int(fit.sum()),
        "n_test": int(test.sum()),
        "noise_ceiling": noise_ceiling(rows),
        "test_acc_range": [float(y.min()), float(y.max())],
    }


def run_checks(out: Path, zoo_path: str | Path, seeds: Sequence[int], force: bool = False) -> None:
    """Run (or reuse) the LightGBM check of each seed into ``out/property-checks/``."""
    from nwa.atomic import atomic_write_text
    from nwa.zoo.adapters import open_zoo

    folder = out / CHECKS
    folder.mkdir(parents=True, exist_ok=True)
    todo = [s for s in seeds if force or not (folder / f"lgbm-s{s}.json").is_file()]
    if not todo:
        return
    rows, diverged = cnn_rows(open_zoo(zoo_path))  # statistics once for every seed
    for seed in todo:
        result = lgbm_check(rows, seed) | {"zoo": str(zoo_path), "diverged": diverged}
        atomic_write_text(folder / f"lgbm-s{seed}.json", json.dumps(result, indent=1))


def _checks(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / CHECKS).glob("lgbm-s*.json"))]


def _stat(df: pd.DataFrame, method: str, column: str) -> tuple[float, float, int]:
    sel = df[(df["method"] == method) & (df["status"] == "done")] if len(df) else df
    vals = pd.to_numeric(sel[column], errors="coerce").dropna() if column in sel else []
    if len(vals) == 0:
        return float("nan"), float("nan"), 0
    return float(np.mean(vals)), float(np.std(vals)), len(vals)


def _fmt(stat: tuple[float, float, int]) -> str:
    mean, std, n = stat
    return "-" if n == 0 else f"{mean:.3f} ± {std:.3f}"


def section(out: Path, df: pd.DataFrame, figs: Path | None = None) -> list[str]:
    """The report's property section (empty when no property run was planned)."""
    props = df[(df["task"] == PROPERTIES) & (df["subset"] == SUBSET)] if len(df) else df
    if props.empty:
        return []
    checks = _checks(out)
    lines = [
        "## 4. Test-accuracy prediction on the property zoo (small CNNs, Small-CNN-Zoo regime)",
        "",
    ]
    if checks:
        c = checks[0]
        lines += [
            f"Zoo `{Path(c['zoo']).name}`: {c['n_train']} training and {c['n_test']} test CNNs with "
            f"finite weights (runs' checkpoints share a split; {c['diverged']} diverged models "
            f"left out); test accuracy {c['test_acc_range'][0]:.2f}..{c['test_acc_range'][1]:.2f}; "
            f"noise ceiling of R² {c['noise_ceiling']:.3f}.",
            "",
        ]
    methods = [m for m in METHODS if m in set(props["method"])]
    table = ["| method | test R² | Kendall's tau | seeds |", "|---|---|---|---|"]
    for m in methods:
        r2, tau = _stat(props, m, "r2_test_acc"), _stat(props, m, "kendall_test_acc")
        table.append(f"| {m} | {_fmt(r2)} | {_fmt(tau)} | {r2[2]} |")
    if checks:
        r2 = [c["r2"] for c in checks]
        tau = [c["kendall"] for c in checks]
        table.append(
            f"| LightGBM (independent) | {np.mean(r2):.3f} ± {np.std(r2):.3f} | "
            f"{np.mean(tau):.3f} ± {np.std(tau):.3f} | {len(checks)} |"
        )
    lines += [*table, "", *_verdicts(props, methods, checks), ""]
    return lines


def _verdicts(props: pd.DataFrame, methods: list[str], checks: list[dict[str, Any]]) -> list[str]:
    """The targets met or missed, the LightGBM check, and NWPA / WeightNet against StatNN."""
    out = []
    for column, target in TARGETS.items():
        scored = [(m, _stat(props, m, column)[0]) for m in methods]
        scored = [(m, v) for m, v in scored if v == v]
        if scored:
            best, value = max(scored, key=lambda mv: mv[1])
            verdict = "met" if value >= target else "NOT met"
            what = "R²" if column.startswith("r2") else "Kendall's tau"
            out.append(f"- Target best {what} >= {target}: {verdict} ({best} {value:.3f}).")
    gbt = _stat(props, "StatNN-GBT", "r2_test_acc")[0]
    if checks and gbt == gbt:
        ref = float(np.mean([c["r2"] for c in checks]))
        ok = abs(gbt - ref) <= LGBM_TOLERANCE
        out.append(
            f"- StatNN-GBT R² {gbt:.3f} vs the independent LightGBM {ref:.3f}: "
            f"{'within' if ok else 'NOT within'} {LGBM_TOLERANCE}."
        )
    for m in ("NWPA", "WeightNet"):
        for column, what in (("r2_test_acc", "R²"), ("kendall_test_acc", "tau")):
            mine, base = (_stat(props, k, column)[0] for k in (m, "StatNN-GBT"))
            if mine == mine and base == base:
                out.append(f"- {m} {what} {mine:.3f}, StatNN-GBT {base:.3f} ({mine - base:+.3f}).")
    return out
