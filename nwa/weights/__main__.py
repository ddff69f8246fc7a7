"""``python -m nwa.weights COMMAND``: command-line tools for single weight files.

Commands:
    inspect PATH [--layer SEL]   list tensors from the header; statistics of chosen layers

PATH may be a Hugging Face Hub id: ``hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]``.

Any error a user can cause (missing or corrupt file, refused pickle, unknown layer) ends the
program with status 1 and one line ``nwa: <reason>`` on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nwa.errors import NwaError

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

    from nwa.weights.inspection import LayerReport, Listing

EXIT_ERROR = 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one subcommand per tool."""
    parser = argparse.ArgumentParser(
        prog="python -m nwa.weights", description="Tools for single model weight files."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect = commands.add_parser(
        "inspect",
        help="list a model's tensors, or summarize chosen layers",
        description="List tensor names, shapes, dtypes and parameter counts from the file's "
        "header alone (no tensor data is read). With --layer, read the chosen layers and print "
        "their 2-D (out x in) shape and value statistics.",
    )
    inspect.add_argument(
        "path",
        help="a .safetensors or .pt/.pth/.bin file, a Hugging Face folder or cache entry, "
        "a LoRA adapter, or a Hub id hf-hub:ORG/NAME[/SUBFOLDER][@REVISION] (or a bare "
        "ORG/NAME when no such local path exists) read from the Hugging Face cache "
        "(HF_HOME, HF_HUB_CACHE; fetched unless HF_HUB_OFFLINE=1)",
    )
    inspect.add_argument(
        "--layer",
        action="append",
        metavar="SEL",
        help="layer to summarize: exact name, glob (*), regex written re:PATTERN, or integer "
        "index (negative counts from the end); repeat for several",
    )
    inspect.add_argument(
        "--raw",
        action="store_true",
        help="for LoRA adapters, show the stored factors instead of the dense deltas B @ A",
    )
    inspect.set_defaults(func=run_inspect)
    return parser


def run_inspect(args: argparse.Namespace) -> int:
    """The ``inspect`` command."""
    from nwa.weights.inspection import layer_report, list_tensors, parse_selector
    from nwa.weights.io import open_weights

    with open_weights(args.path, lora=False if args.raw else None) as source:
        if args.layer:
            selectors = [parse_selector(s) for s in args.layer]
            _print_reports(layer_report(source, selectors), source.path)
        else:
            _print_listing(list_tensors(source), source.path)
    return 0


def _console(min_width: int) -> Console:
    from rich.console import Console

    console = Console()
    # Piped output defaults to 80 columns; widen it so long tensor names are never folded.
    if not console.is_terminal:
        console = Console(width=max(80, min_width), soft_wrap=True)
    return console


def _print_listing(listing: Listing, path: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    from nwa.weights.inspection import dtype_name, format_shape

    what = "LoRA deltas B @ A" if listing.lora else "tensors"
    title = escape(f"{path}: {len(listing.tensors)} {what}")
    table = Table(title=title, title_justify="left")
    for col, justify in (("#", "right"), ("name", "left"), ("shape", "left")):
        table.add_column(col, justify=justify, no_wrap=True)
    table.add_column("dtype", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    for i, t in enumerate(listing.tensors):
        shape = escape(format_shape(t.shape))
        table.add_row(str(i), escape(t.name), shape, dtype_name(t.dtype), f"{t.numel:,}")
    widest = max((len(t.name) + len(format_shape(t.shape)) for t in listing.tensors), default=0)
    console = _console(widest + 45)
    console.print(table)
    console.print(f"total params: {listing.stored_params:,}")
    if listing.lora:
        console.print(f"dense delta params: {listing.params:,} (use --raw to list the factors)")
    if listing.metadata:
        keys = ", ".join(sorted(listing.metadata))
        console.print(f"metadata keys: {keys}", markup=False)


def _print_reports(reports: list[LayerReport], path: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    from nwa.weights.inspection import dtype_name, format_shape

    console = _console(max(len(r.name) for r in reports) + 40)
    for r in reports:
        title = escape(f"{path} [{r.name}]")
        table = Table(title=title, title_justify="left", show_header=False)
        table.add_column("key", no_wrap=True)
        table.add_column("value", justify="right", no_wrap=True)
        table.add_row("shape", escape(format_shape(r.shape)))
        table.add_row("matrix (out x in)", f"{r.matrix[0]} x {r.matrix[1]}")
        table.add_row("dtype", dtype_name(r.dtype))
        for key, value in r.stats.items():
            table.add_row(key, f"{value:.6g}")
        console.print(table)


def _one_line(err: BaseException) -> str:
    """An error as one line: messages from libraries may span several."""
    return re.sub(r"\s*\n\s*", " ", str(err)).strip() or err.__class__.__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NwaError as e:
        message = _one_line(e)
    except OSError as e:  # e.g. a file without read permission
        message = f"{getattr(e, 'filename', None) or ''} {_one_line(e)}".strip()
    print(f"nwa: {message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
