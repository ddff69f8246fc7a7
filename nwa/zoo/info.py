"""What a zoo holds: trees, splits, label balance, accuracy and hyperparameter ranges, and how far
members sit from their own root versus other roots of the same architecture.

``python -m nwa.zoo info PATH`` prints :func:`format_report` of :func:`describe`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import torch

from nwa.weights.io import WeightSource, open_weights
from nwa.zoo.manifest import Zoo
from nwa.zoo.report import timings

ACC_COLUMNS = ("train_acc", "val_acc", "test_acc", "gen_gap", "robustness")


def weight_distances(
    members: list[WeightSource], roots: list[WeightSource], pairs: list[list[int]]
) -> list[list[float]]:
    """L2 distances of each member to the roots listed for it.

    Tensor by tensor (the float tensors a member shares by name and shape with a root), each
    tensor of each file read once; ``pairs[i]`` are the indices into ``roots`` for member ``i``.

    Returns:
        ``out[i][j]``: distance of member ``i`` to root ``pairs[i][j]`` (NaN if nothing is shared).
    """
    totals = [[0.0] * len(p) for p in pairs]
    shared = [[0] * len(p) for p in pairs]
    names = dict.fromkeys(n for m in members for n in m.names())
    for name in names:
        cache: dict[int, torch.Tensor | None] = {}
        for i, (member, wanted) in enumerate(zip(members, pairs)):
            if name not in member or not member.info(name).dtype.is_floating_point:
                continue
            tensor = member.get(name).float()
            for j, r in enumerate(wanted):
                if r not in cache:
                    ok = name in roots[r] and roots[r].info(name).shape == tensor.shape
                    cache[r] = roots[r].get(name).float().clone() if ok else None
                if cache[r] is not None:
                    totals[i][j] += float(torch.sub(tensor, cache[r]).square_().sum())
                    shared[i][j] += 1
    return [
        [math.sqrt(t) if n else math.nan for t, n in zip(ts, ns)] for ts, ns in zip(totals, shared)
    ]


def _groups(zoo: Zoo) -> dict[str, list[str]]:
    """``recipe/arch -> trees`` whose roots are stored."""
    groups: dict[str, list[str]] = {}
    for tree, entry in sorted(zoo.meta.trees.items()):
        if entry.get("path"):
            group = "/".join(str(entry[k]) for k in ("recipe", "arch") if entry.get(k))
            groups.setdefault(group, []).append(tree)
    return groups


def root_distances(
    zoo: Zoo, per_tree: int = 10, max_other: int = 8, max_members: int = 40
) -> dict[str, dict[str, Any]]:
    """Mean distance of members to their own root and to other roots of the same architecture.

    Args:
        zoo: The zoo.
        per_tree: Members sampled per tree (the first by id).
        max_other: Other roots compared per member (evenly spaced among all others).
        max_members: Members sampled per group at most (evenly over its trees).

    Returns:
        ``recipe/arch -> {"own", "other", "closer_to_own", "members", "roots"}`` (roots are
        compared within one recipe and architecture). Groups with a single root, or whose
        members share no tensor with their roots (LoRA adapters), are left out.
    """
    out = {}
    for group, trees in _groups(zoo).items():
        if len(trees) < 2:
            continue
        own_d, other_d, closer = [], [], 0
        sources = {t: open_weights(zoo.root_path(t), within=zoo.real_root()) for t in trees}
        quota = max(1, min(per_tree, max_members // len(trees)))
        chosen = trees[:: -(-len(trees) // max_members)]
        members, pairs = [], []
        try:
            for k, tree in enumerate(chosen):
                rows = zoo.table[zoo.table["tree"] == tree].sort_values("id").head(quota)
                others = [t for t in trees if t != tree]
                step = max(1, len(others) // max_other)
                others = others[(k % step) :: step][:max_other]
                for _, row in rows.iterrows():
                    members.append(zoo.open_model(row))
                    pairs.append([trees.index(t) for t in [tree, *others]])
            dists = weight_distances(members, [sources[t] for t in trees], pairs)
        finally:
            for src in [*sources.values(), *members]:
                src.close()
        for own, *other in dists:
            if math.isnan(own) or not other or any(math.isnan(d) for d in other):
                continue
            own_d.append(own)
            other_d.append(float(np.mean(other)))
            closer += own < min(other)
        if own_d:
            out[group] = {
                "own": float(np.mean(own_d)),
                "other": float(np.mean(other_d)),
                "closer_to_own": closer / len(own_d),
                "members": len(own_d),
                "roots": len(trees),
            }
    return out


def _range(values: pd.Series) -> dict[str, float]:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return {}
    return {"min": float(v.min()), "mean": float(v.mean()), "max": float(v.max())}


def _columns(dicts: pd.Series) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {}
    for d in dicts:
        for k, v in d.items():
            cols.setdefault(k, []).append(v)
    return dict(sorted(cols.items()))


def _summary(values: list[Any]) -> dict[str, Any]:
    """Range of numeric values, else counts of (at most 8) distinct values."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return _range(pd.Series(values, dtype=float))
    counts = Counter(json.dumps(v) if isinstance(v, list | dict) else str(v) for v in values)
    return dict(sorted(counts.items())[:8])


