"""``python -m nwa.bench [--quick] [--out DIR]``: every metanetwork on the default zoos over
several seeds, and a report (Markdown + PNG) of the seed papers' tables and figures.

Sections: Neural Weight Archeology (training classes, and with ``--quick`` properties, of the
ResNet trees; 2-D maps of the learned representations; training curves), WeightNet against the
flat-weights MLP (per-property errors, scatter, histograms, bars, radar, loss curves), ProbeX
(per tree against Dense and StatNN with parameter counts; within a tree against the forest; tree
experts against one joint model; zero-shot, kNN and one-class naming of LoRA concepts), the
property zoo (test-accuracy R² and Kendall's tau of every method against the zoo's noise
ceiling) and, on request, archeology across architectures.

``--quick`` runs everything on the ``small`` zoo (built on first use, about two minutes) with
fewer epochs: 5 to 10 minutes on 2 CPU cores. Without it the suite runs on ``default_vision``,
``default_lora`` and ``default_properties`` and is sized to 2 hours on 2 CPU cores (zoos built
beforehand): on the 256-wide ResNet trees it runs the training-class task with ProbeX, StatNN
and PCA (``--methods`` adds Dense, FlatMLP, WeightNet, NWPA, each far slower there), every
method on the property zoo, and the archeology section only with ``--tasks archeology``. Runs
that finished are skipped when the command is rerun (``--force`` redoes them), so an interrupted suite resumes; a run finished with another command than the one
planned now (a layer or recipe changed) is redone. ``--report`` only rewrites the report.

Every run logs to CSV and to W&B (offline unless logged in; ``wandb sync <out>/runs/*/wandb/*``
uploads): group ``bench-<suite>`` (``--group``), job type the task (``classes``, ``properties``,
``per-tree``, ``experts``, ``align``), tags ``method:``, ``tree:``, ``zoo:``, ``zoo-hash:``,
``seed:``, and summaries ``val/<metric>.max`` (or ``.min`` for losses and errors) and
``test/<metric>.last``. One more run of the
group, job type ``report``, holds ``results.csv`` as a table and the report's figures.

``--executor slurm`` submits the runs to Slurm instead (one job array per run kind, one task per
run, through submitit; ``--slurm.partition``, ``--slurm.cpus``, ``--slurm.gpus``, ``--slurm.mem``,
``--slurm.time``), waits for them and writes the same report; skipping and resuming are the same.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
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
        "--mixed-zoo",
        help="zoo of mixed architectures with the archeology labels (default default_mixed, "
        "small_mixed with --quick; 'none' skips the section)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        help="methods of the NWA section on the ResNet trees (default all with --quick; "
        "ProbeX StatNN-GBT StatNN-MLP PCA in the full suite)",
    )
    p.add_argument(
        "--tree-methods",
        nargs="+",
        help="methods compared per tree (default ProbeX Dense StatNN-GBT)",
    )
    p.add_argument(
        "--aligners",
        nargs="+",
        help="weight-to-text aligners of the concept task (default ProbeX, Dense, and each on "
        "self-attention layers: 'ProbeX self-attn', 'Dense self-attn')",
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=("classes", "properties", "concept", "archeology"),
        help="only the runs of these tasks (default all but archeology in the full suite, all "
        "with --quick; concept: the LoRA aligners; archeology: the mixed-architecture section, "
        "about 80 min for 3 seeds; the property section runs with properties)",
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
    p.add_argument("--group", help="W&B group of every run (default bench-<suite>)")
    p.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local worker processes (default), or Slurm job arrays through submitit",
    )
    slurm = p.add_argument_group("Slurm (with --executor slurm; one array task per run)")
    slurm.add_argument("--slurm.partition", dest="slurm_partition", help="partition")
    slurm.add_argument("--slurm.cpus", dest="slurm_cpus", type=int, default=2, help="cores per run")
    slurm.add_argument("--slurm.gpus", dest="slurm_gpus", type=int, default=0, help="GPUs per run")
    slurm.add_argument("--slurm.mem", dest="slurm_mem", type=int, default=8, help="GB per run")
    slurm.add_argument(
        "--slurm.time", dest="slurm_time", type=int, help="minutes per run (default per kind)"
    )
    slurm.add_argument(
        "--slurm.parallel", dest="slurm_parallel", type=int, help="array tasks at once"
    )
    p.add_argument("--force", action="store_true", help="redo runs that already finished")
    p.add_argument("--report", action="store_true", help="only rewrite the report")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's .ckpt files")
    return p


def _skipped(zoo: str | None) -> bool:
    """``--property-zoo none`` and ``--mixed-zoo none`` skip a section; not given: its default."""
    return zoo is not None and zoo.lower() == "none"


def _zoo_layout(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The zoo's pretrained trees and, per architecture family, one member's tensor names."""
    from nwa.suite.plan import FAMILIES
    from nwa.zoo.adapters import open_zoo

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


