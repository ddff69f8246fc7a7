"""Model-J Stable Diffusion LoRA subsets as a :class:`~nwa.zoo.manifest.Zoo`.

The public layout: one folder per LoRA fine-tune, under one folder per split::

    ROOT/{train,val,test,val_holdout,test_holdout}/model_idx_XXXX/pytorch_lora_weights.safetensors

Each model's concept comes from a metadata table in ``ROOT`` (a model column such as
``model_idx`` and a concept column such as ``concept``/``category``/``imagenet_class_id``), else
from a JSON file in the model folder, else from the safetensors header metadata (the public
release stores ``imagenet_class_id`` there). Models open as the dense deltas ``B @ A`` of each
LoRA layer, in diffusers (``lora.down``/``lora.up``) or peft (``lora_A``/``lora_B``) naming.
Model ids are ``SPLIT/FOLDER``; concepts of the holdout splits become ``holdout_concepts``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from nwa.errors import ZooError
from nwa.files import read_regular
from nwa.weights.io import LORA_FILE_NAMES, WeightSource, open_weights, read_safetensors_header
from nwa.zoo.adapters.records import (
    BASE_COLUMNS,
    SPLIT_COLUMNS,
    build_zoo,
    coerce,
    find_column,
    find_metadata_table,
    hparams_and_labels,
    lookup,
    parse_split,
    read_table_file,
    used_columns,
)
from nwa.zoo.manifest import SPLITS, Zoo, ZooMeta

CONCEPT_COLUMNS = (
    "concept",
    "category",
    "concept_name",
    "class_name",
    "imagenet_class_id",
    "class_id",
    "concept_id",
    "label",
    "class",
)
KEY_COLUMNS = ("model_idx", "model_id", "model", "model_dir", "folder", "path", "id", "name")


def _open_lora(zoo: Zoo, row: Mapping[str, Any]) -> WeightSource:
    return open_weights(zoo.path_of(row), lora=True, within=zoo.real_root())


def _model_key(value: Any) -> Any:
    """``model_idx_0012``, ``train/model_idx_0012``, ``"12"`` or 12 -> 12; other names as is."""
    text = str(value).strip().rstrip("/").split("/")[-1]
    m = re.search(r"(\d+)$", text)
    return int(m.group(1)) if m else text


def _lora_records(frame: pd.DataFrame, where: Path) -> dict[tuple[str | None, Any], dict]:
    key_col = find_column(frame.columns, KEY_COLUMNS, where=where, what="model", required=True)
    find_column(frame.columns, CONCEPT_COLUMNS, where=where, what="concept", required=True)
    split_col = find_column(frame.columns, SPLIT_COLUMNS, where=where)
    out = {}
    for rec in frame.to_dict("records"):
        split = parse_split(rec[split_col], str(where)) if split_col else None
        out[(split, _model_key(rec[key_col]))] = rec
    return out


def _folder_json(folder: Path) -> dict[str, Any]:
    """The first JSON object in the model folder that names a concept (not adapter_config.json)."""
    for path in sorted(folder.glob("*.json")):
        if path.name == "adapter_config.json":
            continue
        try:
            data = json.loads(read_regular(path, 64 << 20))
        except (OSError, ValueError, RecursionError) as e:  # a FIFO, bad JSON, deep nesting
            first = (str(e) or type(e).__name__).splitlines()[0][:120]
            raise ZooError(f"{path}: not a readable JSON file ({first})") from None
        if isinstance(data, dict) and lookup(data, CONCEPT_COLUMNS) is not None:
            return data
    return {}


def _concept_names(concept_names: Mapping[str, str] | str | Path | None) -> dict[str, str]:
    if concept_names is None or isinstance(concept_names, Mapping):
        return {str(k): str(v) for k, v in (concept_names or {}).items()}
    path = Path(concept_names)
    if path.suffix == ".json":
        return {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
    frame = read_table_file(path)
    return dict(zip(frame.iloc[:, 0].astype(str), frame.iloc[:, 1].astype(str)))


def _lora_row(split: str, folder: Path, weights: Path, rec: dict, ctx: dict) -> dict[str, Any]:
    rec = (
        rec
        or _folder_json(folder)
        or {k: coerce(v) for k, v in read_safetensors_header(weights)[1].items()}
    )
    concept = lookup(rec, CONCEPT_COLUMNS)
    if concept is None:
        raise ZooError(
            f"{folder}: no concept for this model: not in {ctx['table'] or 'a metadata table'}, "
            f"a JSON file in the folder, or {weights.name}'s header (looked for {', '.join(CONCEPT_COLUMNS)})"
        )
    used = used_columns(rec, KEY_COLUMNS, CONCEPT_COLUMNS, SPLIT_COLUMNS, BASE_COLUMNS)
    hparams, labels = hparams_and_labels(rec, used)
    names = ctx["concept_names"]
    if str(concept) in names:
        labels["concept_id"] = str(concept)
    return {
        "id": f"{split}/{folder.name}",
        "path": os.path.relpath(weights, ctx["root"]),
        "tree": str(lookup(rec, BASE_COLUMNS) or ""),
        "arch": ctx["arch"],
        "split": split,
        "concept": names.get(str(concept), str(concept)),
        "hparams": hparams,
        "labels": labels,
    }


def open_model_j_lora(
    root: str | Path,
    metadata: str | Path | None = None,
    *,
    concept_names: Mapping[str, str] | str | Path | None = None,
    arch: str = "sd_lora",
    name: str | None = None,
) -> Zoo:
    """Read a Model-J Stable Diffusion LoRA subset; models open as dense deltas ``B @ A``.

    Args:
        root: Folder holding the split folders (``train``, ``val``, ``test``, ``val_holdout``,
            ``test_holdout``), each holding one folder per model.
        metadata: A table with a model column (``model_idx``, ...), a concept column
            (``concept``, ``category``, ``imagenet_class_id``, ...) and optionally ``split``;
            default: the only table file in ``root``. Without one, each model's concept comes
            from a JSON file in its folder or from its safetensors header metadata.
        concept_names: Concept id -> display name (a dict, or a JSON/CSV file), e.g. WordNet ids
            to words; unmapped concepts keep their value.
        arch: Architecture name for every row.
        name: Zoo name (default: ``model_j_lora:<root folder name>``).

    Raises:
        ZooError: No split folders with models, a model folder without LoRA weights, or a model
            whose concept is nowhere to be found.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ZooError(f"{root}: no such folder")
    frame, table_path = find_metadata_table(root, metadata)
    records = _lora_records(frame, table_path) if frame is not None else {}
    ctx = {
        "root": root,
        "table": table_path,
        "arch": arch,
        "concept_names": _concept_names(concept_names),
    }
    rows = []
    for split in SPLITS:
        folders = sorted(
            p for p in (root / split).glob("*") if p.is_dir() and not p.name.startswith(".")
        )
        for folder in folders:
            weights = next((folder / f for f in LORA_FILE_NAMES if (folder / f).is_file()), None)
            if weights is None:
                raise ZooError(f"{folder}: no LoRA weights (expected {LORA_FILE_NAMES[0]})")
            key = _model_key(folder.name)
            rec = records.get((split, key)) or records.get((None, key)) or {}
            rows.append(_lora_row(split, folder, weights, rec, ctx))
    if not rows:
        raise ZooError(
            f"{root}: no LoRA models found; expected SPLIT/model_idx_XXXX/{LORA_FILE_NAMES[0]} "
            f"with SPLIT one of {list(SPLITS)}"
        )
    concepts = sorted({r["concept"] for r in rows})
    index = {c: i for i, c in enumerate(concepts)}
    for r in rows:
        r["classes"] = [index[r["concept"]]]
    holdout = sorted({r["concept"] for r in rows if r["split"].endswith("_holdout")})
    trees = {
        r["tree"]: {"root": "", "arch": arch, "base_model": r["tree"]} for r in rows if r["tree"]
    }
    build = {
        "adapter": "model_j_lora",
        "source": str(root),
        "metadata_table": str(table_path or ""),
    }
    meta = ZooMeta(
        name=name or f"model_j_lora:{root.name}",
        classes=concepts,
        trees=trees,
        label_schema={"concept": "multiclass"},
        build=build,
        holdout_concepts=holdout,
    )
    return build_zoo(rows, meta, root, _open_lora)
