"""``python -m nwa.zoo {build,info,merge,export}``: build, describe, merge and export zoos.

Examples::

    python -m nwa.zoo build --config configs/zoo/default_vision.yaml --workers 2
    python -m nwa.zoo build --config tiny --out /tmp/tiny --shard 0/2     # and 1/2, anywhere
    python -m nwa.zoo build --config tiny --out /tmp/tiny                 # run twice at once: they share the work
    python -m nwa.zoo merge /tmp/tiny
    python -m nwa.zoo info /tmp/tiny
    python -m nwa.zoo export --format small_cnn_zoo default_properties /tmp/props_public
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from nwa.errors import NwaError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nwa.zoo", description="Build, describe and merge model zoos."
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build",
        help="build (or resume) a zoo from a YAML config",
        description="Build (or resume) a zoo. Any number of builders may share one --out at once "
        "(shards, array tasks, other hosts on a shared filesystem): each model is trained once, "
        "by the builder that claims it; the others wait for it. Same config and seed, same "
        "bytes, whatever the workers, shards and resumes.",
    )
    b.add_argument(
        "--config", required=True, help="config file, or a name in configs/zoo (e.g. tiny)"
    )
    b.add_argument(
        "--out", default=None, help="zoo folder (default $NWA_HOME/zoos/<name>-<config hash>)"
    )
    b.add_argument(
        "--shard",
        default="0/1",
        help="I/N: build members I mod N (or 'slurm' for a job array task)",
    )
    b.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel training processes (default: CPU cores, at most 8)",
    )
    b.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per job (default 1; zoos are bitwise reproducible at equal thread counts)",
    )
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    i = sub.add_parser("info", help="describe a zoo")
    i.add_argument(
        "path",
        help="zoo folder (nwa's format, or a public layout: Model-J, Model-J SD LoRA, the Small "
        "CNN Zoo), or a config (file or name) whose cached zoo to describe",
    )
    i.add_argument(
        "--adapter",
        default=None,
        help="read the folder with this adapter (model_j, model_j_lora, small_cnn_zoo); default: "
        "detected from its files, as data.init_args.zoo is",
    )
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    i.add_argument(
        "--no-distances",
        action="store_true",
        help="skip the own-root vs other-root weight distances",
    )
    i.add_argument("--per-tree", type=int, default=10, help="members per tree used for distances")
    m = sub.add_parser(
        "merge", help="write the manifest of a sharded build once every shard finished"
    )
    m.add_argument("path", help="zoo folder")
    e = sub.add_parser(
        "export",
        help="write a zoo in a public layout (the Small CNN Zoo's npy + csv)",
        description="Write a zoo's models in a public layout so code written for it reads them: "
        "small_cnn_zoo writes weights.npy, layout.csv and metrics.csv.gz (one folder per "
        "architecture when there are several). Files are written atomically.",
    )
    e.add_argument("path", help="zoo folder, or a config (file or name) whose cached zoo to export")
    e.add_argument("out", help="output folder")
    e.add_argument("--format", default="small_cnn_zoo", help="layout (default small_cnn_zoo)")
    e.add_argument("--arch", nargs="+", default=(), help="architectures to export (default all)")
    return p


def _zoo_path(text: str) -> Path:
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    from nwa.zoo.build import zoo_dir
    from nwa.zoo.plan import load_config

    if path.suffix in (".yaml", ".yml") or not path.exists():
        try:
            return zoo_dir(load_config(text))
        except NwaError:
            pass
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 on bad input, 130 when interrupted)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "build":
            from nwa.zoo.build import build, cpu_cores

            workers = args.workers or min(cpu_cores(), 8)
            result = build(
                args.config, args.out, args.shard, workers, args.threads, progress=not args.quiet
            )
            if result.zoo is None:
                print(
                    f"shard done ({len(result.trained)} trained, {result.seconds:.0f} s); other shards still have work: {result.path}"
                )
            else:
                print(
                    f"zoo ready ({len(result.zoo)} models, {len(result.trained)} trained now, {result.seconds:.0f} s): {result.path}"
                )
        elif args.command == "merge":
            from nwa.zoo.build import merge

            zoo = merge(args.path)
            print(f"merged {len(zoo)} models: {zoo.root}")
        elif args.command == "export":
            from nwa.zoo.adapters import open_zoo
            from nwa.zoo.export import export

            zoo = open_zoo(_zoo_path(args.path))
            for folder in export(zoo, args.out, args.format, args.arch):
                print(f"exported to {folder}")
        else:
            from nwa.zoo.adapters import open_zoo
            from nwa.zoo.info import describe, format_report

            zoo = open_zoo(_zoo_path(args.path), args.adapter)
            info = describe(zoo, not args.no_distances, args.per_tree)
            print(json.dumps(info, indent=2) if args.json else format_report(info))
    except NwaError as e:
        print(f"nwa: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a read-only NWA_HOME or --out: files are written atomically
        where = f"{e.filename}: " if e.filename else ""
        print(
            f"nwa: {where}{e.strerror or e} (set NWA_HOME or --out to a writable folder)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(
            f"nwa: interrupted ({signal.Signals(signum).name}); run the same command again to resume",
            file=sys.stderr,
        )
        return 128 + signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
