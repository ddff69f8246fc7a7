"""Which models of a zoo a run uses, how they are split, and their labels.

Any zoo works with any recipe by naming the zoo alone: the tree and architecture filters default
to every model, the layers to a choice that fits the metanetwork's input (:data:`AUTO_LAYERS`),
and a recipe's choices for particular zoos (those nwa builds, say) live in ``zoo_presets``, which
apply only to zoos that have the models they name, and only where the run left a field unset.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nwa.errors import ConfigError
from nwa.zoo.adapters.records import SPLIT_ALIASES
from nwa.zoo.adapters.small_cnn_zoo import assign_splits
from nwa.zoo.manifest import SPLITS, Zoo

AUTO_LAYERS: dict[str, str | list[str]] = {
    "matrix": "largest",  # the largest weight matrix (the deepest among equals)
    "flat": "largest",
    "stats": ["*.weight", "*.bias"],  # every weight and bias (not normalization buffers)
    "spectral": "matrices",
    "chain": "matrices",  # every weight of two or more dimensions, in module order
    "graph": "*",  # whole networks: norm parameters become node features
}
"""Layers used when neither the run nor a zoo preset names them, by input kind."""

PRESET_FIELDS = ("trees", "arch", "layers")


@dataclass
class SplitProtocol:
    """How models are split into train/val/test, when not as the zoo says.

    Attributes:
        fractions: Train, val and test fractions of a random split of the selected models
            (e.g. NFN's protocol, half the networks held out for test: ``[0.45, 0.05, 0.5]``).
        seed: Seed of that random split.
        column: A label or hyperparameter holding each model's split name instead.
    """

    fractions: Sequence[float] | None = None
    seed: int = 0
    column: str | None = None


def apply_presets(
    zoo: Zoo, presets: Sequence[Mapping[str, Any]] | None, given: dict[str, Any]
) -> dict[str, Any]:
    """``given`` (trees, arch, layers) with the unset ones filled from the first preset that
    fits ``zoo``: its ``zoos`` globs (when it has them) match the zoo's name, and its own
    ``trees``/``arch`` select some of the zoo's models.

    Raises:
        ConfigError: A preset that is not a mapping, or with fields other than zoos, trees, arch
            and layers.
    """
    out = dict(given)
    for preset in presets or []:
        if not isinstance(preset, Mapping):
            raise ConfigError(f"zoo_presets: each entry is a mapping, got {preset!r}")
        unknown = set(preset) - {"zoos", *PRESET_FIELDS}
        if unknown:
            raise ConfigError(
                f"zoo_presets: unknown fields {sorted(unknown)}; a preset has zoos (name globs) "
                f"and sets {list(PRESET_FIELDS)}"
            )
        zoos = preset.get("zoos")
        names = [zoos] if isinstance(zoos, str) else list(zoos or [])
        if names and not any(fnmatch.fnmatchcase(zoo.meta.name, str(g)) for g in names):
            continue
        if not _matching(zoo.table, preset.get("trees"), preset.get("arch")).any():
            continue
        for key in PRESET_FIELDS:
            if out.get(key) is None and preset.get(key) is not None:
                out[key] = preset[key]
        break
    return out


def _matching(table: pd.DataFrame, trees: Sequence[str] | None, arch: str | None) -> pd.Series:
    keep = np.ones(len(table), dtype=bool)
    if trees:
        keep &= np.array([any(fnmatch.fnmatchcase(t, g) for g in trees) for t in table["tree"]])
    if arch:
        keep &= np.array([fnmatch.fnmatchcase(a, arch) for a in table["arch"]])
    return pd.Series(keep, index=table.index)


def select_rows(zoo: Zoo, trees: Sequence[str] | None, arch: str | None) -> pd.DataFrame:
    """The models whose tree matches one of ``trees`` and whose architecture matches ``arch``
    (globs; ``None``: every model).

    Raises:
        ConfigError: No model matches; the message lists the zoo's trees and architectures.
    """
    table = zoo.table
    rows = table[_matching(table, trees, arch)]
    if rows.empty:
        raise ConfigError(
            f"{zoo.root}: no model matches trees={list(trees or [])} arch={arch!r}; this zoo "
            f"has {describe_values(table['tree'], 'trees')} and "
            f"{describe_values(table['arch'], 'architectures')} (leave trees and arch unset for "
            "every model)"
        )
    return rows.reset_index(drop=True)


def describe_values(values: pd.Series, what: str, most: int = 8) -> str:
    """``3 trees ['a', 'b', 'c']`` (the first ``most`` and a count of the rest)."""
    named = sorted({str(v) for v in values if str(v)})
    if not named:
        return f"no {what} (every model stands alone)"
    more = f" and {len(named) - most} more" if len(named) > most else ""
    return f"{len(named)} {what} {named[:most]}{more}"


def label_values(zoo: Zoo, rows: pd.DataFrame, name: str) -> pd.Series | None:
    """A label of the ``rows``: a manifest column, a key of ``labels`` or of ``hparams``
    (``None`` when no selected model has it)."""
    if name in rows.columns and name not in ("labels", "hparams"):
        values = rows[name]
    else:
        values = pd.Series(
            [_lookup(lab, hp, name) for lab, hp in zip(rows["labels"], rows["hparams"])],
            index=rows.index,
            name=name,
        )
    return None if values.map(missing).all() else values


def _lookup(labels: Mapping[str, Any], hparams: Mapping[str, Any], name: str) -> Any:
    return labels.get(name, hparams.get(name))


def missing(value: Any) -> bool:
    """None, NaN and empty strings count as missing."""
    if value is None or (isinstance(value, str) and not value):
        return True
    return isinstance(value, float) and math.isnan(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def zoo_labels(zoo: Zoo, rows: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The labels the selected models have: (numeric ones for ``target: properties``,
    categorical ones usable as ``target``)."""
    numeric, categorical = [], []
    columns = ["train_acc", "val_acc", "test_acc", "gen_gap", "robustness"]
    keys = sorted({k for d in rows["labels"] for k in d} | {k for d in rows["hparams"] for k in d})
    for name in [*columns, *keys]:
        values = label_values(zoo, rows, name)
        if values is None or name == "npy_row":  # the Small CNN Zoo's row number, not a label
            continue
        known = [v for v in values if not missing(v)]
        if all(_is_number(v) for v in known):
            numeric.append(name)
        # names, flags or integers that vary: classes a multiclass target can use
        if len({str(v) for v in known}) > 1 and not all(isinstance(v, float) for v in known):
            categorical.append(name)
    return numeric, categorical


def resplit(rows: pd.DataFrame, zoo: Zoo, split: SplitProtocol | Mapping[str, Any] | None):
    """``rows`` with their ``split`` replaced as ``split`` asks (unchanged for ``None``).

    Raises:
        ConfigError: Bad fractions, an unknown column, or a value that is no split name.
    """
    if split is None:
        return rows
    if isinstance(split, Mapping):
        split = SplitProtocol(**split)
    rows = rows.copy()
    if split.column is not None:
        values = label_values(zoo, rows, split.column)
        if values is None:
            raise ConfigError(f"{zoo.root}: split column {split.column!r}: no model has it")
        names = [SPLIT_ALIASES.get(str(v).strip().lower(), str(v).strip().lower()) for v in values]
        bad = sorted({v for v in names if v not in SPLITS})
        if bad:
            raise ConfigError(
                f"{zoo.root}: split column {split.column!r} holds {bad[:5]}, not split names {list(SPLITS)}"
            )
        rows["split"] = names
    elif split.fractions is not None:
        rows["split"] = assign_splits(len(rows), split.fractions, split.seed)
    return rows
