"""``python -m nwa.predict --ckpt_path RUN.ckpt MODEL [MODEL ...]``: audit models with a trained
metanetwork: what a checkpoint found in the wild was trained on, how good it is, which tree it
descends from.

Per model: the predicted training classes with their probabilities (a classification run), each
property with its value and a conformal interval calibrated on the run's validation models
(``--coverage``, 90 % by default), the model tree the router sends it to with its distance
("none of the known trees" beyond a threshold calibrated on validation; tree-expert runs), and the
top concepts among the training concepts or among free-text candidates (``--concepts``;
weight-to-text runs). Several ``--ckpt_path`` (a classification run and a property run, say) add
their columns to one table.

MODEL is a weights file, a model folder, a LoRA file, a Hugging Face Hub id, or a zoo directory
(its models of the run's trees and architecture, ``--split`` to narrow, ``--trees '*'`` to widen).
Only the tensors the metanetwork reads are read, normalized as in training. On zoo members, whose
labels are known, the run's metrics are computed (on the test split they equal the run's test
metrics) and the intervals' coverage reported.

Examples::

    python -m nwa.predict --ckpt_path runs/probex_vision/version_0/checkpoints/best-epoch=41.ckpt model.safetensors
    python -m nwa.predict --ckpt_path classes.ckpt --ckpt_path props.ckpt ~/.cache/nwa/zoos/default_vision-* --split test --out preds.csv
    python -m nwa.predict --ckpt_path align.ckpt lora.safetensors --concepts "a red sneaker" "a blue coat"
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nwa.errors import NwaError, exit_on_error


def _sentence(intro: str) -> str:
    """The module docstring's first paragraph after its command line, as one sentence."""
    text = " ".join(intro.split(": ", 1)[1].split())
    return text[0].upper() + text[1:]


