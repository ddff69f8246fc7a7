"""``python -m nwa.diagnose MODEL [MODEL ...]``: data-free spectral diagnostics of model weights,
WeightWatcher-style.

For every layer weight (convolutions sliced per kernel position, as WeightWatcher does): the power-
law exponent ``alpha`` of its eigenvalue spectrum's tail, ``alpha_weighted``, the log spectral and
Frobenius norms, the stable rank and the number of spikes (eigenvalues in the fitted tail); then a
summary per model. ``alpha < 2`` reads as over-trained, ``alpha > 6`` as under-trained. Tensors
that are not analyzed are listed with the reason. Models are read layer by layer, never whole.

MODEL is a weights file, a model folder, a LoRA file (its dense deltas ``B @ A``), a Hugging Face
Hub id, or a zoo directory (every member). Numbers follow WeightWatcher 0.7.7's conventions
(``nwa.weights.spectral`` gives them); ``benchmarks/diagnose_vs_weightwatcher.py`` compares both.

Examples::

    python -m nwa.diagnose model.safetensors
    python -m nwa.diagnose runs/zoo --out spectra.parquet --summary_out models.csv
    python -m nwa.diagnose model.safetensors --layers "layer4.*" --plots esd/
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nwa.errors import NwaError, exit_on_error
from nwa.inputs import ModelRef, expand
from nwa.tables import check_suffix, write_rows
from nwa.weights.spectral import MAX_EVALS, MAX_N, METRICS, MIN_EVALS, SOLVERS, Diagnosis, verdict

SUMMARY = ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank")


def _sentence(intro: str) -> str:
    """The module docstring's first paragraph after its command line, as one sentence."""
    text = " ".join(intro.split(": ", 1)[1].split())
    return text[0].upper() + text[1:]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nwa.diagnose",
        description=_sentence(__doc__.split("\n\n")[0]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="weights file, folder, Hub id, zoo")
    p.add_argument(
        "--layers",
        nargs="+",
        metavar="SEL",
        help="analyze only these tensors (exact name, glob, re:REGEX), whatever their names",
    )
    p.add_argument("--out", help="per-layer table, .csv or .parquet (skipped tensors included)")
    p.add_argument("--summary_out", help="per-model summary, .csv or .parquet")
    p.add_argument("--plots", metavar="DIR", help="write each layer's spectrum plot (PNG) here")
    p.add_argument("--threads", type=int, default=2, help="worker threads (default 2)")
    p.add_argument("--solver", choices=SOLVERS, default="gram", help="eigenvalue solver")
    p.add_argument("--min_evals", type=int, default=MIN_EVALS, help="skip smaller layers")
    p.add_argument("--max_evals", type=int, default=MAX_EVALS, help="skip larger layers (0: none)")
    p.add_argument("--max_n", type=int, default=MAX_N, help="skip layers with a longer side")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def selector(patterns: Sequence[str] | None) -> Any:
    """A predicate on tensor names from layer selectors (see :func:`nwa.weights.spec.select_layers`)."""
    if not patterns:
        return None
    from nwa.weights.spec import select_layers

    def matches(name: str, pattern: str) -> bool:
        try:
            return bool(select_layers([name], pattern))
        except NwaError:  # this pattern matches nothing here
            return False

    def select(name: str) -> bool:
        return any(matches(name, p) for p in patterns)

    return select


def diagnose_model(ref: ModelRef, args: argparse.Namespace) -> Diagnosis:
    """Analyze one model with the command's options."""
    from nwa.weights.arrays import open_arrays
    from nwa.weights.spectral import analyze

    # plain safetensors files are read with numpy (torch is never imported), anything else with
    # nwa's full reader
    source = open_arrays(ref.location) if ref.zoo is None else None
    source = source or ref.open()
    with source:
        diag = analyze(
            source,
            select=selector(args.layers),
            lora=type(source).__name__ == "LoraDelta",
            solver=args.solver,
            threads=max(1, args.threads),
            keep_evals=bool(args.plots),
            min_evals=args.min_evals,
            max_evals=args.max_evals,
            max_n=args.max_n,
        )
    if args.layers and not diag.layers and not diag.skipped:
        raise NwaError(f"{ref.location}: no tensor matches --layers {' '.join(args.layers)}")
    return diag


