"""Calibrated property intervals of ``python -m nwa.predict`` on a default zoo, and its speed.

Run: ``python benchmarks/predict_coverage.py [--zoo default_vision] [--seeds 3] [--resplit 0.6 0.2 0.2]
[--out FILE]``.

For each seed: train ProbeX for the properties (``configs/probex_vision.yaml`` +
``configs/shared/regression.yaml``: test accuracy, generalization gap, robustness of the ResNet
fine-tunes) and for the training classes (``configs/probex_vision.yaml``), exactly as
``python -m nwa.fit`` does; then, with ``nwa.predict`` on the zoo's test split, check that the
run's test metrics are reproduced, and measure the coverage of the conformal intervals (90 % and
80 %, calibrated on the validation split stored in the checkpoint). Throughput: both checkpoints
on every ResNet of the zoo (pretrained trees and forest), models per second of reading and
scoring (checkpoint loading excluded), median of ``--repeats``.

Split-conformal coverage is a guarantee on average over draws of the calibration and test
models. A zoo's own split is one draw: with 30 validation and 30 test models, one split's
coverage of a 90 % interval spreads with a standard deviation of about 0.07 around 0.90 (0.05
with 60, as ``default_vision``'s ResNet trees have since they hold 200 members each), so a
zoo whose validation models happen to vary less than its test models under-covers on every seed
alike. ``--resplit TRAIN VAL TEST`` gives each seed its own seeded random split of the same
models (the data module's ``split: {fractions, seed}``), so the average over seeds is an average
over draws, as the guarantee is stated.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nwa.fit import run as fit  # noqa: E402
from nwa.predict import run as predict  # noqa: E402
from nwa.zoo.cache import ensure_zoo, zoo_path  # noqa: E402

VISION_PROPS = ("test_acc", "gen_gap", "robustness")


def method_args(zoo: Path, seeds: int, method: str) -> dict[int, list[str]]:
    """Each seed's arguments of ``method``'s run in the bench's property section (test accuracy
    of the zoo's small CNNs); the zoo is opened once for all seeds."""
    from dataclasses import replace

    from nwa.suite.plan import SUITES
    from nwa.suite.properties import plan_runs

    suite = replace(SUITES["full"], seeds=tuple(range(seeds)))
    runs, _ = plan_runs(suite, str(zoo), [method])
    return {r.seed: list(r.args) for r in runs}


def vision_args(zoo: Path, seed: int, regression: bool) -> list[str]:
    """ProbeX on the vision trees: the properties, or the training classes."""
    extra = ["--config", str(ROOT / "configs/shared/regression.yaml")] if regression else []
    return [
        *("--config", str(ROOT / "configs/probex_vision.yaml"), *extra),
        *("--data.init_args.zoo", str(zoo), "--seed_everything", str(seed)),
    ]


def train(
    work: Path,
    zoo: Path,
    seed: int,
    regression: bool,
    epochs: int | None,
    resplit: list | None,
    args: list[str] | None = None,
) -> tuple:
    extra = list(args) if args else vision_args(zoo, seed, regression)
    if resplit:
        extra += ["--data.init_args.split", f"{{fractions: {resplit}, seed: {seed}}}"]
    root = work / f"{'props' if regression else 'classes'}-{seed}"
    cli, results = fit(
        [
            *extra,
            *(["--trainer.max_epochs", str(epochs)] if epochs else []),
            *("--trainer.logger", "lightning.pytorch.loggers.CSVLogger"),
            *("--trainer.logger.save_dir", str(root), "--trainer.default_root_dir", str(root)),
            *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
        ]
    )
    return cli.trainer.checkpoint_callback.best_model_path, results[0]


