"""Report section 3, ProbeX: per tree against Dense and StatNN, the tree effect (within a
tree against the forest), tree experts against one joint model, and naming LoRA concepts
(zero-shot, kNN, retrieval, one-class)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nwa.suite import figures
from nwa.suite.plan import ALIGNERS, CLASSES, CONCEPT, PROPERTIES, aligner_layers
from nwa.suite.report_common import (
    cell,
    column_values,
    figure_lines,
    finite_mean,
    md_table,
    mean_std,
    method_names,
    param_count,
    param_number,
    run_outputs,
    select,
)


def probex_section(out: Path, df: pd.DataFrame, figs: Path) -> list[str]:
    lines = ["## 3. ProbeX: per tree, the tree effect, tree experts, zero-shot", ""]
    cls = select(df, task=CLASSES)
    trees = sorted(s for s in df["subset"].unique() if str(s).startswith("vision-"))
    methods = method_names(df[df["subset"].isin(trees)], task=CLASSES)
    if trees and methods:
        rows = [[t, *(cell(cls, "acc", method=m, subset=t) for m in methods)] for t in trees]
        rows.append(
            [
                "parameters (first tree)",
                *(param_count(cls, method=m, subset=trees[0]) for m in methods),
            ]
        )
        rows.append(
            [
                "train s / epoch / 1,000 models",
                *(
                    cell(cls[cls["subset"].isin(trees)], "train_s_per_epoch_per_1000", 2, method=m)
                    for m in methods
                ),
            ]
        )
        lines += [
            "### Training-class prediction per tree (element-wise test accuracy; chance 0.5)",
            "",
            md_table(["tree", *methods], rows),
            "",
        ]
        bars = {m: [column_values(cls, "acc", method=m, subset=t) for t in trees] for m in methods}
        lines += figure_lines(
            [
                figures.metric_bars(
                    bars,
                    trees,
                    "Element-wise test accuracy per tree (mean ± std over seeds)",
                    figs / "probex_per_tree.png",
                    ylabel="element-wise test accuracy (fraction)",
                    xlabel="tree",
                    labels={
                        m: f"{m} ({param_count(cls, method=m, subset=trees[0])} params)"
                        for m in methods
                    },
                )
            ],
            out,
        )
    props = select(df, task=PROPERTIES)
    reg_methods = method_names(df[df["subset"].isin(trees)], task=PROPERTIES)
    if trees and reg_methods:
        rows = [
            [
                t,
                *(
                    f"{cell(props, 'r2_test_acc', method=m, subset=t)} / "
                    f"{cell(props, 'kendall_test_acc', method=m, subset=t)}"
                    for m in reg_methods
                ),
            ]
            for t in trees
        ]
        per_tree = props[props["subset"].isin(trees)]
        n_train = pd.Series(column_values(per_tree, "n_train"), dtype=float).median()
        size = f"{n_train:.0f} training models per tree" if pd.notna(n_train) else "its members"
        lines += [
            "### Test-accuracy regression per tree (test R² / Kendall's tau; one model per tree)",
            "",
            f"Each tree alone ({size}); gen_gap and robustness are in "
            "`results.csv`. `python benchmarks/property_ceiling.py --zoo ZOO --trees TREE` gives "
            "what any predictor can reach on a tree (label-noise ceiling, recipe oracle).",
            "",
            md_table(["tree", *reg_methods], rows),
            "",
        ]
    within = [v for t in trees for v in column_values(cls, "acc", method="ProbeX", subset=t)]
    forest = column_values(cls, "acc", method="ProbeX", subset="forest")
    if within or forest:
        lines += [
            "### The tree effect: within a pretrained tree against across the random-init forest",
            "",
            md_table(
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
        if str(s).endswith(" trees") and not select(df, method="ProbeX experts", subset=s).empty
    )
    if fams:
        rows = []
        for fam in fams:
            subset = f"{fam} trees"
            rows.append(
                [
                    subset,
                    cell(cls, "acc", method="ProbeX", subset=subset),
                    cell(cls, "acc", method="ProbeX experts", subset=subset),
                    cell(cls, "f1", method="ProbeX", subset=subset),
                    cell(cls, "f1", method="ProbeX experts", subset=subset),
                    cell(cls, "router_purity", method="ProbeX experts", subset=subset),
                    cell(cls, "router/n_trees", 1, method="ProbeX experts", subset=subset),
                ]
            )
        lines += [
            "### Mixture of tree experts against one joint model",
            "",
            md_table(
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
    lines += _tree_targets(df, trees, fams)
    lines += align_tables(df)
    first = select(df, task=CONCEPT, method="ProbeX")
    if not first.empty:
        found = sorted((out / "runs" / first["key"].iloc[0]).rglob("align_embedding.png"))
        if found:
            target = figs / "align_embedding.png"
            shutil.copyfile(found[0], target)
            if found[0].with_suffix(".pdf").is_file():
                shutil.copyfile(found[0].with_suffix(".pdf"), target.with_suffix(".pdf"))
            lines += figure_lines([target], out)
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
            m: run_outputs(out, df, TREE_KEYS, task=CLASSES, method=m, subset=f"{fam} trees")
            for m in ("ProbeX", "ProbeX experts")
        }
        trees = sorted({str(t) for o in runs["ProbeX experts"] for t in o["tree"]})
        for tree in trees:
            cells = [cell(df, "acc", task=CLASSES, method="ProbeX", subset=tree)]
            for m in ("ProbeX", "ProbeX experts"):
                accs = [a for o in runs[m] if (a := tree_accuracy(o, tree)) is not None]
                cells.append(mean_std(accs) if accs else "-")
            rows.append([tree, *cells])
    if not rows:
        return []
    return [
        "Per tree (element-wise test accuracy on the tree's test models):",
        "",
        md_table(["tree", "ProbeX on this tree alone", "joint", "this tree's expert"], rows),
        "",
    ]


def _tree_targets(df: pd.DataFrame, trees: Sequence[str], fams: Sequence[str]) -> list[str]:
    """The ProbeX claims of the per-tree comparison, each with its measured figures and whether
    it holds (means over seeds): ProbeX at least Dense and StatNN + 0.10 on every tree, tree
    experts at least one joint model, a pure router, ProbeX at most 1/20 of Dense's parameters."""
    cls = select(df, task=CLASSES)
    out = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for t in trees:
        p, d, s = (_mean(cls, "acc", method=m, subset=t) for m in ("ProbeX", "Dense", "StatNN-GBT"))
        if p is None:
            continue
        parts = []
        if d is not None:
            parts.append(f">= Dense {d:.3f}: {verdict(p >= d)}")
        if s is not None:
            parts.append(f">= StatNN-GBT + 0.10 ({s + 0.10:.3f}): {verdict(p >= s + 0.10)}")
        if parts:
            out.append(f"- {t}: ProbeX {p:.3f}; " + "; ".join(parts) + ".")
    for fam in fams:
        subset = f"{fam} trees"
        joint, experts = (
            _mean(cls, "acc", method=m, subset=subset) for m in ("ProbeX", "ProbeX experts")
        )
        purity = column_values(cls, "router_purity", method="ProbeX experts", subset=subset)
        if joint is not None and experts is not None:
            out.append(
                f"- {subset}: tree experts {experts:.3f} >= one joint model {joint:.3f}: "
                f"{verdict(experts >= joint)}."
            )
        if purity:
            low = min(float(v) for v in purity)
            out.append(
                f"- {subset}: router purity (lowest seed) {low:.3f} = 1: {verdict(low >= 1.0)}."
            )
    ratios = []
    for t in trees:
        p, d = (param_number(cls, method=m, subset=t) for m in ("ProbeX", "Dense"))
        if p is not None and d is not None:
            ratios.append(f"{t} {p:,} against {d:,} (1/{d / p:.0f}): {verdict(20 * p <= d)}")
    if ratios:
        out.append("- ProbeX at most 1/20 of Dense's parameters: " + "; ".join(ratios) + ".")
    if not out:
        return []
    return ["### The ProbeX claims, as measured (means over seeds)", "", *out, ""]


