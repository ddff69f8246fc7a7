"""Metadata records of public zoos -> manifest rows.

Public zoos describe their models in tables (CSV, Parquet, JSON) or per-model JSON and header
metadata, each naming its columns its own way; these helpers read them tolerantly, and turn the
rows into a validated :class:`~nwa.zoo.manifest.Zoo`.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nwa.errors import NwaError, ZooError
from nwa.weights.io import WeightSource
from nwa.zoo.manifest import SPLITS, Zoo, ZooMeta, rows_to_frame

TABLE_SUFFIXES = (".parquet", ".csv", ".csv.gz", ".tsv", ".jsonl", ".json")
SPLIT_COLUMNS = ("split", "data_split", "subset_split")
BASE_COLUMNS = ("base_model", "base_model_id", "pretrained_model", "base", "tree")
SPLIT_ALIASES = {"validation": "val", "valid": "val", "training": "train", "testing": "test"}
ACC_COLUMNS = {
    "train_acc": ("best_checkpoint_train_accuracy", "train_accuracy", "train_acc"),
    "val_acc": ("best_checkpoint_val_accuracy", "val_accuracy", "validation_accuracy", "val_acc"),
    "test_acc": ("best_checkpoint_test_accuracy", "test_accuracy", "test_acc"),
}
HPARAM_NAMES = (
    "lr", "learning_rate", "epochs", "num_epochs", "n_epochs", "num_train_epochs", "max_steps",
    "max_train_steps", "batch_size", "train_batch_size", "weight_decay", "optimizer", "momentum",
    "seed", "warmup_steps", "warmup_ratio", "scheduler", "lr_scheduler", "lr_scheduler_type",
    "label_smoothing", "dropout", "augmentation", "augmentations", "image_size", "resolution",
    "rank", "lora_rank", "lora_alpha", "gradient_accumulation_steps",
)  # fmt: skip
HPARAM_PREFIXES = ("hparams.", "hparam_", "hp_", "config.", "training_args.")


def is_table_file(path: Path) -> bool:
    """Whether ``path`` has a table suffix (``.parquet``, ``.csv``, ``.csv.gz``, ...)."""
    return path.is_file() and path.name.lower().endswith(TABLE_SUFFIXES)


def read_table_file(path: str | Path) -> pd.DataFrame:
    """Read a CSV (optionally gzipped), TSV, Parquet, JSON or JSON-lines table.

    Raises:
        ZooError: Missing, unknown suffix, or unreadable; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"{path}: metadata table not found")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path)
        if name.endswith(".tsv"):
            return pd.read_csv(path, sep="\t")
        if name.endswith(".jsonl"):
            return pd.read_json(path, lines=True)
        if name.endswith(".json"):
            return pd.read_json(path)
    except Exception as e:  # pandas and pyarrow raise many types for malformed files
        raise ZooError(f"{path}: not a readable table ({e.__class__.__name__}: {e})") from None
    raise ZooError(f"{path}: unknown table format (use one of {', '.join(TABLE_SUFFIXES)})")


@functools.lru_cache(maxsize=4096)  # called per field per row: keep big tables fast
def normalize_key(name: str) -> str:
    """Column names compared loosely: case, spaces, dashes and dots do not matter."""
    return re.sub(r"[\s\-.]+", "_", str(name).strip().lower())


def find_column(
    columns: Iterable[str],
    candidates: Sequence[str],
    *,
    where: str | Path = "<table>",
    what: str = "",
    required: bool = False,
) -> str | None:
    """The first column (in ``candidates`` order) present in ``columns``, compared loosely.

    Raises:
        ZooError: ``required`` and none is present; names the file, the missing column and the
            columns the table has.
    """
    by_key = {normalize_key(c): c for c in columns}
    for cand in candidates:
        if normalize_key(cand) in by_key:
            return by_key[normalize_key(cand)]
    if required:
        label = f"{what} column" if what else "column"
        raise ZooError(
            f"{where}: no {label} (looked for {', '.join(candidates)}); "
            f"it has {sorted(map(str, columns))[:20]}"
        )
    return None


def lookup(record: dict[str, Any], candidates: Sequence[str]) -> Any:
    """The value of the first present, non-missing key among ``candidates`` (compared loosely)."""
    key = find_column(record, candidates)
    if key is None:
        return None
    value = record[key]
    return None if is_missing(value) else value