def layer_rows(ref: ModelRef, diag: Diagnosis) -> list[dict[str, Any]]:
    """One row per analyzed layer, then one per skipped tensor (with ``skipped`` set)."""
    rows = []
    for r in diag.layers:
        p = r.plan
        row = {"model": ref.name, "layer": p.name, "shape": "x".join(map(str, p.shape))}
        row |= {"kind": p.kind, "N": p.n, "M": p.m, "rf": p.rf}
        row |= {k: r.metrics[k] for k in METRICS}
        row |= {"verdict": verdict(r.metrics["alpha"]), "skipped": ""}
        rows.append(row)
    for name, shape, why in diag.skipped:
        row = {"model": ref.name, "layer": name, "shape": "x".join(map(str, shape)), "kind": ""}
        row |= {"N": 0, "M": 0, "rf": 0} | dict.fromkeys(METRICS, math.nan)
        row |= {"verdict": "", "skipped": why}
        rows.append(row)
    return rows


def print_model(console: Any, ref: ModelRef, diag: Diagnosis, per_layer: bool) -> None:
    from rich.table import Table

    if per_layer and diag.layers:
        table = Table(title=f"{ref.name}: {len(diag.layers)} layers", title_justify="left")
        for col in ("layer", "kind", "N x M x rf", "alpha", "alpha_w", "log_spec", "log_norm"):
            table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
        for col in ("stable_rank", "spikes", ""):
            table.add_column(col, justify="right" if col else "left")
        for r in diag.layers:
            m, p = r.metrics, r.plan
            table.add_row(
                p.name,
                p.kind,
                f"{p.n}x{p.m}x{p.rf}",
                *(f"{m[k]:.3f}" for k in ("alpha", "alpha_weighted", "log_spectral_norm")),
                f"{m['log_norm']:.3f}",
                f"{m['stable_rank']:.2f}",
                str(m["num_pl_spikes"]),
                verdict(m["alpha"]),
            )
        console.print(table)
    if diag.skipped:
        by_reason: dict[str, list[str]] = {}
        for name, _, why in diag.skipped:
            by_reason.setdefault(why, []).append(name)
        for why, names in by_reason.items():
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            console.print(f"  skipped {len(names)}: {why}: {shown}", highlight=False)


def print_summary(console: Any, summaries: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="Per-model summary (means over layers)", title_justify="left")
    for col in ("model", "layers", "skipped", *SUMMARY, "alpha<2", "alpha>6"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for s in summaries:
        table.add_row(
            s["model"],
            str(s["layers"]),
            str(s["skipped"]),
            *(f"{s[k]:.3f}" for k in SUMMARY),
            str(s["over_trained"]),
            str(s["under_trained"]),
        )
    console.print(table)


def run(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Diagnose the models; returns the per-model summaries."""
    args = build_parser().parse_args(argv)
    from rich.console import Console

    for path in (args.out, args.summary_out):
        if path:
            check_suffix(path)
    console = Console(stderr=False, quiet=args.quiet)
    refs = expand(args.models)
    rows, summaries, start = [], [], time.perf_counter()
    for ref in refs:
        diag = diagnose_model(ref, args)
        rows.extend(layer_rows(ref, diag))
        summaries.append({"model": ref.name, "location": ref.location} | diag.summary())
        print_model(console, ref, diag, per_layer=len(refs) == 1)
        if args.plots:
            from nwa.eval.spectra import spectrum_plots

            spectrum_plots(diag, Path(args.plots), prefix=Path(ref.name).name)
    print_summary(console, summaries)
    elapsed = time.perf_counter() - start
    console.print(f"nwa: {len(refs)} model(s) in {elapsed:.1f} s", highlight=False)
    if args.out:
        write_rows(rows, args.out)
    if args.summary_out:
        write_rows(summaries, args.summary_out)
    return summaries


def main(argv: Sequence[str] | None = None) -> None:
    exit_on_error(run, argv)


if __name__ == "__main__":
    main()
