"""The zoo format: the one contract between zoo builders (and adapters) and the data modules.

A zoo is a directory::

    zoo.json          zoo-level metadata (:class:`ZooMeta`)
    models.parquet    one row per model (columns in :data:`COLUMNS`)
    weights/...       the weight files the rows point at (any format :func:`open_weights` reads)

``hparams`` and ``labels`` are stored as JSON strings in the Parquet file and decoded to dicts on
read. While a build runs, each finished model also has ``rows/<id>.json``; :meth:`ZooWriter.finalize`
turns those into the table. Weight files and row files are written atomically, and a row is written
only after its weights, so the table never points at a missing or partial file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from nwa.atomic import atomic_path, atomic_write_text, save_safetensors
from nwa.errors import NwaError, ZooError
from nwa.weights.io import LoraDelta, WeightSource, open_weights
from nwa.zoo.validation import (
    ZooPaths,
    as_dict,
    as_indices,
    as_name,
    as_number,
    as_optional_text,
    check_meta,
    read_json,
    read_manifest,
)

FORMAT = "nwa-zoo/1"
SPLITS = ("train", "val", "test", "val_holdout", "test_holdout")
COLUMNS: dict[str, str] = {
    "id": "unique model id",
    "path": "weight file or folder, relative to the zoo directory",
    "tree": "model tree id (key of ZooMeta.trees)",
    "parent": "id of the model it was fine-tuned from ('' for roots)",
    "arch": "architecture name",
    "split": f"one of {', '.join(SPLITS)}",
    "classes": "training classes (indices into ZooMeta.classes); empty if not applicable",
    "concept": "fine-tuning concept name ('' if not applicable)",
    "hparams": "hyperparameters (dict)",
    "train_acc": "training accuracy (NaN if unknown)",
    "val_acc": "validation accuracy (NaN if unknown)",
    "test_acc": "test accuracy (NaN if unknown)",
    "gen_gap": "train_acc - test_acc (NaN if unknown)",
    "robustness": "test accuracy under the zoo's fixed input corruption (NaN if unknown)",
    "labels": "any extra labels (dict)",
}
_FLOATS = ("train_acc", "val_acc", "test_acc", "gen_gap", "robustness")
_JSON_COLS = ("hparams", "labels")
_CELLS = {
    "id": as_name,
    "path": as_name,
    "tree": as_optional_text,
    "parent": as_optional_text,
    "arch": as_name,
    "split": as_name,
    "classes": as_indices,
    "concept": as_optional_text,
    "hparams": as_dict,
    "labels": as_dict,
} | dict.fromkeys(_FLOATS, as_number)
TABLE = "models.parquet"
META = "zoo.json"


@dataclass
class ZooMeta:
    """Zoo-level metadata.

    Attributes:
        name: Zoo name.
        classes: Class or concept names; ``classes`` columns index into this list.
        trees: Tree id -> ``{"root": model id or "", "arch": str, ...}``.
        label_schema: Label name -> ``multilabel``, ``multiclass`` or ``regression``.
        build: How it was built (config, seed, library versions, timings).
        layout: Architecture -> tensor names in module order (for index-based layer selection).
        holdout_concepts: Concepts reserved for zero-shot evaluation.
        version: Zoo version string.
    """

    name: str
    classes: list[str] = field(default_factory=list)
    trees: dict[str, dict[str, Any]] = field(default_factory=dict)
    label_schema: dict[str, str] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    layout: dict[str, list[str]] = field(default_factory=dict)
    holdout_concepts: list[str] = field(default_factory=list)
    version: str = "1"
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, default=str)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: Path) -> ZooMeta:
        if not isinstance(d, dict) or "name" not in d:
            raise ZooError(f"{where}: zoo metadata needs at least a 'name'")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ZooError(f"{where}: unknown metadata keys {unknown}")
        check_meta(d, where)
        if d.get("format", FORMAT) != FORMAT:
            raise ZooError(f"{where}: format {d.get('format')!r} is not {FORMAT!r}")
        return cls(**d)


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and coerce types of one manifest row; raise ``ValueError`` on a bad value."""
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise ValueError(f"unknown columns {unknown}; extra labels belong in 'labels'")
    for key in ("id", "path", "arch", "split"):
        if not row.get(key):
            raise ValueError(f"row needs a non-empty {key!r}")
    if row["split"] not in SPLITS:
        raise ValueError(f"split {row['split']!r} is not one of {SPLITS}")
    out = {
        "id": str(row["id"]),
        "path": str(row["path"]),
        "tree": str(row.get("tree", "") or ""),
        "parent": str(row.get("parent", "") or ""),
        "arch": str(row["arch"]),
        "split": row["split"],
        "classes": [int(c) for c in row.get("classes", []) or []],
        "concept": str(row.get("concept", "") or ""),
        "hparams": dict(row.get("hparams", {}) or {}),
        "labels": dict(row.get("labels", {}) or {}),
    }
    for key in _FLOATS:
        v = row.get(key)
        out[key] = float("nan") if v is None else float(v)
    if (
        math.isnan(out["gen_gap"])
        and not math.isnan(out["train_acc"])
        and not math.isnan(out["test_acc"])
    ):
        out["gen_gap"] = out["train_acc"] - out["test_acc"]
    return out