def is_missing(value: Any) -> bool:
    """None, NaN, ``pd.NA`` and empty strings count as missing."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def parse_list(value: Any, where: str) -> list[Any]:
    """A list stored as a list, an array, or a string such as ``"[1, 5, 7]"`` or ``"a, b"``.

    Strings are parsed with :func:`ast.literal_eval`, which evaluates literals only, never code.

    Raises:
        ZooError: The value is not a list of literals; the message says where it came from.
    """
    if is_missing(value):
        return []
    if isinstance(value, list | tuple | np.ndarray | pd.Series):
        return [to_python(v) for v in value]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "(")):
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise ZooError(f"{where}: cannot parse the list {text[:80]!r}") from None
            items = parsed if isinstance(parsed, list | tuple) else [parsed]  # "(16)" is 16
            return [to_python(v) for v in items]
        return [p.strip() for p in re.split(r"[,;]", text) if p.strip()]
    if isinstance(value, int | np.integer):
        return [int(value)]
    raise ZooError(f"{where}: expected a list, got {type(value).__name__} {value!r:.80}")


def to_python(value: Any) -> Any:
    """numpy scalars -> Python scalars (JSON-serializable); NaN -> None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def scalar_items(record: dict[str, Any], skip: Iterable[str] = ()) -> dict[str, Any]:
    """The record's non-missing scalar values (str, int, float, bool), minus ``skip`` keys."""
    skipped = {normalize_key(s) for s in skip}
    out = {}
    for k, v in record.items():
        v = to_python(v)
        if normalize_key(k) in skipped or is_missing(v) or str(k).startswith("Unnamed:"):
            continue  # "Unnamed: 0" is a CSV's saved row index, not a field
        if isinstance(v, str | int | float | bool):
            out[str(k)] = v
    return out


def coerce(value: Any) -> Any:
    """Header metadata holds only strings: ``"0.001"`` -> 0.001, ``"16"`` -> 16."""
    if not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def parse_split(value: Any, where: str) -> str:
    """A split name, with common spellings (``validation``, ``training``) mapped to ours.

    Raises:
        ZooError: Not one of :data:`~nwa.zoo.manifest.SPLITS`.
    """
    text = str(value).strip().lower()
    split = SPLIT_ALIASES.get(text, text)
    if split not in SPLITS:
        raise ZooError(f"{where}: split {value!r} is not one of {list(SPLITS)}")
    return split


def hparams_and_labels(record: Mapping[str, Any], used: Iterable[str]) -> tuple[dict, dict]:
    """Split a record's scalar fields, minus ``used`` keys, into hyperparameters and labels.

    Known hyperparameter names (:data:`HPARAM_NAMES`) and prefixed keys (``config.lr``) are
    hyperparameters (prefix dropped); everything else becomes an extra label.
    """
    hparams, labels = {}, {}
    for key, value in scalar_items(dict(record), skip=used).items():
        low = key.lower()
        if low in HPARAM_NAMES or low.startswith(HPARAM_PREFIXES):
            for prefix in HPARAM_PREFIXES:
                low = low.removeprefix(prefix)
            hparams[low] = coerce(value)
        else:
            labels[key] = coerce(value)
    return hparams, labels


def used_columns(record: Mapping[str, Any], *groups: Sequence[str]) -> set[str]:
    """The record's keys that the candidate ``groups`` resolve to."""
    return {c for group in groups if (c := find_column(record, group)) is not None}


def find_metadata_table(
    root: Path, metadata: str | Path | None
) -> tuple[pd.DataFrame | None, Path | None]:
    """The table given, else the only table file directly in ``root``, else ``(None, None)``.

    Raises:
        ZooError: Several candidate tables (pass one explicitly), or an unreadable table.
    """
    if metadata is not None:
        return read_table_file(metadata), Path(metadata)
    found = sorted(p for p in root.iterdir() if is_table_file(p))
    if len(found) > 1:
        raise ZooError(f"{root}: several metadata tables {[p.name for p in found]}; pass metadata=")
    return (read_table_file(found[0]), found[0]) if found else (None, None)


def build_zoo(
    rows: list[dict[str, Any]],
    meta: ZooMeta,
    root: Path,
    opener: Callable[[Zoo, pd.Series], WeightSource],
    external: dict[str, Path] | None = None,
) -> Zoo:
    """Normalize rows into the manifest, validate it, and record each arch's tensor layout.

    Accuracy columns with any known value are added to ``meta.label_schema`` as regression.
    ``external`` maps model ids to files outside ``root`` (see :class:`~nwa.zoo.manifest.Zoo`).

    Raises:
        ZooError: A row breaks the schema, or the first model of an arch cannot be read.
    """
    try:
        table = rows_to_frame(rows)
    except ValueError as e:
        raise ZooError(f"{root}: {e}") from None
    meta.label_schema |= {k: "regression" for k in ACC_COLUMNS if table[k].notna().any()}
    if {"train_acc", "test_acc"} <= meta.label_schema.keys():
        meta.label_schema["gen_gap"] = "regression"
    zoo = Zoo(meta, table, root, opener=opener, external=external)
    zoo.validate(check_files=False)
    # One header per architecture gives the layout order that index-based layer selection uses.
    for arch, model_id in {r["arch"]: r["id"] for r in reversed(rows)}.items():
        try:
            with zoo.open_model(model_id) as source:
                meta.layout[arch] = source.names()
        except NwaError as e:
            raise ZooError(f"{root}: cannot read model {model_id}: {e}") from None
    return zoo
