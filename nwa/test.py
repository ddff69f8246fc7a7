"""``python -m nwa.test --ckpt_path PATH [--config recipe.yaml] [--field value ...]``: evaluate a
checkpoint on the test split. Without ``--config``, the config saved in the checkpoint is used."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from nwa.cli import main
from nwa.errors import ConfigError, NwaError, WeightsNotFoundError
from nwa.weights.formats import load_checkpoint


def read_checkpoint(ckpt_path: str) -> dict[str, Any]:
    """A Lightning checkpoint, loaded safely (``weights_only=True``; a pickle that would run code
    is refused unexecuted), before Lightning itself is handed the path.

    Raises:
        ConfigError: No such file, not a checkpoint, or a refused pickle (one line).
    """
    try:
        ckpt = load_checkpoint(ckpt_path)
    except WeightsNotFoundError:
        raise ConfigError(f"{ckpt_path}: no such checkpoint") from None
    except NwaError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{ckpt_path}: not a Lightning checkpoint (holds {type(ckpt).__name__})")
    return ckpt


def config_from_checkpoint(ckpt_path: str) -> str:
    """Write the config stored in a checkpoint to a temporary YAML file; return its path."""
    config = read_checkpoint(ckpt_path).get("nwa_config")
    if not config or not isinstance(config, str):
        raise ConfigError(f"{Path(ckpt_path)}: checkpoint holds no nwa config; pass --config")
    config = _current(config)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as out:
        out.write(config)
    return out.name


def _current(config: str) -> str:
    """The saved config, with an aligner's evaluation arguments of checkpoints made before the
    evaluation callbacks moved to them (:func:`nwa.lit.align.without_moved_arguments`)."""
    from nwa.lit.align import without_moved_arguments

    try:
        loaded = yaml.safe_load(config)
    except yaml.YAMLError:
        return config  # LightningCLI names the file and the problem
    moved = without_moved_arguments(loaded)
    return config if moved is loaded else yaml.safe_dump(moved, sort_keys=False)


def _ckpt_arg(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a == "--ckpt_path" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--ckpt_path="):
            return a.split("=", 1)[1]
    return None


def run(args: list[str]) -> None:
    ckpt = _ckpt_arg(args)
    has_config = any(a in ("-c", "--config") or a.startswith("--config=") for a in args)
    try:
        if ckpt is not None and not has_config:
            args = ["--config", config_from_checkpoint(ckpt), *args]
        elif ckpt is not None and ckpt not in ("best", "last"):
            read_checkpoint(ckpt)  # Lightning's own load of a hostile file ends in a traceback
    except ConfigError as e:
        print(f"nwa: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    main("test", args)


if __name__ == "__main__":
    run(sys.argv[1:])