def align_tables(df: pd.DataFrame) -> list[str]:
    al = select(df, task=CONCEPT)
    if al.empty:
        return []
    methods = method_names(al)
    rows = [
        [
            m,
            _LAYER_NAMES[aligner_layers(m)] if m in ALIGNERS else "-",
            *(_naming_cells(al, m, part) for part in ("in_distribution", "zero_shot")),
        ]
        for m in methods
    ]
    n_test, n_held = (
        cell(al, f"{part}_n", 0, method=methods[0]) for part in ("in_distribution", "zero_shot")
    )
    lines = [
        "### Naming the fine-tuning concept of LoRA models from their weights",
        "",
        f"Top-1 with its 95 % Wilson interval (one run's {n_test} test models of training "
        f"concepts, {n_held} models of unseen concepts; with several seeds, the mean and the "
        "seeds' mean interval), top-5, and each one's chance level.",
        "",
        md_table(
            [
                "encoder",
                "layers",
                "in-distribution top-1",
                "top-5",
                "chance (top-1 / top-5)",
                "zero-shot top-1 (unseen concepts)",
                "top-5",
                "chance (top-1 / top-5)",
            ],
            [[r[0], r[1], *r[2], *r[3]] for r in rows],
        ),
        "",
        *_separation(al, methods),
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
            [f"{m} (learned)", *(cell(al, f"learned:{part}:{k}", method=m) for k in metrics)]
            for m in methods
        ]
        rows.append(
            ["raw weights", *(cell(al, f"raw:{part}:{k}", method=methods[0]) for k in metrics)]
        )
        lines += [
            f"### kNN, retrieval and one-class detection on {title}",
            "",
            md_table(
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


_LAYER_NAMES = {"cross-attn": "cross-attention values", "self-attn": "self-attention values"}


def _mean(df: pd.DataFrame, column: str, **where: object) -> float | None:
    """Mean of the matching runs' finite values of ``column`` over seeds (``None``: none)."""
    mean = finite_mean(column_values(df, column, **where))
    return None if np.isnan(mean) else mean


def _naming_cells(al: pd.DataFrame, method: str, part: str) -> list[str]:
    """Top-1 with its interval, top-5, and the chance levels of one part of one aligner."""
    lo, hi = (_mean(al, f"{part}_top1_{b}", method=method) for b in ("lo", "hi"))
    interval = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    chance = f"{cell(al, f'{part}_chance', method=method)} / "
    chance += cell(al, f"{part}_top5_chance", method=method)
    top1 = cell(al, f"{part}_top1", method=method)
    return [top1 + interval, cell(al, f"{part}_top5", method=method), chance]


def _separation(al: pd.DataFrame, methods: list[str]) -> list[str]:
    """Whether ProbeX and Dense (each on the same layers) name unseen concepts below 1.0 and
    apart by more than their intervals."""
    out = []
    for probex, dense in (("ProbeX", "Dense"), ("ProbeX self-attn", "Dense self-attn")):
        if probex not in methods or dense not in methods:
            continue
        keys = ("zero_shot_top1", "zero_shot_top1_lo", "zero_shot_top1_hi")
        p, plo, phi = (_mean(al, k, method=probex) for k in keys)
        d, dlo, dhi = (_mean(al, k, method=dense) for k in keys)
        if None in (p, plo, phi, d, dlo, dhi):
            continue
        below = p < 1.0 and d < 1.0
        apart = plo > dhi or dlo > phi
        out.append(
            f"- Zero-shot, {probex} {p:.3f} [{plo:.3f}, {phi:.3f}] against {dense} {d:.3f} "
            f"[{dlo:.3f}, {dhi:.3f}]: {'both' if below else 'NOT both'} below 1.0; the intervals "
            f"{'do not overlap' if apart else 'overlap'}."
        )
    return out + ([""] if out else [])
