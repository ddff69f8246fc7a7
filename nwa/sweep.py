"""``python -m nwa.sweep --config configs/<recipe>.yaml [--layers L1 L2 ... | --layers "*weight"]``:
one model per layer, the best layer chosen on validation (the ProbeX recipe).

Each layer is trained and tested by the same code as ``python -m nwa.fit``, with the recipe's
model and ``--data.init_args.layers <layer>``; the checkpoint tested is the best on the ranking
metric (``val/acc`` for classification, ``val/r2`` for regression, or ``--metric``). The table
(one row per layer: best validation metric, test metrics of that checkpoint) is written as CSV
and Markdown and printed; the best layer on validation is named last. Any other argument
(``--trainer.max_epochs 50``, ``--data.init_args.zoo DIR`` ...) goes to every run. Runs log to
W&B (offline unless logged in; group = the sweep's name, job type ``layer-sweep``, best-value
summaries, see :mod:`nwa.dashboard`) and to CSV files under ``--save_dir``, each named
``<sweep name>-<layer>``; ``--logger csv`` logs to CSV only, ``--logger config`` keeps the
recipe's logger. ``configs/sweeps/layers.yaml`` runs the same search as a W&B sweep.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from nwa.errors import ConfigError


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's own options, and the rest (passed to every run)."""
    p = argparse.ArgumentParser(
        prog="python -m nwa.sweep", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    p.add_argument("--config", action="append", required=True, help="Recipe YAML (repeatable).")
    p.add_argument(
        "--layers",
        nargs="+",
        default=None,
        help="Layers to sweep: names, globs, re:REGEX or indices (default: the recipe's layers).",
    )
    p.add_argument("--max_layers", type=int, default=None, help="Sweep only the first K layers.")
    p.add_argument("--out", default=None, help="CSV table (a .md is written next to it).")
    p.add_argument("--metric", default=None, help="Validation metric that ranks layers.")
    p.add_argument(
        "--mode", choices=("max", "min"), default=None, help="Higher or lower is better."
    )
    p.add_argument("--name", default=None, help="Sweep name (default: the first config's stem).")
    p.add_argument(
        "--save_dir", default=None, help="Where runs are written (default $NWA_RUNS or runs)."
    )
    p.add_argument(
        "--logger",
        choices=("wandb", "csv", "config"),
        default="wandb",
        help="W&B and CSV files, CSV files only, or the recipe's logger.",
    )
    ns, rest = p.parse_known_args(argv)
    if ns.max_layers is not None and ns.max_layers < 1:
        p.error(f"--max_layers must be positive, got {ns.max_layers}")
    return ns, rest


def parse_recipe(run_args: list[str]) -> Any:
    """The config ``python -m nwa.fit`` parses from ``run_args`` (nothing instantiated).

    Raises:
        SystemExit: An argument the recipe does not have, or a bad value (jsonargparse's error).
    """
    from lightning.pytorch import LightningModule

    from nwa.cli import NwaCLI
    from nwa.data import ModelZooDataModule
    from nwa.recipes import expand_configs

    class ParseOnly(NwaCLI):
        def instantiate_classes(self) -> None:  # only the parsed config is needed
            pass

    args, fragments = expand_configs(run_args)
    cli = ParseOnly(
        LightningModule,
        ModelZooDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=False,
        auto_configure_optimizers=False,
        fragments=fragments,
    )
    return cli.config


def recipe_data(run_args: list[str], layers: list[str] | None) -> Any:
    """The recipe's data module with ``layers`` (every layer name resolved, nothing trained).

    Only the ``data`` section of the parsed config is instantiated (without normalization), so
    resolving layers reads model headers and no weights.
    """
    data = parse_recipe(run_args)["data"]
    module, _, name = str(data["class_path"]).rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    kwargs = dict(data.get("init_args") or {})
    kwargs["normalize"] = False
    if layers is not None:
        kwargs["layers"] = layers
    return cls(**kwargs)


def layer_arg(name: str) -> str:
    """A selector matching exactly ``name`` (escaped when it looks like a glob or an index)."""
    if any(c in name for c in "*?[") or name.startswith("re:") or re.fullmatch(r"-?\d+", name):
        return "re:" + re.escape(name)
    return name


def run_layer(
    run_args: list[str], layer: str, run_name: str, metric: str, mode: str, logger: list[str]
) -> dict[str, Any]:
    """Train and test one layer's model exactly as ``python -m nwa.fit`` does; one table row."""
    from nwa.cli import main

    args = [
        *run_args,
        *("--data.init_args.layers", layer_arg(layer), "--run_name", run_name),
        *("--checkpoint.monitor", metric, "--checkpoint.mode", mode, *logger),
    ]
    row: dict[str, Any] = {"layer": layer, "run": run_name}
    try:
        cli = main("fit", args)
        trainer = cli.trainer
        ckpt = None if trainer.fast_dev_run else "best"  # as nwa.fit: no checkpoint in a dev run
        best = trainer.checkpoint_callback.best_model_score if ckpt else None
        best = trainer.callback_metrics.get(metric) if best is None else best
        if best is None:
            logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
            raise ConfigError(f"{metric!r} was never logged; validation metrics: {logged}")
        row[metric] = float(best)
        if ckpt:
            row["checkpoint"] = str(trainer.checkpoint_callback.best_model_path)
        (results,) = trainer.test(
            cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, verbose=False
        )
        row.update({k: float(v) for k, v in sorted(results.items())})
    except SystemExit as e:  # nwa's own errors are printed by nwa.cli.main
        row["error"] = f"exit {e.code}"
    except Exception as e:  # one failing layer must not end a long sweep; the table shows it
        row["error"] = f"{type(e).__name__}: {e}"
        print(f"nwa.sweep: layer {layer} failed: {row['error']}", file=sys.stderr)
    finally:
        from nwa.dashboard import finish_run

        finish_run()  # the next layer's run is a run of its own
    return row


def best_row(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    scored = [r for r in rows if isinstance(r.get(metric), float) and not math.isnan(r[metric])]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r[metric])


def write_tables(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """Write ``out`` (CSV) and ``out`` with suffix ``.md`` (Markdown); one row per layer."""
    from nwa.atomic import atomic_write_text
    from nwa.tables import markdown_table, write_rows

    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(rows, out)
    md = out.with_suffix(".md")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    table = markdown_table(cols, [[_cell(r.get(c, math.nan)) for c in cols] for r in rows])
    atomic_write_text(md, table + "\n")
    return out, md


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def print_table(rows: list[dict[str, Any]], metric: str, best: dict[str, Any] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    test_metric = "test/" + metric.split("/", 1)[-1]
    table = Table(title=f"Layer sweep, ranked by {metric}")
    for col in ("layer", "shape", metric, test_metric, "error"):
        table.add_column(col)
    for r in rows:
        mark = " *" if r is best else ""
        table.add_row(
            r["layer"] + mark,
            str(r.get("shape", "")),
            _cell(r.get(metric, "")),
            _cell(r.get(test_metric, "")),
            str(r.get("error", "")),
        )
    Console().print(table)


def logger_args(kind: str, save_dir: Path, group: str) -> list[str]:
    """W&B and CSV, CSV files under ``save_dir`` alone (no account needed), or the recipe's
    logger; always in one group.

    ``save_dir`` is also the trainer's root, so nothing lands in the working directory (a
    ``fast_dev_run`` has no logger, and its checkpoints would go there)."""
    root = ["--trainer.default_root_dir", str(save_dir)]
    if kind == "config":
        return [*root, "--group", group]
    if kind == "wandb":
        from nwa.dashboard import twin_loggers

        loggers = twin_loggers(save_dir, group, group, "layer-sweep", [f"sweep:{group}"], None)
        return [*root, "--group", group, "--trainer.logger", loggers]
    csv = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(save_dir)},
    }
    return [*root, "--trainer.logger", json.dumps(csv)]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the sweep; returns the table's rows."""
    ns, passthrough = parse_args(sys.argv[1:] if argv is None else argv)
    run_args = [a for c in ns.config for a in ("--config", c)] + passthrough
    try:
        dm = recipe_data(run_args, ns.layers)
    except Exception as e:  # a bad recipe or selector: one line, before any training
        print(f"nwa.sweep: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    layers = dm.layer_names[: ns.max_layers] if ns.max_layers else dm.layer_names
    metric = ns.metric or ("val/r2" if dm.task_type == "regression" else "val/acc")
    mode = ns.mode or ("min" if metric.endswith(("loss", "mse", "mae", "rmse")) else "max")
    name = ns.name or Path(ns.config[0]).stem
    save_dir = Path(ns.save_dir or os.environ.get("NWA_RUNS", "runs")) / name
    logger = logger_args(ns.logger, save_dir, name)
    print(f"nwa.sweep: {len(layers)} layers, ranked by {metric} ({mode}): {layers}", flush=True)
    rows = []
    for layer in layers:
        row = run_layer(run_args, layer, f"{name}-{layer}", metric, mode, logger)
        rows.append({"layer": layer, "shape": "x".join(map(str, dm.layer_shapes[layer])), **row})
    csv_path, md_path = write_tables(rows, Path(ns.out) if ns.out else save_dir / "results.csv")
    best = best_row(rows, metric, mode)
    print_table(rows, metric, best)
    print(f"nwa.sweep: table written to {csv_path} and {md_path}")
    if best is None:
        print("nwa.sweep: no layer finished; see the errors above", file=sys.stderr)
        raise SystemExit(1)
    test_metric = "test/" + metric.split("/", 1)[-1]
    print(
        f"nwa.sweep: best layer on validation: {best['layer']} ({metric} = {best[metric]:.4f}, "
        f"{test_metric} = {best.get(test_metric, float('nan')):.4f})"
    )
    return rows


if __name__ == "__main__":
    argv, sys.argv = sys.argv[1:], sys.argv[:1]  # each run gets its arguments explicitly
    main(argv)
