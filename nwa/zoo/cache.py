"""Zoos built on first use and cached under ``$NWA_HOME/zoos``.

>>> path = ensure_zoo("default_vision")   # builds once (about 25 min on 2 cores), then reuses
>>> path = zoo_path("tiny")                # a zoo argument as users give it: name, YAML or folder
"""

from __future__ import annotations

import logging
from pathlib import Path

from nwa.errors import ConfigError
from nwa.files import writable_folder
from nwa.zoo.build import build, cpu_cores, zoo_dir
from nwa.zoo.manifest import try_open
from nwa.zoo.plan import load_config

log = logging.getLogger("nwa.zoo")


def ensure_zoo(
    config: str | Path,
    workers: int | None = None,
    progress: bool = False,
    home: str | Path | None = None,
) -> Path:
    """The folder of a finished zoo for ``config``, building (or resuming) it the first time.

    The zoo lives in ``$NWA_HOME/zoos/<name>-<config hash>``, so an edited config gets a new zoo.
    Concurrent callers (processes, jobs on other hosts sharing ``$NWA_HOME``) build together: each
    model is trained once, by whichever caller claims it first, and every caller returns when the
    zoo is finished (see :mod:`nwa.zoo.claims`).

    Args:
        config: Config file, or a name in ``configs/zoo`` (``"tiny"``, ``"default_vision"``).
        workers: Training processes (default: one per CPU core, at most 8).
        progress: Show the progress bar while building.
        home: Cache root instead of ``$NWA_HOME``.

    Raises:
        ConfigError: Bad config, or a cache folder that cannot be written (before any training).
    """
    cfg = load_config(config)
    out = zoo_dir(cfg, home)
    if _ready(out, cfg.digest()):
        return out
    why = writable_folder(out.parent)
    if why is not None:
        raise ConfigError(
            f"{out.parent}: cannot build zoo {cfg.name!r} here ({why}); "
            "set NWA_HOME to a writable folder"
        )
    log.info("building zoo %s into %s (first use)", cfg.name, out)
    if progress:
        print(
            f"nwa: building zoo {cfg.name!r} into {out} (first use; later runs reuse it)",
            flush=True,
        )
    build(cfg, out, workers=workers or min(cpu_cores(), 8), progress=progress)
    return out


def _ready(out: Path, digest: str) -> bool:
    zoo = try_open(out)
    return (
        zoo is not None
        and zoo.meta.build.get("config_hash") == digest
        and len(zoo) == zoo.meta.build.get("n_models")
    )


def zoo_path(zoo: str | Path, progress: bool = True) -> Path:
    """The folder of a zoo argument as users give it: a config (a name in ``configs/zoo`` or a
    YAML file), whose zoo is built on first use, or a folder (a built zoo or a public layout).

    Raises:
        ConfigError: A folder that does not exist, or a bad config.
    """
    text = str(zoo)
    path = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or (not path.exists() and "/" not in text):
        return ensure_zoo(text, progress=progress)
    if not path.exists():
        raise ConfigError(
            f"{path}: no such zoo (give a zoo directory, a public-zoo folder with its adapter, "
            "or tiny/default_vision/default_lora)"
        )
    return path