def describe(zoo: Zoo, distances: bool = True, per_tree: int = 10) -> dict[str, Any]:
    """A JSON-ready summary of a zoo (see the module docstring)."""
    t = zoo.table
    trees = []
    for tree, entry in sorted(zoo.meta.trees.items()):
        n = int((t["tree"] == tree).sum())
        trees.append(
            {
                "tree": tree,
                "arch": entry.get("arch", ""),
                "root": entry.get("root", ""),
                "init": entry.get("init", ""),
                "members": n,
            }
        )
    counts = Counter(c for cls in t["classes"] for c in cls)
    with_classes = int(sum(1 for cls in t["classes"] if cls))
    balance = {
        zoo.meta.classes[c]: counts.get(c, 0) / max(1, with_classes)
        for c in range(len(zoo.meta.classes))
    }
    hparams = {col: _summary(values) for col, values in _columns(t["hparams"]).items()}
    labels = {
        col: r
        for col, values in _columns(t["labels"]).items()
        if (r := _summary(values)) and "mean" in r
    }
    return {
        "name": zoo.meta.name,
        "path": str(zoo.root),
        "models": len(t),
        "classes": len(zoo.meta.classes),
        "archs": {str(k): int(v) for k, v in t["arch"].value_counts().sort_index().items()},
        "trees": trees,
        "splits": {str(k): int(v) for k, v in t["split"].value_counts().sort_index().items()},
        "label_balance": balance,
        "accuracy": {c: r for c in ACC_COLUMNS if (r := _range(t[c]))},
        "hparams": hparams,
        "labels": labels,
        "distances": root_distances(zoo, per_tree) if distances else {},
        "build": {
            k: zoo.meta.build.get(k)
            for k in ("config_hash", "seed", "n_models", "adapter", "split_from", "fractions")
        }
        | {"timings": _timings(zoo)},
    }


def _timings(zoo: Zoo) -> dict[str, Any]:
    """From the builder's ``build/log.jsonl`` (kept out of ``zoo.json`` so builds stay identical)."""
    t = timings(zoo.root)
    return {k: t[k] for k in ("per_model", "wall_seconds", "trainings")}


def _fmt(r: dict[str, float]) -> str:
    return f"{r['min']:.4g} .. {r['max']:.4g} (mean {r['mean']:.4g})" if r else "-"


def format_report(info: dict[str, Any]) -> str:
    """Plain-text rendering of :func:`describe`."""
    lines = [
        f"zoo {info['name']!r} at {info['path']}",
        f"  {info['models']} models, {info['classes']} classes, {len(info['trees'])} trees",
    ]
    build = info["build"]
    if build.get("adapter"):
        split = build.get("split_from")
        how = f"; splits from {split!r}" if split and split != "seed" else ""
        if split == "seed":
            how = (
                f"; splits drawn with seed {build.get('seed')}, fractions {build.get('fractions')}"
            )
        lines.append(f"  read by the {build['adapter']} adapter{how}")
    lines.append("  archs: " + ", ".join(f"{k} {v}" for k, v in info["archs"].items()))
    lines.append("  splits: " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()))
    lines.append("trees:")
    big = [tr for tr in info["trees"] if tr["members"] != 1]
    single: dict[str, int] = Counter(
        f"{tr['arch']}, {tr['init'] or '-'}" for tr in info["trees"] if tr["members"] == 1
    )
    for tr in big[:12]:
        lines.append(
            f"  {tr['tree']:<32} {tr['arch']:<14} {tr['init'] or '-':<10} {tr['members']:>4} members"
            f"  root {tr['root']}"
        )
    if len(big) > 12:
        lines.append(f"  ... and {len(big) - 12} more trees")
    for what, n in single.items():
        lines.append(f"  {n} single-member trees (a forest): {what}")
    bal = info["label_balance"]
    if bal and any(bal.values()):
        lo, hi = min(bal, key=bal.get), max(bal, key=bal.get)
        lines.append(
            f"label balance: fraction of members trained on each class {bal[lo]:.2f} ({lo}) .. {bal[hi]:.2f} ({hi})"
        )
    lines.append("accuracy:")
    lines += [f"  {k:<11} {_fmt(r)}" for k, r in info["accuracy"].items()]
    for title, key in (("hyperparameters:", "hparams"), ("other labels:", "labels")):
        if info.get(key):
            lines.append(title)
        for k, r in info.get(key, {}).items():
            text = _fmt(r) if "mean" in r else ", ".join(f"{v}: {n}" for v, n in r.items())
            lines.append(f"  {k:<14} {text}")
    if info["distances"]:
        lines.append(
            "weight distance of members to their own root vs other roots (same recipe and arch):"
        )
        for arch, d in info["distances"].items():
            lines.append(
                f"  {arch:<24} own {d['own']:.4g}  other {d['other']:.4g}  ratio {d['own'] / d['other']:.3f}  "
                f"closer to own: {d['closer_to_own']:.0%} of {d['members']} members ({d['roots']} roots)"
            )
    per_model = info["build"]["timings"].get("per_model") or {}
    if per_model:
        lines.append("build timings (mean seconds per model, wall and CPU):")
        for k, v in per_model.items():
            lines.append(
                f"  {k:<36} {v['mean_s']:6.2f} s  cpu {v.get('mean_cpu_s', float('nan')):6.2f} s  x {v['n']}"
            )
        wall = info["build"]["timings"].get("wall_seconds")
        if wall:
            lines.append(f"  wall time over all runs: {wall:.0f} s")
    return "\n".join(lines)
