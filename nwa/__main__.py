"""``nwa <command> [args]``: one console script for every ``python -m nwa.<command>`` main.

``nwa fit --config configs/probex_vision.yaml`` is ``python -m nwa.fit --config
configs/probex_vision.yaml``: the command's module runs as ``__main__`` with the remaining
arguments, so both forms behave (and answer ``--help``) alike.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence

COMMANDS = {
    "fit": ("nwa.fit", "train a metanetwork from a recipe (LightningCLI)"),
    "test": ("nwa.test", "evaluate a trained checkpoint on a zoo's test split"),
    "predict": ("nwa.predict", "audit models with a trained checkpoint"),
    "zoo": ("nwa.zoo", "build, describe and merge zoos"),
    "weights": ("nwa.weights", "inspect the tensors of single weight files"),
    "bench": ("nwa.bench", "every metanetwork on the default zoos, one report"),
    "compare": ("nwa.compare", "compare finished runs: tables and curves"),
    "sweep": ("nwa.sweep", "one run per layer (or field value) of a recipe"),
    "diagnose": ("nwa.diagnose", "data-free spectral diagnostics of model weights"),
}
"""Each subcommand: the module it runs and its line in ``nwa --help``."""


def usage() -> str:
    """The text of ``nwa --help``."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return (
        "usage: nwa <command> [args ...]\n\n"
        "Neural-network weights as a data modality.\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\n`nwa <command> --help` describes a command; `python -m nwa.<command>` is the same."
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch ``nwa <command> [args]`` to the command's module, run as ``__main__``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"nwa: unknown command {command!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = [f"nwa {command}", *rest]
    # alter_sys: the module is __main__ in sys.modules too, exactly as under `python -m`
    runpy.run_module(COMMANDS[command][0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
