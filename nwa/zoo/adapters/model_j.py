"""Model-J discriminative subsets (Horwitz et al., "Learning on Model Weights using Tree
Experts") as a :class:`~nwa.zoo.manifest.Zoo`.

The public layout: one Hugging Face repo per fine-tuned model (ViT, DINO, MAE or ResNet),
downloaded into cache folders, optionally one folder per split::

    ROOT/[SPLIT/]models--ORG--NAME/refs/main                      holds <sha>
    ROOT/[SPLIT/]models--ORG--NAME/snapshots/<sha>/model.safetensors

plus, optionally, a metadata table (CSV, Parquet, JSON) with one row per model: its id,
``dataset_chosen_targets``, ``base_model`` (the tree), hyperparameters,
``best_checkpoint_{train,val,test}_accuracy`` and ``split``. The training classes are also in
each file's safetensors header metadata, so the table may be absent: then the header gives the
classes and the folder gives the split. Model ids are the repo ids (``ORG/NAME``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from nwa.errors import NwaError, ZooError
from nwa.weights.hub import HubRef, resolve
from nwa.weights.io import WeightSource, cache_snapshot, open_weights, read_safetensors_header
from nwa.zoo.adapters.records import (
    ACC_COLUMNS,
    BASE_COLUMNS,
    SPLIT_ALIASES,
    SPLIT_COLUMNS,
    build_zoo,
    coerce,
    find_column,
    find_metadata_table,
    hparams_and_labels,
    is_missing,
    lookup,
    parse_list,
    parse_split,
    used_columns,
)
from nwa.zoo.manifest import SPLITS, Zoo, ZooMeta

ID_COLUMNS = ("model_id", "repo_id", "hf_model_id", "hf_repo_id", "model", "model_name", "id")
URL_COLUMNS = ("hf_model_url", "model_url", "url")
TARGET_COLUMNS = ("dataset_chosen_targets", "chosen_targets", "training_classes", "classes")
ARCH_COLUMNS = ("arch", "architecture", "model_type")
_HUB_FILES = ("model.safetensors", "model-*.safetensors", "model.safetensors.index.json")


def _repo_id(value: Any) -> str:
    """``https://huggingface.co/ORG/NAME``, ``models--ORG--NAME`` or ``ORG/NAME`` -> ``ORG/NAME``."""
    text = str(value).strip().rstrip("/")
    text = re.sub(r"^https?://[^/]+/", "", text)
    if text.startswith("models--"):
        text = text.removeprefix("models--").replace("--", "/")
    return text


def _hf_cache_entries(root: Path) -> list[tuple[str, Path, str | None]]:
    """``(repo_id, cache folder, split taken from the parent folder or None)``, sorted."""
    out = []
    for folder in sorted([*root.glob("models--*"), *root.glob("*/models--*")]):
        if folder.is_dir() and not folder.parent.name.startswith("."):
            parent = folder.parent.name if folder.parent != root else None
            split = SPLIT_ALIASES.get(parent, parent) if parent else None
            out.append((_repo_id(folder.name), folder, split if split in SPLITS else None))
    return out


def _snapshot_weights(folder: Path) -> Path:
    """``models--ORG--NAME`` -> ``snapshots/<refs/main>/model.safetensors`` (or the sharded folder)."""
    try:
        snap = cache_snapshot(folder)
    except NwaError as e:
        raise ZooError(str(e)) from None
    if snap is None:
        raise ZooError(f"{folder}: no refs/main; not a complete Hugging Face cache entry")
    return _model_file(snap, folder)


def _model_file(snap: Path, folder: Path | str) -> Path:
    """The weights in a snapshot folder: ``model.safetensors``, or the folder when sharded."""
    if (snap / "model.safetensors").is_file():
        return snap / "model.safetensors"
    if snap.is_dir() and any(snap.glob("*.safetensors.index.json")):
        return snap
    raise ZooError(f"{folder}: snapshot {snap.name} has no model.safetensors (nor shards)")