def rows_to_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Normalized rows -> the in-memory manifest (dict columns stay dicts)."""
    frame = pd.DataFrame([normalize_row(r) for r in rows], columns=list(COLUMNS))
    return frame.sort_values("id", kind="stable").reset_index(drop=True)


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write the manifest table to Parquet atomically."""
    disk = frame.copy()
    for c in _JSON_COLS:
        disk[c] = [json.dumps(v, sort_keys=True) for v in disk[c]]
    with atomic_path(path) as tmp:
        disk.to_parquet(tmp, index=False)


def read_table(path: Path) -> pd.DataFrame:
    """Read and check the manifest table; every bad cell is one line naming its row.

    Raises:
        ZooError: Missing or unreadable file, missing columns, no rows, or a cell of the wrong
            type (e.g. ``classes`` stored as a string, an accuracy stored as text).
    """
    return read_manifest(path, list(COLUMNS), _CELLS)


class Zoo:
    """A zoo in memory: metadata, the manifest table, and lazy access to each model's weights.

    Open a directory with :meth:`open`. Adapters for public layouts build a ``Zoo`` directly with
    their own ``opener``, so everything downstream sees one API.

    Every path the manifest names (rows' ``path``, trees' root ``path``) stays inside ``root``,
    symlinks included: anything else is one :class:`ZooError` line naming the row. A file outside
    the zoo is read only when an adapter maps it explicitly, by model id, in ``external``.

    Args:
        meta: Zoo-level metadata.
        table: The manifest, one row per model (see :data:`COLUMNS`).
        root: Folder the rows' paths are relative to.
        opener: ``(zoo, row) -> WeightSource``; defaults to :func:`open_weights` on
            :meth:`path_of` the row.
        external: Model id -> a weight file or folder outside ``root`` that an adapter maps on
            the user's explicit request (e.g. models resolved from the Hugging Face cache);
            :meth:`path_of` returns it instead of resolving the row's ``path``.
    """

    def __init__(
        self,
        meta: ZooMeta,
        table: pd.DataFrame,
        root: str | Path,
        opener: Callable[[Zoo, pd.Series], WeightSource] | None = None,
        external: Mapping[str, str | Path] | None = None,
    ) -> None:
        self.meta = meta
        self.table = table.reset_index(drop=True)
        self.root = Path(root)
        self._opener = opener
        self.external = {str(k): Path(v) for k, v in (external or {}).items()}
        self._paths = ZooPaths(self.root)
        self._by_id = {mid: i for i, mid in enumerate(self.table["id"])}
        self._lora: dict[str, bool] = {}

    @classmethod
    def open(cls, path: str | Path, check_files: bool = True) -> Zoo:
        """Open and validate a zoo directory.

        Raises:
            ZooError: Metadata or table missing or malformed, unknown splits or trees, duplicate
                ids, or (with ``check_files``) weight files missing.
        """
        root = Path(path).expanduser()
        if not root.is_dir():
            raise ZooError(f"{root}: no such zoo directory")
        meta_path = root / META
        if not meta_path.exists():
            hint = (
                " (a build may still be running: finish it or run `python -m nwa.zoo build` again)"
                if (root / "rows").is_dir()
                else ""
            )
            raise ZooError(f"{meta_path}: zoo metadata is missing{hint}")
        meta = ZooMeta.from_dict(read_json(meta_path), meta_path)
        table = read_table(root / TABLE)
        zoo = cls(meta, table, root)
        zoo.validate(check_files=check_files)
        return zoo

    def validate(self, check_files: bool = True) -> None:
        """Check the table against the schema and metadata; raise :class:`ZooError` on the first problem."""
        where = self.root / TABLE
        t = self.table
        dup = t["id"][t["id"].duplicated()].tolist()
        if dup:
            raise ZooError(f"{where}: duplicate model ids {dup[:5]}")
        bad_split = sorted(set(t["split"]) - set(SPLITS))
        if bad_split:
            raise ZooError(f"{where}: unknown splits {bad_split}; allowed {list(SPLITS)}")
        if self.meta.trees:
            bad_tree = sorted(set(t["tree"]) - set(self.meta.trees) - {""})
            if bad_tree:
                raise ZooError(f"{where}: trees {bad_tree[:5]} are not in {META}")
        ids = set(t["id"])
        bad_parent = sorted(
            p for p in set(t["parent"]) if p and p not in ids and p not in self._roots()
        )
        if bad_parent:
            raise ZooError(f"{where}: parents {bad_parent[:5]} are neither models nor tree roots")
        n_cls = len(self.meta.classes)
        for mid, classes in zip(t["id"], t["classes"]):
            if classes and (min(classes) < 0 or max(classes) >= n_cls):
                raise ZooError(f"{where}: model {mid} has class indices outside 0..{n_cls - 1}")
        for tree in self.meta.trees:
            if self.meta.trees[tree].get("path") is not None:
                self.root_path(tree)
        full = [self.path_of(row) for row in self.table[["id", "path"]].to_dict("records")]
        if check_files and self._opener is None:
            missing = [str(p.relative_to(self.root)) for p in full if not p.exists()]
            if missing:
                raise ZooError(
                    f"{self.root}: {len(missing)} weight files are missing, e.g. {missing[:3]}"
                )

    def _roots(self) -> set[str]:
        return {str(tree.get("root", "")) for tree in self.meta.trees.values()}

    def real_root(self) -> Path:
        """The zoo folder's real location (symlinks resolved): what every file read must lie in."""
        return self._paths.real_root()

    def root_path(self, tree: str) -> Path:
        """The stored root model of ``tree`` (its ``path`` in ``zoo.json``), inside the zoo."""
        where = f"{self.root / META}: tree {tree!r} root"
        return self._paths.resolve(self.meta.trees[tree].get("path"), where)

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return f"Zoo({self.meta.name!r}, {len(self)} models, {len(self.meta.trees)} trees, root={str(self.root)!r})"

    def row(self, model_id: str) -> pd.Series:
        try:
            return self.table.iloc[self._by_id[model_id]]
        except KeyError:
            raise ZooError(f"{self.root}: no model with id {model_id!r}") from None

    def path_of(self, model: str | Mapping[str, Any]) -> Path:
        """Where a model's weights are: its row's ``path`` inside the zoo folder, or the file an
        adapter mapped for its id.

        Raises:
            ZooError: The path is absolute, climbs out with ``..``, or resolves (through a
                symlink) outside the zoo folder; the message names the row and its id.
        """
        row = self.row(model) if isinstance(model, str) else model
        if self.external:
            mapped = self.external.get(str(row["id"]))
            if mapped is not None:
                return mapped
        rel = row["path"]
        if self._paths.known(rel):  # the hot path: each path is checked once per zoo
            return self.root / rel
        number = self._by_id.get(row["id"], "?")
        where = f"{self.root / TABLE}: row {number} (id {row['id']!r})"
        return self._paths.resolve(rel, where)

    def open_model(self, model: str | Mapping[str, Any]) -> WeightSource:
        """Open one model's weights lazily (nothing is read until a tensor is asked for).

        ``model`` is an id or a row: a ``Series`` of :attr:`table`, or any mapping of its columns.
        """
        row = self.row(model) if isinstance(model, str) else model
        if self._opener is not None:
            return self._opener(self, row)
        # Whether the files hold LoRA factors is decided once per architecture, so opening a
        # member on a hot path does not parse its header just to detect that.
        arch, path = row["arch"], self.path_of(row)
        # A folder's files (a sharded model, a LoRA folder) must stay inside the zoo too.
        within = None if self.external and str(row["id"]) in self.external else self.real_root()
        if arch not in self._lora:
            source = open_weights(path, within=within)
            self._lora[arch] = isinstance(source, LoraDelta)
            return source
        return open_weights(path, lora=self._lora[arch], within=within)

    def split(self, *names: str) -> pd.DataFrame:
        """The rows in the given splits."""
        return self.table[self.table["split"].isin(names)]

    def label(self, name: str) -> pd.Series:
        """A label column: a manifest column, or a key of the ``labels`` dicts."""
        if name in self.table.columns:
            return self.table[name]
        values = [lab.get(name, float("nan")) for lab in self.table["labels"]]
        if all(isinstance(v, float) and math.isnan(v) for v in values):
            known = sorted({k for lab in self.table["labels"] for k in lab} | set(_FLOATS))
            raise ZooError(f"{self.root}: no label {name!r}; this zoo has {known}")
        return pd.Series(values, index=self.table.index, name=name)

    def available_labels(self) -> list[str]:
        """Regression-ready labels with at least one known value."""
        out = [c for c in _FLOATS if self.table[c].notna().any()]
        out += sorted(
            {
                k
                for lab in self.table["labels"]
                for k, v in lab.items()
                if isinstance(v, int | float)
            }
        )
        return out


