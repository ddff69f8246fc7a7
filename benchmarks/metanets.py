"""Metanetwork benchmark on the default vision zoo: every method, every tree, through nwa.fit.

Run: ``python benchmarks/metanets.py [--out runs/bench_metanets] [--zoo default_vision] [--quick]``.
Writes ``results.csv`` and ``results.md`` (one row per run) and prints the tables:

* training-class prediction per tree by every method (element-wise accuracy, exact-set accuracy,
  macro F1), with parameter counts and wall time;
* the tree effect: ProbeX within each tree, across the random-init forest, one joint model over
  a family's trees against the mixture of tree experts (with router purity);
* regression of test accuracy, generalization gap and robustness by every method;
* ProbeX training time per epoch per 1,000 models.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nwa.fit import run as fit  # noqa: E402
from nwa.metanets import count_parameters  # noqa: E402

CONFIGS = ROOT / "configs"
FAMILIES = {
    "resnet": {"arch": "resnet_*", "layer": "layer4.0.conv2.weight"},
    "vit": {"arch": "vit_*", "layer": "blocks.1.attn.qkv.weight"},
}
CLASSIFIERS = {
    "ProbeX": ("probex_vision.yaml", []),
    "Dense": ("dense_vision.yaml", []),
    "StatNN-GBT": ("statnn_vision.yaml", ["--data.init_args.layers", '["*.weight", "*.bias"]']),
    "StatNN-MLP": ("statnn_mlp_vision.yaml", ["--data.init_args.layers", '["*.weight", "*.bias"]']),
    "PCA": ("pca_vision.yaml", []),
    "FlatMLP": ("mlp_vision.yaml", ["--data.init_args.target", "classes"]),
}
REGRESSORS = {
    **{k: v for k, v in CLASSIFIERS.items() if k != "FlatMLP"},
    "FlatMLP": ("mlp_vision.yaml", []),
    "WeightNet": ("weightnet_vision.yaml", []),
    "NWPA": ("nwpa_vision.yaml", ["--trainer.max_epochs", "40"]),
}
CHAIN = {"WeightNet", "NWPA", "FlatMLP"}  # these recipes choose their own layers


def one_run(
    name: str, config: str, extra: list[str], out: Path, zoo: str, epochs: int | None
) -> dict[str, Any]:
    save = out / "logs" / name
    args = [
        *("--config", str(CONFIGS / config), "--data.init_args.zoo", zoo),
        *(
            "--trainer.logger",
            "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir",
            str(save),
        ),
        *("--trainer.default_root_dir", str(save), "--trainer.enable_progress_bar", "false"),
        # the boosted trees fit once, in their single epoch
        *(
            ["--trainer.max_epochs", str(epochs)]
            if epochs and config != "statnn_vision.yaml"
            else []
        ),
        *extra,
    ]
    start = time.perf_counter()
    cli, results = fit(args)
    wall = time.perf_counter() - start
    model, dm = cli.model, cli.datamodule
    encoder = getattr(model, "encoder", None)
    return {
        "run": name,
        "params": count_parameters(model),
        "encoder_params": count_parameters(encoder) if encoder is not None else None,
        "n_train": len(dm.dataset("train")),
        "epochs": cli.trainer.current_epoch,
        "wall_s": round(wall, 1),
        **{k: float(v) for k, v in (results[0] if results else {}).items()},
    }


def family_args(family: str, method: str) -> list[str]:
    spec = FAMILIES[family]
    args = ["--data.init_args.arch", spec["arch"]]
    if method not in CHAIN and not method.startswith("StatNN"):
        args += ["--data.init_args.layers", spec["layer"]]
    return args


def plan(trees: list[str], quick: bool) -> list[tuple[str, str, str, list[str], dict[str, str]]]:
    """(run name, method, config, extra args, row labels) for every run of the benchmark."""
    runs = []
    for tree in trees[:2] if quick else trees:
        family = "vit" if "vit" in tree else "resnet"
        for method, (config, extra) in CLASSIFIERS.items():
            args = [*extra, *family_args(family, method), "--data.init_args.trees", f"[{tree}]"]
            runs.append(
                (f"cls-{method}-{tree}", method, config, args, {"part": "classes", "subset": tree})
            )
    for family in FAMILIES:
        trees_arg = ["--data.init_args.trees", "[vision-*]"]
        base = [*family_args(family, "ProbeX"), *trees_arg]
        runs.append(
            (
                f"joint-{family}",
                "ProbeX joint",
                "probex_vision.yaml",
                base,
                {"part": "tree effect", "subset": f"vision {family} trees"},
            )
        )
        runs.append(
            (
                f"experts-{family}",
                "ProbeX experts",
                "experts_vision.yaml",
                base,
                {"part": "tree effect", "subset": f"vision {family} trees"},
            )
        )
    runs.append(
        (
            "forest",
            "ProbeX forest",
            "probex_forest.yaml",
            [],
            {"part": "tree effect", "subset": "forest"},
        )
    )
    regression = ["--config", str(CONFIGS / "shared" / "regression.yaml")]
    for method, (config, extra) in REGRESSORS.items():
        if quick and method in ("NWPA", "Dense"):
            continue
        args = [*extra, *family_args("resnet", method), "--data.init_args.trees", "[vision-*]"]
        if config not in ("mlp_vision.yaml", "weightnet_vision.yaml", "nwpa_vision.yaml"):
            args = [*regression, *args]
        runs.append(
            (
                f"reg-{method}",
                method,
                config,
                args,
                {"part": "properties", "subset": "vision resnet trees"},
            )
        )
    return runs


def tables(df: pd.DataFrame) -> str:
    out = []
    cls = df[df["part"] == "classes"]
    if not cls.empty:
        acc = cls.pivot_table(index="subset", columns="method", values="test/acc")
        out += [
            "## Training-class prediction (element-wise test accuracy; chance 0.5)",
            acc.round(3).to_markdown(),
            "",
        ]
        ex = cls.pivot_table(index="subset", columns="method", values="test/exact")
        out += ["### Exact-set test accuracy", ex.round(3).to_markdown(), ""]
        f1 = cls.pivot_table(index="subset", columns="method", values="test/f1")
        out += ["### Macro F1", f1.round(3).to_markdown(), ""]
        cost = cls.groupby("method")[["params", "encoder_params", "wall_s"]].mean()
        out += [
            "### Parameters and wall time (train + test, mean over trees)",
            cost.round(1).to_markdown(),
            "",
        ]
    tree = df[df["part"] == "tree effect"]
    if not tree.empty:
        cols = [
            c
            for c in (
                "test/acc",
                "test/exact",
                "test/f1",
                "test/router_purity",
                "router/purity",
                "router/n_trees",
            )
            if c in tree
        ]
        out += [
            "## Tree effect",
            tree.set_index(["subset", "method"])[cols].round(3).to_markdown(),
            "",
        ]
    reg = df[df["part"] == "properties"]
    if not reg.empty:
        cols = [
            c
            for c in reg.columns
            if c.startswith("test/") and any(m in c for m in ("r2", "kendall", "mae", "rmse"))
        ]
        out += [
            "## Property regression (vision ResNet trees, test split)",
            reg.set_index("method")[sorted(cols) + ["params", "wall_s"]].round(3).to_markdown(),
            "",
        ]
    probex = df[(df["method"] == "ProbeX") & (df["part"] == "classes")]
    if not probex.empty:
        per_1000 = (
            probex["wall_s"] / probex["epochs"].clip(lower=1) / probex["n_train"] * 1000
        ).mean()
        out += [
            f"ProbeX wall time per epoch per 1,000 training models (train + test wall, so an upper bound): {per_1000:.1f} s",
            "",
        ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_metanets")
    parser.add_argument("--zoo", default="default_vision")
    parser.add_argument(
        "--epochs", type=int, default=None, help="override every recipe's max_epochs"
    )
    parser.add_argument("--quick", action="store_true", help="two trees, fewer methods")
    args = parser.parse_args()
    from nwa.weights.adapters import open_zoo
    from nwa.zoo.cache import ensure_zoo

    zoo = open_zoo(
        ensure_zoo(args.zoo, progress=True) if not Path(args.zoo).exists() else Path(args.zoo)
    )
    trees = sorted(t for t in set(zoo.table["tree"]) if t.startswith("vision-"))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    runs = plan(trees, args.quick)
    for i, (name, method, config, extra, labels) in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {name}", flush=True)
        try:
            row = one_run(name, config, extra, args.out, args.zoo, args.epochs)
        except (
            Exception,
            SystemExit,
        ) as e:  # a failing method is reported in the table, not hidden
            row = {"run": name, "error": f"{type(e).__name__}: {e}"}
        rows.append({"method": method, **labels, **row})
        df = pd.DataFrame(rows)
        df.to_csv(args.out / "results.csv", index=False)
    report = tables(df)
    (args.out / "results.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
