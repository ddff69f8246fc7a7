"""Recipes composed of fragments: ``fragments: [trainer/default.yaml, data/vision.yaml, ...]``.

A recipe (``configs/<recipe>.yaml``) lists the config fragments it is made of, relative to its
own folder: ``configs/data/<zoo or family>.yaml`` (the zoo, its target and presets),
``configs/model/<method>.yaml`` (the LightningModule, its encoder and the data input it reads),
``configs/trainer/*.yaml`` and ``configs/logger/*.yaml``; its own keys override them. Before
LightningCLI parses the command line, ``--config recipe.yaml`` becomes ``--config fragment ...
--config recipe.yaml`` (fragments may list fragments), so later files win as they always do
with several ``--config``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from nwa.errors import ConfigError

KEY = "fragments"
"""The recipe key listing its fragments."""
_FLAGS = ("--config", "-c")


def fragments_of(path: Path, seen: tuple[Path, ...] = ()) -> list[Path]:
    """The fragment files ``path`` lists, each preceded by its own fragments, depth first.

    Raises:
        ConfigError: A listed fragment that is missing or not YAML, a cycle, or a
            ``fragments`` value that is not a list of paths.
    """
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(p.name for p in (*seen, resolved))
        raise ConfigError(f"{path}: fragments include each other ({chain})")
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []  # not ours to report: LightningCLI names the file and the problem
    listed = loaded.get(KEY) if isinstance(loaded, dict) else None
    if listed is None:
        return []
    if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
        raise ConfigError(f"{path}: {KEY} must be a list of file paths, got {listed!r}")
    out: list[Path] = []
    for name in listed:
        fragment = path.parent / name
        if not fragment.is_file():
            raise ConfigError(f"{path}: fragment {name!r} not found (looked for {fragment})")
        out += [*fragments_of(fragment, (*seen, resolved)), fragment]
    return out


def expand_configs(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``args`` with each ``--config FILE`` preceded by the fragments FILE lists.

    Returns:
        The expanded arguments and the fragment paths added (run names leave them out).
    """
    out: list[str] = []
    added: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        value = None
        if arg in _FLAGS and i + 1 < len(args):
            value, i = args[i + 1], i + 1
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        if value is not None and Path(value).is_file():
            for fragment in fragments_of(Path(value)):
                out += ["--config", str(fragment)]
                added.append(str(fragment))
            out += ["--config", value]
        elif value is not None:
            out += ["--config", value]
        else:
            out.append(arg)
        i += 1
    return out, added


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def compose(path: Path) -> dict:
    """A recipe as a plain dict: its fragments, then itself, later files winning key by key (a
    reading aid for code that inspects a recipe; ``nwa.fit`` parses the files themselves)."""
    raw: dict = {}
    for file in [*fragments_of(path), path]:
        raw = _merge(raw, yaml.safe_load(file.read_text()) or {})
    raw.pop(KEY, None)
    return raw
