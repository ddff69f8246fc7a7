"""``python -m nwa.test --ckpt_path PATH [--config recipe.yaml] [--field value ...]``: evaluate a
checkpoint on the test split. Without ``--config``, the config saved in the checkpoint is used."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from nwa.cli import main
from nwa.errors import ConfigError


def config_from_checkpoint(ckpt_path: str) -> str:
    """Write the config stored in a checkpoint to a temporary YAML file; return its path."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = ckpt.get("nwa_config")
    if not config:
        raise ConfigError(f"{path}: checkpoint holds no nwa config; pass --config")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as out:
        out.write(config)
    return out.name


def run(args: list[str]) -> None:
    if "--ckpt_path" in args and not any(
        a in ("-c", "--config") or a.startswith("--config=") for a in args
    ):
        try:
            args = ["--config", config_from_checkpoint(args[args.index("--ckpt_path") + 1]), *args]
        except ConfigError as e:
            print(f"nwa: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    main("test", args)


if __name__ == "__main__":
    run(sys.argv[1:])