def _index_records(frame: pd.DataFrame, where: Path) -> dict[str, dict[str, Any]]:
    id_col = find_column(
        frame.columns, ID_COLUMNS + URL_COLUMNS, where=where, what="model id", required=True
    )
    records: dict[str, dict[str, Any]] = {}
    for rec in frame.to_dict("records"):
        key = _repo_id(rec[id_col])
        if key in records:
            raise ZooError(f"{where}: model {key!r} appears twice in column {id_col!r}")
        records[key] = rec
    return records


def _header_metadata(path: Path) -> dict[str, Any]:
    """A model file's safetensors header metadata, numbers parsed."""
    try:
        meta = (
            open_weights(path, lora=False).metadata()
            if path.is_dir()
            else read_safetensors_header(path)[1]
        )
    except NwaError as e:
        raise ZooError(f"cannot read the header metadata: {e}") from None
    return {k: coerce(v) for k, v in meta.items()}


def _class_mapper(raw: list[list[Any]], classes: list[str] | None) -> tuple[list[str], Callable]:
    """The class vocabulary and a function from one raw target to its index."""
    flat = [t for targets in raw for t in targets]
    if classes is not None:
        names = [str(c) for c in classes]
        index = {c: i for i, c in enumerate(names)}
        return names, lambda t: t if isinstance(t, int) else index[str(t)]
    if all(isinstance(t, int) for t in flat):
        return [str(i) for i in range(max(flat, default=-1) + 1)], lambda t: t
    if any(isinstance(t, int) for t in flat):
        raise ZooError("training classes mix indices and names; pass classes= to map names")
    names = sorted({str(t) for t in flat})
    index = {c: i for i, c in enumerate(names)}
    return names, lambda t: index[str(t)]


def _targets(value: Any, where: str) -> list[Any]:
    out = parse_list(value, where)
    return [int(t) if isinstance(t, str) and t.strip().isdigit() else t for t in out]


def _discriminative_row(
    repo_id: str, weights: Path, rec: dict[str, Any], dir_split: str | None, ctx: dict[str, Any]
) -> dict[str, Any]:
    """One manifest row (``classes`` still raw) from the table record and, if needed, the header."""
    where = f"{ctx['table'] or weights}: model {repo_id}"
    targets = lookup(rec, TARGET_COLUMNS)
    if targets is None or (lookup(rec, SPLIT_COLUMNS) is None and dir_split is None):
        # The table lacks what the header has: fill the gaps, table values first.
        rec = _header_metadata(weights) | {k: v for k, v in rec.items() if not is_missing(v)}
        targets = lookup(rec, TARGET_COLUMNS)
    if targets is None:
        raise ZooError(
            f"{where}: no training classes: no column {TARGET_COLUMNS[0]!r} (or "
            f"{', '.join(TARGET_COLUMNS[1:])}) in the table or in {weights.name}'s header metadata"
        )
    split = lookup(rec, SPLIT_COLUMNS) or dir_split
    if split is None:
        raise ZooError(
            f"{where}: no split: no column {SPLIT_COLUMNS[0]!r} and its folder is not one of {list(SPLITS)}"
        )
    groups = (ID_COLUMNS, URL_COLUMNS, TARGET_COLUMNS, BASE_COLUMNS, SPLIT_COLUMNS, ARCH_COLUMNS)
    used = used_columns(rec, *groups, *ACC_COLUMNS.values())
    hparams, labels = hparams_and_labels(rec, used)
    row = {
        "id": repo_id,
        "path": os.path.relpath(weights, ctx["root"]),
        "tree": str(lookup(rec, BASE_COLUMNS) or ""),
        "arch": ctx["arch"] or str(lookup(rec, ARCH_COLUMNS) or "model_j"),
        "split": parse_split(split, where),
        "classes": _targets(targets, where),
        "hparams": hparams,
        "labels": labels,
    }
    for key, candidates in ACC_COLUMNS.items():
        value = lookup(rec, candidates)
        try:
            row[key] = None if value is None else float(value)
        except (TypeError, ValueError):
            col = find_column(rec, candidates)
            raise ZooError(f"{where}: column {col!r} holds {value!r}, not a number") from None
    return row


def _open_raw(zoo: Zoo, row: Mapping[str, Any]) -> WeightSource:
    external = str(row["id"]) in zoo.external
    return open_weights(zoo.path_of(row), lora=False, within=None if external else zoo.real_root())