def reproduced(found: dict, tested: dict) -> bool:
    keys = [k for k in tested if k != "test/loss"]
    same = [found[k] == tested[k] or (math.isnan(found[k]) and math.isnan(tested[k])) for k in keys]
    return bool(keys) and all(same)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--zoo", default="default_vision", help="zoo name (built on first use) or folder"
    )
    p.add_argument("--seeds", type=int, default=3, help="training seeds")
    p.add_argument("--epochs", type=int, help="max_epochs (default: the recipe's)")
    p.add_argument("--repeats", type=int, default=3, help="throughput measurements")
    p.add_argument(
        "--resplit",
        type=float,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
        help="give each seed its own random split of the models in these fractions",
    )
    p.add_argument(
        "--method",
        help="instead of ProbeX on the vision trees, this method's run of the bench's property "
        "section (e.g. StatNN-GBT on default_properties); implies --skip-classes",
    )
    p.add_argument(
        "--skip-classes",
        action="store_true",
        help="train and check only the property runs (no training-class run)",
    )
    p.add_argument("--workdir", default="/tmp/nwa-bench-predict", help="runs go here")
    p.add_argument("--out", help="also write the report (Markdown) here")
    args = p.parse_args()
    args.skip_classes |= bool(args.method)
    props_of = ("test_acc",) if args.method else VISION_PROPS
    zoo = zoo_path(args.zoo) if Path(args.zoo).is_dir() else ensure_zoo(args.zoo, progress=True)
    by_seed = method_args(zoo, args.seeds, args.method) if args.method else {}
    work = Path(args.workdir)
    lines, covers = [], {0.9: [], 0.8: []}
    header = "| seed | val / test models | test R^2 (mean) | classes test acc | reproduced | "
    header += " | ".join(f"cover {c:.0%} {p}" for c in covers for p in props_of) + " |"
    lines += [header, "|" + "---|" * (5 + 2 * len(props_of))]
    ckpts = []
    for seed in range(args.seeds):
        props, tested = train(work, zoo, seed, True, args.epochs, args.resplit, by_seed.get(seed))
        if args.skip_classes:
            classes, tested_c = None, None
        else:
            classes, tested_c = train(work, zoo, seed, False, args.epochs, args.resplit)
        ckpts.append((classes, props))
        cells, ok = [], True
        for coverage in covers:
            result = predict(
                [
                    "--ckpt_path",
                    props,
                    str(zoo),
                    "--split",
                    "test",
                    "--coverage",
                    str(coverage),
                    "--quiet",
                ]
            )
            found = result.metrics[0]
            ok &= reproduced(found, tested)
            cover = [found[f"test/coverage_{p}"] for p in props_of]
            covers[coverage] += cover
            cells += [f"{c:.3f}" for c in cover]
        val = predict(["--ckpt_path", props, str(zoo), "--split", "val", "--quiet"])
        acc_c = "-"
        if classes is not None:
            found_c = predict(["--ckpt_path", classes, str(zoo), "--split", "test", "--quiet"])
            ok &= reproduced(found_c.metrics[0], tested_c)
            acc_c = f"{tested_c['test/acc']:.3f}"
        lines.append(
            f"| {seed} | {len(val.rows)} / {len(result.rows)} | {tested['test/r2']:.3f} "
            f"| {acc_c} | {'yes' if ok else 'NO'} | " + " | ".join(cells) + " |"
        )
    speeds = []
    classes, props = ckpts[0]
    ckpt_args = [a for c in (classes, props) if c for a in ("--ckpt_path", c)]
    for _ in range(args.repeats):
        result = predict([*ckpt_args, str(zoo), "--trees", "*", "--quiet"])
        speeds.append(result.predictions / result.seconds)
    summary = [
        "",
        *(
            f"Coverage of the {c:.0%} intervals, all seeds and properties: {statistics.mean(v):.3f} "
            f"(min {min(v):.3f}, max {max(v):.3f})."
            for c, v in covers.items()
        ),
        f"Throughput: {result.predictions} model predictions ({len(ckpt_args) // 2} checkpoint(s) x "
        f"{len(result.rows)} models) at {statistics.median(speeds):.1f} models/s "
        f"(median of {args.repeats}; reading + forward, checkpoint loading excluded).",
    ]
    text = (
        f"nwa.predict on {zoo.name}, {datetime.date.today()}, {os.cpu_count()} CPU cores, "
        f"{args.seeds} seeds, "
        + (f"a random {args.resplit} split per seed" if args.resplit else "the zoo's own split")
        + "\n\n"
        + "\n".join(lines + summary)
        + "\n"
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