def _dashboard(group: str, *zoos: Path) -> Any:
    """The W&B group, and each zoo's name and content hash for the runs' tags."""
    from nwa.dashboard import zoo_fingerprint
    from nwa.runs import default_group
    from nwa.suite.execute import Dashboard

    names = {str(z): (default_group({"zoo": str(z)}) or z.name, zoo_fingerprint(z)) for z in zoos}
    return Dashboard(group, names)


@contextlib.contextmanager
def _quiet_wandb() -> Iterator[None]:
    """Silence W&B's own lines (run folder, sync hint): the bench prints its own summary."""
    with (
        open(os.devnull, "w") as sink,
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        yield


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
    args.argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _bench(args)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM while a zoo builds
        signum = getattr(e, "signum", signal.SIGINT)
        print(
            f"nwa: interrupted ({signal.Signals(signum).name}); finished runs and zoo members "
            "are kept: run the same command again to resume",
            file=sys.stderr,
        )
        return 128 + signum


def _bench(args: argparse.Namespace) -> int:

    def wanted(task: str) -> bool:
        if args.tasks:
            return task in args.tasks
        return task != "archeology" or suite.archeology

    from nwa.dashboard import log_suite
    from nwa.progress import count_bar
    from nwa.suite import archeology, properties
    from nwa.suite.execute import load_result, needs_run, run_all
    from nwa.suite.plan import ALIGNERS, FAMILIES, METHODS, SUITES, RunSpec, layer_for, plan
    from nwa.suite.report import write_report
    from nwa.zoo.cache import zoo_path

    suite = SUITES["quick" if args.quick else "full"]
    if args.seeds:
        suite = replace(suite, seeds=tuple(range(args.seeds)))
    if args.methods:
        suite = replace(suite, nwa_methods=tuple(args.methods))
    if args.tree_methods:
        suite = replace(suite, tree_methods=tuple(args.tree_methods))
    if args.aligners:
        suite = replace(suite, aligners=tuple(args.aligners))
    if args.epochs:
        suite = replace(suite, epochs={"default": args.epochs, "aligner": args.epochs})
    chosen = (*suite.nwa_methods, *suite.tree_methods, *(args.property_methods or ()))
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        print(f"nwa: unknown methods {unknown}; choose from {list(METHODS)}", file=sys.stderr)
        return 2
    unknown = sorted(set(suite.aligners) - set(ALIGNERS))
    if unknown:
        print(f"nwa: unknown aligners {unknown}; choose from {list(ALIGNERS)}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / f"bench-{suite.name}"
    t0 = time.perf_counter()
    try:
        vision = lora = None
        runs, trees, layers = [], [], {}
        # the archeology section alone never builds the vision and LoRA zoos
        # and each of the others only for the tasks that read it
        if wanted("classes") or wanted("properties"):
            vision = zoo_path(args.vision_zoo or suite.vision_zoo)
            trees, layers = _zoo_layout(vision)
        if wanted("concept"):
            lora = zoo_path(args.lora_zoo or suite.lora_zoo)
        if vision or lora:
            runs = plan(suite, str(vision or ""), str(lora or ""), trees, layers)
        prop_zoo = None
        if not _skipped(args.property_zoo) and wanted("properties"):
            methods = args.property_methods or args.methods
            prop_runs, prop_zoo = properties.plan_runs(suite, args.property_zoo, methods)
            runs += prop_runs
        # seed by seed, so that a suite stopped early reports whole seeds of every section
        runs = sorted((r for r in runs if wanted(r.task)), key=lambda r: r.seed)
        mixed, mixed_runs = None, []
        if not _skipped(args.mixed_zoo) and wanted("archeology"):
            mixed = zoo_path(args.mixed_zoo or archeology.ZOOS[suite.name])
            epochs = args.epochs or archeology.EPOCHS[suite.name]
            mixed_runs = archeology.plan_runs(str(mixed), suite.seeds, epochs)
    except (NwaError, ValueError) as e:
        print(f"nwa: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for spec in runs + mixed_runs:
            print(spec.key, " ".join(spec.args))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    board = _dashboard(args.group or f"bench-{suite.name}", *(z for z in (vision, lora) if z))
    todo = [s for s in runs if args.force or needs_run(s, load_result(out / "runs" / s.key))]
    print(
        f"nwa bench ({suite.name}): {len(runs)} runs over seeds {list(suite.seeds)}, "
        f"{len(runs) - len(todo)} already finished"
        + (f"; then the {len(mixed_runs)} runs of the archeology section" if mixed_runs else "")
        + f"; writing to {out}",
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

            if args.executor == "slurm":
                from nwa.suite.slurm import SlurmOptions, run_on_slurm

                opts = SlurmOptions(
                    args.slurm_partition,
                    args.slurm_cpus,
                    args.slurm_gpus,
                    args.slurm_mem,
                    args.slurm_time,
                    args.slurm_parallel,
                )
                run_on_slurm(todo, out, opts, args.keep_checkpoints, started, finished, board)
            else:
                run_all(todo, out, args.jobs, args.keep_checkpoints, started, finished, board)
    if mixed_runs and not args.report:
        archeology.run_section(out, mixed_runs, args.jobs, args.force)
    if prop_zoo is not None and not args.report:
        properties.run_checks(out, prop_zoo, suite.seeds, args.force)
    header = {
        "suite": suite.name,
        "command": "python -m nwa.bench " + " ".join(args.argv),
        "zoos": ", ".join(
            f"{kind} {zoo.name}"
            for kind, zoo in (
                ("vision", vision),
                ("LoRA", lora),
                ("properties", prop_zoo),
                ("mixed", mixed),
            )
            if zoo is not None
        ),
        "seeds": ", ".join(map(str, suite.seeds)),
    }
    if layers:
        header["layers of ProbeX, Dense and PCA"] = "; ".join(
            f"{fam} `{layer_for(FAMILIES[fam], names)}`" for fam, names in layers.items()
        )
    if not args.report:  # a report-only call times nothing worth stating
        header["this call's wall time"] = f"{(time.perf_counter() - t0) / 60:.1f} min"
    path, df = write_report(out, runs, header)
    mixed_missing = 0
    if mixed is not None:
        mixed_missing = archeology.append_section(path, out, mixed_runs, mixed.name)
    figures = sorted((out / "figures").glob("*.png"))
    with _quiet_wandb():
        log_suite(out, df, figures, board.group, header)
    others = df["status"][df["status"] != "done"].value_counts()
    rest = ", ".join(f"{n} {status}" for status, n in others.items()) or "none failed or missing"
    print(f"report: {path} ({len(df) - int(others.sum())} runs finished; {rest})")
    return 1 if len(others) or mixed_missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