def open_model_j(
    root: str | Path,
    metadata: str | Path | None = None,
    *,
    classes: list[str] | None = None,
    arch: str | None = None,
    name: str | None = None,
    skip_incomplete: bool = False,
    hub: bool = False,
) -> Zoo:
    """Read a Model-J discriminative subset from its Hugging Face cache folders.

    With ``hub=True``, models the metadata table lists but ``root`` lacks are read from the
    Hugging Face cache (``HF_HUB_CACHE``; fetched when online) as ``hf-hub:<model id>``. Those
    are the only files read from outside ``root``: the zoo maps each one explicitly
    (:attr:`~nwa.zoo.manifest.Zoo.external`), its ``path`` says ``hf-hub:ORG/NAME@<commit>``,
    and ``zoo.meta.build["hub_models"]`` counts them.

    Args:
        root: Folder holding ``models--ORG--NAME`` entries, directly or in split folders.
        metadata: The metadata table (CSV/Parquet/JSON); default: the only table file in
            ``root``, if any. Rows join to models on ``model_id``/``repo_id``/``hf_model_id``.
        classes: Class names that name-valued targets index into (default: the sorted names
            seen; integer targets are used as indices).
        arch: Architecture name for every row (default: an ``arch`` column, else "model_j").
        name: Zoo name (default: ``model_j:<root folder name>``).
        skip_incomplete: Skip cache entries whose snapshot is missing instead of failing.
        hub: Resolve the table's models that ``root`` lacks through the Hugging Face cache.

    Raises:
        ZooError: No cache entries, a missing required column or value (the message names the
            file and column), or a broken cache entry.
        HubError: With ``hub``, a listed model that is neither cached nor downloadable.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ZooError(f"{root}: no such folder")
    entries = _hf_cache_entries(root)
    frame, table_path = find_metadata_table(root, metadata)
    records = _index_records(frame, table_path) if frame is not None else {}
    if not entries and not (hub and records):
        raise ZooError(f"{root}: no Hugging Face cache entries (models--ORG--NAME) found")
    ctx = {"root": root, "table": table_path, "arch": arch}
    rows, external = _hub_rows(records, {e[0] for e in entries}, ctx) if hub else ([], {})
    skipped = []
    for repo_id, folder, dir_split in entries:
        try:
            weights = _snapshot_weights(folder)
        except ZooError:
            if not skip_incomplete:
                raise
            skipped.append(repo_id)
            continue
        rows.append(_discriminative_row(repo_id, weights, records.get(repo_id, {}), dir_split, ctx))
    class_names, to_index = _class_mapper([r["classes"] for r in rows], classes)
    for r in rows:
        try:
            r["classes"] = sorted(to_index(t) for t in r["classes"])
        except KeyError as e:
            raise ZooError(f"{root}: model {r['id']} has class {e} not in classes=") from None
    trees = {
        r["tree"]: {"root": "", "arch": r["arch"], "base_model": r["tree"]}
        for r in rows
        if r["tree"]
    }
    build = {"adapter": "model_j", "source": str(root), "metadata_table": str(table_path or "")}
    build |= {
        "skipped_incomplete": skipped,
        "table_rows_without_weights": len(set(records) - {r["id"] for r in rows}),
        "hub_models": len(external),
    }
    meta = ZooMeta(
        name=name or f"model_j:{root.name}",
        classes=class_names,
        trees=trees,
        label_schema={"classes": "multilabel"},
        build=build,
    )
    return build_zoo(rows, meta, root, _open_raw, external)


def _hub_rows(
    records: dict[str, dict[str, Any]], local: set[str], ctx: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Rows for the table's models absent from ``root``, resolved through the Hub cache, and
    the explicit mapping of their ids to the files outside the zoo folder."""
    rows, external = [], {}
    for repo_id in sorted(set(records) - local):
        snap = resolve(HubRef(repo_id), patterns=_HUB_FILES)
        weights = _model_file(snap, f"hf-hub:{repo_id}")
        row = _discriminative_row(repo_id, weights, records[repo_id], None, ctx)
        row["path"] = f"hf-hub:{repo_id}@{snap.name}"
        external[repo_id] = weights
        rows.append(row)
    return rows, external
