"""``python -m nwa.bench [--quick] [--out DIR]``: every metanetwork on the default zoos over
several seeds, and a report (Markdown + PNG) of the seed papers' tables and figures.

Sections: Neural Weight Archeology (training classes and properties of the ResNet trees, by every
method; 2-D maps of the learned representations; training curves), WeightNet against the
flat-weights MLP (per-property errors, scatter, histograms, bars, radar, loss curves) and ProbeX
(per tree against Dense and StatNN with parameter counts; within a tree against the forest; tree
experts against one joint model; zero-shot, kNN and one-class naming of LoRA concepts).

``--quick`` runs everything on the ``small`` zoo (built on first use, about two minutes) with
fewer epochs: 5 to 10 minutes on 2 CPU cores. Without it the suite runs on ``default_vision``
and ``default_lora``. Runs that finished are skipped when the command is rerun (``--force``
redoes them), so an interrupted suite resumes; a run finished with another command than the one
planned now (a layer or recipe changed) is redone. ``--report`` only rewrites the report.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from nwa.errors import NwaError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nwa.bench", description=__doc__.split("\n\n")[0].strip("`")
    )
    p.add_argument("--quick", action="store_true", help="small zoo, fewer epochs (~10 min)")
    p.add_argument("--out", type=Path, help="output folder (default runs/bench-<suite>)")
    p.add_argument("--seeds", type=int, help="number of seeds (default 3)")
    p.add_argument("--vision-zoo", help="zoo with vision-* trees and forest-* (name or folder)")
    p.add_argument("--lora-zoo", help="zoo with unet_lora members (name or folder)")
    p.add_argument(
        "--methods", nargs="+", help="methods of the NWA and WeightNet sections (default all)"
    )
    p.add_argument(
        "--tree-methods",
        nargs="+",
        help="methods compared per tree (default ProbeX Dense StatNN-GBT)",
    )
    p.add_argument("--epochs", type=int, help="max_epochs of every gradient-trained run")
    p.add_argument(
        "--property-zoo",
        help="zoo of small CNNs for the property section (name or folder; default "
        "default_properties, small_properties with --quick; 'none' skips the section)",
    )
    p.add_argument(
        "--property-methods",
        nargs="+",
        help="methods of the property section (default: --methods, else all)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs at a time, in worker processes sharing the CPU cores (default 2; 1: in this process)",
    )
    p.add_argument("--force", action="store_true", help="redo runs that already finished")
    p.add_argument("--report", action="store_true", help="only rewrite the report")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's .ckpt files")
    return p


def _zoo_layout(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The zoo's pretrained trees and, per architecture family, one member's tensor names."""
    from nwa.suite.plan import FAMILIES
    from nwa.weights.adapters import open_zoo

    zoo = open_zoo(path)
    table = zoo.table
    trees = sorted(t for t in table["tree"].astype(str).unique() if t.startswith("vision-"))
    layers = {}
    for fam in FAMILIES:
        rows = table[table["arch"].astype(str).str.startswith(fam)]
        if len(rows):
            layers[fam] = zoo.open_model(rows.iloc[0]).names()
    trees = [t for t in trees if any(f in t for f in layers)]
    # a tree is evaluated on its own only when it has training, validation and test members
    splits = table.groupby(table["tree"].astype(str))["split"].agg(set)
    usable = [t for t in trees if {"train", "val", "test"} <= splits[t]]
    if len(usable) < len(trees):
        skipped = sorted(set(trees) - set(usable))
        print(f"nwa: trees without train, val and test members, not run on their own: {skipped}")
    return usable, layers


def _headline(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"FAILED {res['error'][:100]}"
    m = res.get("metrics") or {}
    a = res.get("alignment") or {}
    shown = {
        "acc": m.get("test/acc"),
        "r2": m.get("test/r2"),
        "zero-shot": a.get("zero_shot_top1"),
    }
    text = " ".join(f"{k} {v:.3f}" for k, v in shown.items() if isinstance(v, float))
    return f"{text} ({res.get('wall_s', 0):.1f} s)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from nwa.progress import count_bar
    from nwa.suite import properties
    from nwa.suite.execute import load_result, needs_run, run_all
    from nwa.suite.plan import FAMILIES, METHODS, SUITES, RunSpec, layer_for, plan
    from nwa.suite.report import write_report
    from nwa.zoo.cache import zoo_path

    suite = SUITES["quick" if args.quick else "full"]
    if args.seeds:
        suite = replace(suite, seeds=tuple(range(args.seeds)))
    if args.methods:
        suite = replace(suite, nwa_methods=tuple(args.methods))
    if args.tree_methods:
        suite = replace(suite, tree_methods=tuple(args.tree_methods))
    if args.epochs:
        suite = replace(suite, epochs={"default": args.epochs, "aligner": args.epochs})
    chosen = (*suite.nwa_methods, *suite.tree_methods, *(args.property_methods or ()))
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        print(f"nwa: unknown methods {unknown}; choose from {list(METHODS)}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / f"bench-{suite.name}"
    t0 = time.perf_counter()
    try:
        vision = zoo_path(args.vision_zoo or suite.vision_zoo)
        lora = zoo_path(args.lora_zoo or suite.lora_zoo)
        trees, layers = _zoo_layout(vision)
        runs = plan(suite, str(vision), str(lora), trees, layers)
        prop_zoo = None
        if str(args.property_zoo).lower() != "none":
            methods = args.property_methods or args.methods
            prop_runs, prop_zoo = properties.plan_runs(suite, args.property_zoo, methods)
            runs += prop_runs
    except (NwaError, ValueError) as e:
        print(f"nwa: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for spec in runs:
            print(spec.key, " ".join(spec.args))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in runs if args.force or needs_run(s, load_result(out / "runs" / s.key))]
    print(
        f"nwa bench ({suite.name}): {len(runs)} runs over seeds {list(suite.seeds)}, "
        f"{len(runs) - len(todo)} already finished; writing to {out}",
        flush=True,
    )
    if todo and not args.report:
        with count_bar() as bar:
            task = bar.add_task("runs", total=len(todo))
            active: list[str] = []

            def started(spec: RunSpec) -> None:
                active.append(spec.key)
                bar.update(task, description=", ".join(active))

            def finished(spec: RunSpec, res: dict[str, Any]) -> None:
                active.remove(spec.key)
                bar.console.print(f"{spec.key}: {_headline(res)}")
                bar.update(task, advance=1, description=", ".join(active))

            run_all(todo, out, args.jobs, args.keep_checkpoints, started, finished)
    if prop_zoo is not None and not args.report:
        properties.run_checks(out, prop_zoo, suite.seeds, args.force)
    header = {
        "suite": suite.name,
        "command": "python -m nwa.bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "zoos": f"vision {vision.name}, LoRA {lora.name}"
        + (f", properties {prop_zoo.name}" if prop_zoo else ""),
        "seeds": ", ".join(map(str, suite.seeds)),
        "layers of ProbeX, Dense and PCA": "; ".join(
            f"{fam} `{layer_for(FAMILIES[fam], names)}`" for fam, names in layers.items()
        ),
    }
    if not args.report:  # a report-only call times nothing worth stating
        header["this call's wall time"] = f"{(time.perf_counter() - t0) / 60:.1f} min"
    path, df = write_report(out, runs, header)
    others = df["status"][df["status"] != "done"].value_counts()
    rest = ", ".join(f"{n} {status}" for status, n in others.items()) or "none failed or missing"
    print(f"report: {path} ({len(df) - int(others.sum())} runs finished; {rest})")
    return 1 if len(others) else 0


if __name__ == "__main__":
    raise SystemExit(main())