class ZooWriter:
    """Writes a zoo directory incrementally, safely under crashes and concurrent shards.

    Each :meth:`add` writes the weights then the row, both atomically; :meth:`finalize` collects
    every row into the table. Several processes (shards) may add to one directory at once, each
    with distinct ids; any one of them, or a later call, finalizes.

    Args:
        root: The zoo directory (created if missing).
        meta: Zoo metadata, written on :meth:`finalize`.
    """

    def __init__(self, root: str | Path, meta: ZooMeta) -> None:
        self.root = Path(root)
        self.meta = meta
        (self.root / "rows").mkdir(parents=True, exist_ok=True)
        (self.root / "weights").mkdir(parents=True, exist_ok=True)

    def row_path(self, model_id: str) -> Path:
        return self.root / "rows" / f"{model_id}.json"

    def has(self, model_id: str) -> bool:
        """Whether the model is finished: its row exists, and rows are written only after weights."""
        return self.row_path(model_id).is_file()

    def weight_path(self, model_id: str) -> Path:
        return self.root / "weights" / f"{model_id}.safetensors"

    def save_weights(
        self,
        model_id: str,
        tensors: dict[str, torch.Tensor],
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Save a model's tensors as safetensors (with its layout order); return the relative path."""
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        meta = {"nwa.layout": json.dumps(list(tensors))} | (metadata or {})
        target = self.weight_path(model_id)
        save_safetensors(target, tensors, meta)
        return str(target.relative_to(self.root))

    def add(self, row: dict[str, Any]) -> None:
        """Record a finished model whose weights are already saved at ``row['path']``."""
        clean = normalize_row(row)
        if not (self.root / clean["path"]).exists():
            raise ZooError(
                f"{self.root / clean['path']}: weights must be written before the row of {clean['id']}"
            )
        atomic_write_text(self.row_path(clean["id"]), json.dumps(clean, sort_keys=True))

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted((self.root / "rows").glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except json.JSONDecodeError as e:
                raise ZooError(f"{p}: corrupt row file ({e})") from None
        return out

    def finalize(self, expected: int | None = None) -> Zoo:
        """Write ``zoo.json`` and ``models.parquet`` from every finished row, atomically.

        Args:
            expected: If given, raise :class:`ZooError` when fewer rows are finished.
        """
        rows = self.rows()
        if expected is not None and len(rows) < expected:
            raise ZooError(
                f"{self.root}: only {len(rows)} of {expected} models are finished; rerun the build to resume"
            )
        atomic_write_text(self.root / META, self.meta.to_json())
        write_table(rows_to_frame(rows), self.root / TABLE)
        return Zoo.open(self.root)


def try_open(path: str | Path) -> Zoo | None:
    """Open a zoo if ``path`` holds a valid one, else ``None``."""
    try:
        return Zoo.open(path)
    except NwaError:
        return None