def build_parser() -> argparse.ArgumentParser:
    intro, rest = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(
        prog="python -m nwa.predict",
        description=_sentence(intro),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=rest,
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="file, folder, LoRA, Hub id, zoo")
    p.add_argument(
        "--ckpt_path", action="append", required=True, help="a training checkpoint (repeatable)"
    )
    p.add_argument(
        "--split",
        nargs="+",
        help="zoo members of these splits: train/val/test as the run defined them, or manifest "
        "split names (default: all)",
    )
    p.add_argument(
        "--trees", nargs="+", help="zoo members of these tree globs (default: the run's)"
    )
    p.add_argument("--arch", help="zoo members of this architecture glob (default: the run's)")
    p.add_argument("--coverage", type=float, default=0.9, help="interval coverage (default 0.9)")
    p.add_argument(
        "--tree_coverage",
        type=float,
        default=0.95,
        help="share of validation models the known trees' distance threshold keeps (default 0.95)",
    )
    p.add_argument("--concepts", nargs="+", help="free-text concepts to rank (weight-to-text runs)")
    p.add_argument("--top_k", type=int, default=3, help="concepts or classes shown (default 3)")
    p.add_argument("--batch_size", type=int, help="models per forward pass (default: the run's)")
    p.add_argument("--out", help="write the predictions to .csv, .json or .parquet")
    p.add_argument(
        "--skip_bad", action="store_true", help="predict the readable models, list the others"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (default cpu)")
    p.add_argument("--quiet", action="store_true", help="print no table, only errors")
    return p


def _fmt(pairs: Sequence[tuple[str, float]]) -> str:
    return ", ".join(f"{n} ({p:.2f})" for n, p in pairs)


def describe(pred: Any, out: dict[str, Any], i: int, args: argparse.Namespace) -> dict[str, Any]:
    """The columns one checkpoint gives one model (see the module docstring)."""
    t, row = pred.targets, {}
    p = out["pred"][i].float().cpu()
    if t.kind == "multilabel":
        ranked = sorted(zip(t.names, p.tolist()), key=lambda kv: -kv[1])
        row["classes"] = _fmt([(n, v) for n, v in ranked if v >= 0.5])
        row |= {f"p({n})": v for n, v in zip(t.names, p.tolist())}
    elif t.kind == "regression":
        for j, name in enumerate(t.names):
            half = out["half"][j]
            row |= {
                name: float(p[j]),
                f"{name}_lo": float(p[j]) - half,
                f"{name}_hi": float(p[j]) + half,
            }
    elif "embedding" in out:
        names = list(args.concepts) if args.concepts else list(t.names)
        probs = out["concept_probs"][i] if args.concepts else p
        top = probs.topk(min(args.top_k, len(names)))
        row["concepts"] = _fmt([(names[k], float(v)) for v, k in zip(top.values, top.indices)])
    else:
        top = p.topk(min(args.top_k, t.n))
        row["top"] = _fmt([(t.names[k], float(v)) for v, k in zip(top.values, top.indices)])
    if "tree" in out:
        k, d = int(out["tree"][i]), float(out["distance"][i])
        names = list(pred.module.router.tree_names) or [f"cluster {c}" for c in range(k + 1)]
        row["tree"] = names[k] if d <= out["threshold"] else "none of the known trees"
        row |= {"tree_distance": d, "nearest_tree": names[k]}
    return row


def truth(pred: Any, ref: Any) -> dict[str, Any]:
    """A zoo member's known labels beside the predictions (``true_*`` columns)."""
    from nwa.predictor import label_of

    if ref.row is None:
        return {}
    t = pred.targets
    row = {"split": pred.split_of(ref), "zoo_tree": ref.row.get("tree")}
    if t.kind == "regression":
        row |= {f"true_{n}": label_of(ref, n) for n in t.names}
    elif t.kind == "multilabel":
        row["true_classes"] = ", ".join(ref.zoo.meta.classes[c] for c in ref.row["classes"])
    return row


def score(pred: Any, refs: list[Any], args: argparse.Namespace, progress: Any) -> tuple:
    """Predict every model with one checkpoint: (rows, metrics, errors, seconds spent reading
    and scoring)."""
    from nwa.calibration import coverage_of
    from nwa.predictor import targets_of
    from nwa.tasks import compute_metrics

    t, task = pred.targets, pred.module.task
    if args.concepts and not hasattr(task, "model_embeddings"):
        raise NwaError(
            f"{pred.path}: --concepts needs a weight-to-text run; this one predicts {t.kind}"
        )
    size = args.batch_size or pred.data.get("batch_size") or 64
    metrics, labelled = task.metrics(), []
    half, threshold = pred.half_widths(args.coverage), pred.tree_threshold(args.tree_coverage)
    rows, errors, preds, ys = [], [], [], []
    job = progress.add_task(pred.path.name, total=len(refs))
    start = time.perf_counter()
    for lo in range(0, len(refs), size):
        batch = pred.read(refs[lo : lo + size], skip_bad=args.skip_bad)
        errors += batch.errors
        progress.advance(job, len(refs[lo : lo + size]))
        if not batch.refs:
            continue
        out = pred.outputs(_to(batch.x, args.device))
        out |= {"half": half, "threshold": threshold}
        if args.concepts and "embedding" in out:
            out["concept_probs"] = pred.concept_scores(out["embedding"], args.concepts)
        y = targets_of(pred, batch.refs)
        if y is not None:
            task.update(metrics, out["out"].cpu(), y)
            labelled.append(len(batch.refs))
            preds.append(out["pred"].cpu())
            ys.append(y)
        for i, ref in enumerate(batch.refs):
            rows.append({"model": ref.name} | describe(pred, out, i, args) | truth(pred, ref))
    seconds = time.perf_counter() - start
    stage = args.split[0] if args.split and len(args.split) == 1 else "pred"
    found = {}
    if labelled and sum(labelled) == len(rows):
        found = {k: float(v) for k, v in compute_metrics(metrics, stage).items()}
        if t.kind == "regression":
            import torch

            cover = coverage_of(torch.cat(ys), torch.cat(preds), half)
            found |= {f"{stage}/coverage_{n}": c for n, c in zip(t.names, cover)}
            found[f"{stage}/coverage"] = sum(cover) / len(cover)
    return rows, found, errors, seconds


def _to(x: Any, device: str) -> Any:
    if device == "cpu":
        return x
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(x, device)


def print_results(
    rows: list[dict[str, Any]], results: list[tuple], args: argparse.Namespace
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    shown = [c for c in dict.fromkeys(k for r in rows for k in r) if _shown(c)]
    table = Table(title=f"{len(rows)} model(s)", title_justify="left")
    for col in shown:
        table.add_column(col, overflow="fold")
    for r in rows[:200]:
        table.add_row(*(_cell(r, c) for c in shown))
    console.print(table)
    if len(rows) > 200:
        console.print(f"... {len(rows) - 200} more rows (use --out)")
    for pred, metrics in results:
        if metrics:
            table = Table(
                title=f"{pred.path.name}: metrics on the labelled models", title_justify="left"
            )
            table.add_column("metric")
            table.add_column("value", justify="right")
            for k, v in metrics.items():
                table.add_row(k, f"{v:.4f}")
            console.print(table)


def _shown(col: str) -> bool:
    # interval bounds and known values join their prediction in one cell; per-class
    # probabilities and the rest of the labels stay in --out
    hidden = ("split", "zoo_tree", "true_classes")
    return not (col.endswith(("_lo", "_hi")) or col.startswith(("p(", "true_")) or col in hidden)


def _cell(row: dict[str, Any], col: str) -> str:
    v = row.get(col)
    if isinstance(v, float):
        text = f"{v:.3f}"
        lo, hi = row.get(f"{col}_lo"), row.get(f"{col}_hi")
        if lo is not None and hi is not None:
            text += " (uncalibrated)" if math.isnan(lo) else f" [{lo:.3f}, {hi:.3f}]"
        if row.get(f"true_{col}") is not None:
            text += f" (true {row[f'true_{col}']:.3f})"
        return text
    return "" if v is None else str(v)


@dataclass
class Predictions:
    """What :func:`run` returns.

    Attributes:
        rows: One dict per model (the table's and ``--out``'s columns).
        metrics: Per checkpoint, the metrics on the labelled models (empty if some lack labels).
        seconds: Time spent reading models and running the metanetworks (checkpoint loading
            excluded).
        predictions: Model predictions made (models x checkpoints).
    """

    rows: list[dict[str, Any]]
    metrics: list[dict[str, float]]
    seconds: float
    predictions: int


def run(argv: Sequence[str] | None = None) -> Predictions:
    """Predict (see the module docstring for the arguments)."""
    args = build_parser().parse_args(argv)
    from nwa.inputs import expand
    from nwa.predictor import Predictor
    from nwa.progress import count_bar
    from nwa.tables import check_suffix, write_rows

    if args.out:
        check_suffix(args.out)
    if not 0 < args.coverage < 1 or not 0 < args.tree_coverage < 1:
        raise NwaError("--coverage and --tree_coverage must lie in (0, 1)")
    if args.top_k < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise NwaError("--top_k and --batch_size must be positive")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    merged: dict[str, dict[str, Any]] = {}
    results, errors, seconds, n_models = [], [], 0.0, 0
    progress = count_bar()
    progress.disable = args.quiet or not sys.stdout.isatty()  # a live bar only on a terminal
    with progress:
        for path in args.ckpt_path:
            pred = Predictor.load(path)
            pred.module.to(args.device)
            keep = pred.selects(args.trees, args.arch)
            splits = set(pred.split_names(args.split)) if args.split else None
            refs = [
                r
                for r in expand(args.models, keep)
                if splits is None or r.row is None or pred.split_of(r) in splits
            ]
            if not refs:
                raise NwaError(f"no model to predict: {args.models} (filters: split {args.split})")
            rows, metrics, errs, spent = score(pred, refs, args, progress)
            errors += errs
            n_models += len(refs)
            seconds += spent
            for row in rows:
                merged.setdefault(row["model"], {}).update(row)
            results.append((pred, metrics))
    rows = list(merged.values())
    for e in errors:
        print(f"nwa: skipped {e}", file=sys.stderr)
    if not args.quiet:
        print_results(rows, results, args)
        print(
            f"nwa: {n_models} model prediction(s) in {seconds:.2f} s of reading and scoring "
            f"({n_models / max(seconds, 1e-9):.1f} models/s)"
        )
    if args.out:
        write_rows(rows, args.out)
    return Predictions(rows, [m for _, m in results], seconds, n_models)


def main(argv: Sequence[str] | None = None) -> None:
    exit_on_error(run, argv)


if __name__ == "__main__":
    main()
