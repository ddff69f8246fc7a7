"""The benchmark report: tables of mean and standard deviation over seeds, in Markdown, with figures.

Every number comes from the runs' ``result.json`` and ``outputs.npz`` files (see
:mod:`nwa.suite.execute`); a missing or failed run shows as ``-`` and is listed under "Runs".
"""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nwa.suite import figures, properties
from nwa.suite.execute import OUTPUTS, load_result, log_dir, needs_run
from nwa.suite.plan import CLASSES, CONCEPT, METHODS, PROPERTIES, RunSpec
from nwa.zoo.build import cpu_cores

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
    return pd.DataFrame(rows)


def _alignment_columns(a: dict[str, Any]) -> dict[str, Any]:
    cols = {
        k: a.get(k)
        for k in (
            "in_distribution_top1",
            "in_distribution_chance",
            "zero_shot_top1",
            "zero_shot_chance",
        )
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


def _cell(df: pd.DataFrame, column: str, digits: int = 3, **where: Any) -> str:
    sel = _select(df, **where)
    if column not in sel:
        return "-"
    return mean_std(sel[column].tolist(), digits)


def _select(df: pd.DataFrame, **where: Any) -> pd.DataFrame:
    sel = df[df["status"] == "done"] if "status" in df else df
    for k, v in where.items():
        sel = sel[sel[k] == v]
    return sel


def _values(df: pd.DataFrame, column: str, **where: Any) -> list[Any]:
    """``column`` of the finished runs matching ``where`` (none when no run logged it)."""
    sel = _select(df, **where)
    return sel[column].tolist() if column in sel else []


def _params(df: pd.DataFrame, **where: Any) -> str:
    sel = _select(df, **where)
    if sel.empty:
        return "-"
    enc = sel["encoder_params"].dropna() if "encoder_params" in sel else pd.Series([])
    n = int(enc.iloc[0]) if len(enc) else int(sel["params"].iloc[0])
    return f"{n:,}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _methods(df: pd.DataFrame, only: Any = None, **where: Any) -> list[str]:
    """Methods of the runs matching ``where`` (restricted to ``only``), in plan order."""
    sel = df
    for k, v in where.items():
        sel = sel[sel[k] == v]
    return [m for m in dict.fromkeys(sel["method"]) if only is None or m in only]


def _outputs(
    out: Path, df: pd.DataFrame, keys: Sequence[str] | None = None, **where: Any
) -> list[dict[str, np.ndarray]]:
    """The selected runs' ``outputs.npz`` arrays; only ``keys`` where given (each array of an
    npz is decompressed on access, so the representations are skipped when not needed)."""
    found = []
    for key in _select(df, **where)["key"]:
        path = out / "runs" / key / OUTPUTS
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                found.append({k: z[k] for k in (z.files if keys is None else keys)})
    return found


def _history(out: Path, df: pd.DataFrame, **where: Any) -> list[pd.DataFrame]:
    from nwa.runs import RunError, load_run

    found = []
    for key in _select(df, **where)["key"]:
        try:
            found.append(load_run(log_dir(out / "runs" / key)).history)
        except RunError:
            continue
    return found


# ----- sections -----


def nwa_section(out: Path, df: pd.DataFrame, figs: Path) -> list[str]:
    lines = ["## 1. Neural Weight Archeology: what the weights say (ResNet trees)", ""]
    cls = _select(df, task=CLASSES, subset="resnet trees")
    methods = _methods(df, METHODS, task=CLASSES, subset="resnet trees")
    if methods:
        rows = [
            [
                m,
                *(_cell(cls, c, method=m) for c in CLASS_METRICS),
                _params(cls, method=m),
            ]
            for m in methods
        ]
        lines += [
            "### Training-class prediction (test split; which 5 of 10 classes each model saw)",
            "",
            _table(["method", *CLASS_METRICS.values(), "parameters"], rows),
            "",
        ]
        rows = [
            [
                m,
                _params(cls, method=m),
                _cell(cls, "train_s_per_epoch", 3, method=m),
                _cell(cls, "train_s_per_epoch_per_1000", 2, method=m),
                _cell(cls, "epochs", 0, method=m),
                _cell(cls, "wall_s", 1, method=m),
            ]
            for m in methods
        ]
        lines += [
            "### Cost of the classification runs",
            "",
            "Training seconds per epoch count the training loop alone (no start-up, validation "
            "or checkpoints); wall seconds the whole run, testing included.",
            "",
            _table(
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
    reg = _select(df, task=PROPERTIES, subset="resnet trees")
    reg_methods = _methods(df, METHODS, task=PROPERTIES, subset="resnet trees")
    if reg_methods:
        rows = [
            [
                m,
                *(_cell(reg, c, method=m) for c in ("r2", "mse", "mae")),
                *(_cell(reg, f"r2_{p}", method=m) for p in PROPERTY_NAMES),
            ]
            for m in reg_methods
        ]
        lines += [
            "### Property regression (test split): overall and per-property R²",
            "",
            _table(["method", "R²", "MSE", "MAE", *(f"R² {p}" for p in PROPERTY_NAMES)], rows),
            "",
        ]
    lines += _figure_lines(
        [
            figures.embeddings(
                {
                    m: _outputs(out, df, task=CLASSES, subset="resnet trees", method=m)
                    for m in methods
                },
                figs / "nwa_embeddings_trees.png",
                colour="tree",
                title="Learned representations by tree (first seed; crosses: test models)",
            ),
            figures.embeddings(
                {
                    m: _outputs(out, df, task=PROPERTIES, subset="resnet trees", method=m)
                    for m in reg_methods
                },
                figs / "nwa_embeddings_test_acc.png",
                colour="test_acc",
                title="Learned representations, coloured by the model's test accuracy",
            ),
            figures.curves(
                {
                    f"{task} · {m}": _history(out, df, task=task, subset="resnet trees", method=m)
                    for task in (CLASSES, PROPERTIES)
                    for m in _methods(df, METHODS, task=task, subset="resnet trees")
                },
                ("train/loss", "val/loss"),
                figs / "nwa_training_curves.png",
            ),
        ],
        out,
    )
    return lines


def weightnet_section(out: Path, df: pd.DataFrame, figs: Path) -> list[str]:
    methods = [
        m for m in ("WeightNet", "FlatMLP") if not _select(df, task=PROPERTIES, method=m).empty
    ]
    lines = ["## 2. WeightNet against the flat-weights MLP (property regression, ResNet trees)", ""]
    if not methods:
        return [*lines, "No finished WeightNet or FlatMLP regression run.", ""]
    reg = _select(df, task=PROPERTIES, subset="resnet trees")
    rows = []
    for p in (*PROPERTY_NAMES, None):
        suffix = f"_{p}" if p else ""
        for m in methods:
            rows.append(
                [
                    p or "all",
                    m,
                    *(
                        _cell(reg, f"{metric}{suffix}", 4, method=m)
                        for metric in ("mae", "rmse", "r2")
                    ),
                ]
            )
    lines += [_table(["property", "method", "MAE", "RMSE", "R²"], rows), ""]
    outputs = {
        m: _outputs(out, df, task=PROPERTIES, subset="resnet trees", method=m) for m in methods
    }
    per_seed = {
        m: {
            metric: [_values(reg, f"{metric}_{p}", method=m) for p in PROPERTY_NAMES]
            for metric in ("mae", "r2")
        }
        for m in methods
    }
    lines += _figure_lines(
        [
            figures.predicted_vs_true(outputs, PROPERTY_NAMES, figs / "weightnet_scatter.png"),
            figures.error_histograms(outputs, PROPERTY_NAMES, figs / "weightnet_errors.png"),
            figures.metric_bars(
                {m: v["mae"] for m, v in per_seed.items()},
                PROPERTY_NAMES,
                "MAE (test; mean ± std over seeds)",
                figs / "weightnet_mae.png",
            ),
            figures.radar(
                {m: [_mean(v) for v in per_seed[m]["r2"]] for m in methods},
                PROPERTY_NAMES,
                "R² per property (test; mean over seeds)",
                figs / "weightnet_r2_radar.png",
            ),
            figures.curves(
                {
                    m: _history(out, df, task=PROPERTIES, subset="resnet trees", method=m)
                    for m in methods
                },
                ("train/loss", "val/loss"),
                figs / "weightnet_loss_curves.png",
            ),
        ],
        out,
    )
    return lines


def _mean(values: Sequence[Any]) -> float:
    v = np.array([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def probex_section(out: Path, df: pd.DataFrame, figs: Path) -> list[str]:
    lines = ["## 3. ProbeX: per tree, the tree effect, tree experts, zero-shot", ""]
    cls = _select(df, task=CLASSES)
    trees = sorted(s for s in df["subset"].unique() if str(s).startswith("vision-"))
    methods = _methods(df[df["subset"].isin(trees)], task=CLASSES)
    if trees and methods:
        rows = [[t, *(_cell(cls, "acc", method=m, subset=t) for m in methods)] for t in trees]
        rows.append(
            ["parameters (first tree)", *(_params(cls, method=m, subset=trees[0]) for m in methods)]
        )
        rows.append(
            [
                "train s / epoch / 1,000 models",
                *(
                    _cell(cls[cls["subset"].isin(trees)], "train_s_per_epoch_per_1000", 2, method=m)
                    for m in methods
                ),
            ]
        )
        lines += [
            "### Training-class prediction per tree (element-wise test accuracy; chance 0.5)",
            "",
            _table(["tree", *methods], rows),
            "",
        ]
        bars = {m: [_values(cls, "acc", method=m, subset=t) for t in trees] for m in methods}
        lines += _figure_lines(
            [
                figures.metric_bars(
                    bars,
                    trees,
                    "Element-wise test accuracy per tree (mean ± std over seeds)",
                    figs / "probex_per_tree.png",
                    labels={
                        m: f"{m} ({_params(cls, method=m, subset=trees[0])} params)"
                        for m in methods
                    },
                )
            ],
            out,
        )
    props = _select(df, task=PROPERTIES)
    reg_methods = _methods(df[df["subset"].isin(trees)], task=PROPERTIES)
    if trees and reg_methods:
        rows = [
            [
                t,
                *(
                    f"{_cell(props, 'r2_test_acc', method=m, subset=t)} / "
                    f"{_cell(props, 'kendall_test_acc', method=m, subset=t)}"
                    for m in reg_methods
                ),
            ]
            for t in trees
        ]
        per_tree = props[props["subset"].isin(trees)]
        n_train = pd.Series(_values(per_tree, "n_train"), dtype=float).median()
        size = f"{n_train:.0f} training models per tree" if pd.notna(n_train) else "its members"
        lines += [
            "### Test-accuracy regression per tree (test R² / Kendall's tau; one model per tree)",
            "",
            f"Each tree alone ({size}); gen_gap and robustness are in "
            "`results.csv`. `python benchmarks/property_ceiling.py --zoo ZOO --trees TREE` gives "
            "what any predictor can reach on a tree (label-noise ceiling, recipe oracle).",
            "",
            _table(["tree", *reg_methods], rows),
            "",
        ]
    within = [v for t in trees for v in _values(cls, "acc", method="ProbeX", subset=t)]
    forest = _values(cls, "acc", method="ProbeX", subset="forest")
    if within or forest:
        lines += [
            "### The tree effect: within a pretrained tree against across the random-init forest",
            "",
            _table(
                ["models", "ProbeX element-wise acc", "runs"],
                [
                    ["within each pretrained tree (all trees)", mean_std(within), len(within)],
                    ["across the forest (each member its own tree)", mean_std(forest), len(forest)],
                    ["chance", "0.500", ""],
                ],
            ),
            "",
        ]
    fams = sorted(
        s.removesuffix(" trees")
        for s in df["subset"].unique()
        if str(s).endswith(" trees") and not _select(df, method="ProbeX experts", subset=s).empty
    )
    if fams:
        rows = []
        for fam in fams:
            subset = f"{fam} trees"
            rows.append(
                [
                    subset,
                    _cell(cls, "acc", method="ProbeX", subset=subset),
                    _cell(cls, "acc", method="ProbeX experts", subset=subset),
                    _cell(cls, "f1", method="ProbeX", subset=subset),
                    _cell(cls, "f1", method="ProbeX experts", subset=subset),
                    _cell(cls, "router_purity", method="ProbeX experts", subset=subset),
                    _cell(cls, "router/n_trees", 1, method="ProbeX experts", subset=subset),
                ]
            )
        lines += [
            "### Mixture of tree experts against one joint model",
            "",
            _table(
                [
                    "models",
                    "joint acc",
                    "experts acc",
                    "joint F1",
                    "experts F1",
                    "router purity",
                    "trees found",
                ],
                rows,
            ),
            "",
        ]
        lines += _experts_per_tree(out, df, fams)
    lines += align_tables(df)
    first = _select(df, task=CONCEPT, method="ProbeX")
    if not first.empty:
        found = sorted((out / "runs" / first["key"].iloc[0]).rglob("align_embedding.png"))
        if found:
            target = figs / "align_embedding.png"
            shutil.copyfile(found[0], target)
            lines += _figure_lines([target], out)
    return lines


TREE_KEYS = ("split", "tree", "pred", "target")  # what tree_accuracy reads


def tree_accuracy(outputs: dict[str, np.ndarray], tree: str) -> float | None:
    """Element-wise accuracy on ``tree``'s test models of one run's multi-label outputs (the
    decision ``probability > 0.5``, as the logged ``test/acc``)."""
    rows = (outputs["split"] == "test") & (outputs["tree"] == tree)
    if not rows.any() or outputs["pred"].shape != outputs["target"].shape:
        return None
    return float(((outputs["pred"][rows] > 0.5) == (outputs["target"][rows] > 0.5)).mean())


def _experts_per_tree(out: Path, df: pd.DataFrame, fams: Sequence[str]) -> list[str]:
    """Each tree's test models as scored by the model trained on that tree alone, by the joint
    model and by the tree's expert: does a tree gain or lose from the other trees' models?"""
    rows = []
    for fam in fams:
        runs = {
            m: _outputs(out, df, TREE_KEYS, task=CLASSES, method=m, subset=f"{fam} trees")
            for m in ("ProbeX", "ProbeX experts")
        }
        trees = sorted({str(t) for o in runs["ProbeX experts"] for t in o["tree"]})
        for tree in trees:
            cells = [_cell(df, "acc", task=CLASSES, method="ProbeX", subset=tree)]
            for m in ("ProbeX", "ProbeX experts"):
                accs = [a for o in runs[m] if (a := tree_accuracy(o, tree)) is not None]
                cells.append(mean_std(accs) if accs else "-")
            rows.append([tree, *cells])
    if not rows:
        return []
    return [
        "Per tree (element-wise test accuracy on the tree's test models):",
        "",
        _table(["tree", "ProbeX on this tree alone", "joint", "this tree's expert"], rows),
        "",
    ]


def align_tables(df: pd.DataFrame) -> list[str]:
    al = _select(df, task=CONCEPT)
    if al.empty:
        return []
    methods = _methods(al)
    rows = [
        [
            m,
            _cell(al, "in_distribution_top1", method=m),
            _cell(al, "in_distribution_chance", method=m),
            _cell(al, "zero_shot_top1", method=m),
            _cell(al, "zero_shot_chance", method=m),
        ]
        for m in methods
    ]
    lines = [
        "### Naming the fine-tuning concept of LoRA models from their weights (top-1)",
        "",
        _table(
            ["encoder", "in-distribution", "chance", "zero-shot (unseen concepts)", "chance"], rows
        ),
        "",
    ]
    for part, title in (
        ("in_distribution", "training concepts"),
        ("held_out", "held-out concepts"),
    ):
        metrics = (
            "knn_top1",
            "retrieval_p@1",
            "retrieval_p@5",
            "one_class_auroc_knn",
            "one_class_auroc_ledoit_wolf",
        )
        rows = [
            [f"{m} (learned)", *(_cell(al, f"learned:{part}:{k}", method=m) for k in metrics)]
            for m in methods
        ]
        rows.append(
            ["raw weights", *(_cell(al, f"raw:{part}:{k}", method=methods[0]) for k in metrics)]
        )
        lines += [
            f"### kNN, retrieval and one-class detection on {title}",
            "",
            _table(
                [
                    "representation",
                    "kNN top-1",
                    "P@1",
                    "P@5",
                    "one-class AUROC (kNN)",
                    "one-class AUROC (Ledoit-Wolf)",
                ],
                rows,
            ),
            "",
        ]
    return lines


def runs_section(df: pd.DataFrame) -> list[str]:
    rows = []
    for _, r in df.iterrows():
        err = r.get("error")
        rows.append(
            [
                r["key"],
                r["status"],
                _fmt(r.get("epochs")),
                _fmt(r.get("wall_s")),
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
        _table(["run", "status", "epochs", "wall s", "error"], rows),
        "",
    ]


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _figure_lines(paths: Sequence[Path | None], out: Path) -> list[str]:
    return [f"![{p.stem}]({p.relative_to(out).as_posix()})\n" for p in paths if p is not None]


def write_report(
    out: Path, runs: Sequence[RunSpec], header: dict[str, Any]
) -> tuple[Path, pd.DataFrame]:
    """Write ``<out>/report.md``, ``<out>/results.csv`` and ``<out>/figures/*.png``."""
    from nwa.atomic import atomic_write_text

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
    df.to_csv(out / "results.csv", index=False)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    atomic_write_text(out / "report.json", json.dumps(meta, indent=1))
    return path, df
