"""The bench's property section alone: every method's test-accuracy R^2 and Kendall's tau on the
property zoo, the independent LightGBM check and the noise ceiling, without the vision and
LoRA zoos the full bench also needs.

Run: ``python benchmarks/property_section.py [--zoo default_properties] [--methods StatNN-GBT
WeightNet] [--seeds 3] [--epochs N] [--out DIR]``. Runs are kept and skipped when rerun, as in
``python -m nwa.bench``; the report (``DIR/report.md``) lists every planned run with its status
and wall time, so a partial report says what ran.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from nwa.atomic import atomic_write_text
    from nwa.suite import properties
    from nwa.suite.execute import load_result, needs_run, run_all
    from nwa.suite.plan import SUITES
    from nwa.suite.report import load_results, runs_section

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="default_properties", help="property zoo (name or folder)")
    p.add_argument("--methods", nargs="+", help="methods (default all)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, help="max_epochs of the gradient-trained methods")
    p.add_argument("--quick", action="store_true", help="the quick preset's epochs")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--out", type=Path, default=Path("runs/property-section"))
    p.add_argument(
        "--report", action="store_true", help="only write the report (unrun runs: missing)"
    )
    args = p.parse_args(argv)
    suite = replace(SUITES["quick" if args.quick else "full"], seeds=tuple(range(args.seeds)))
    if args.epochs:
        properties.EPOCHS[suite.name] = {"default": args.epochs}
    t0 = time.perf_counter()
    runs, zoo = properties.plan_runs(suite, args.zoo, args.methods)
    todo = [s for s in runs if needs_run(s, load_result(args.out / "runs" / s.key))]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} finished; zoo {zoo}", flush=True)
    if not args.report:
        run_all(todo, args.out, args.jobs, finished=lambda s, r: print(s.key, r.get("wall_s")))
        properties.run_checks(args.out, zoo, suite.seeds)
    df = load_results(args.out, runs)
    lines = [
        "# Property section",
        "",
        f"- **command**: python benchmarks/property_section.py {' '.join(argv or sys.argv[1:])}",
        f"- **this call's wall time**: {(time.perf_counter() - t0) / 60:.1f} min",
        "",
        *properties.section(args.out, df),
        *runs_section(df),
    ]
    atomic_write_text(args.out / "report.md", "\n".join(lines))
    df.to_csv(args.out / "results.csv", index=False)
    print("\n".join(properties.section(args.out, df)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
