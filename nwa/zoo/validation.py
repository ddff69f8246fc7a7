"""Checks of what a zoo directory holds, before anything trusts it.

A zoo may come from anyone, so its manifest is data to check, not code to obey:

* every column of ``models.parquet`` has the type the schema says, row by row (a ``classes`` cell
  that is a string or null, an accuracy stored as text, a JSON column holding a list), and
  ``zoo.json``'s fields have theirs;
* every path it names (rows' ``path``, trees' root ``path``) is relative and stays inside the zoo
  folder once resolved, symlinks included (:class:`ZooPaths`).

Each problem is one :class:`~nwa.errors.ZooError` line naming the file, the row (number and id)
and the value.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from nwa.errors import ZooError
from nwa.files import NotRegularFileError, open_regular, read_regular

_MAX_JSON_BYTES = 256 * 1024 * 1024


def _is_null(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _show(v: Any) -> str:
    """A cell as it would read in the table: ``null``, ``0.5``, ``'text'``, ``[1, 2]``."""
    if _is_null(v):
        return "null"
    text = repr(v.tolist() if isinstance(v, np.ndarray | np.generic) else v)
    return text if len(text) <= 60 else text[:57] + "..."


class RowError(ValueError):
    """A bad cell; :func:`check_table` adds the file and the row."""


def as_text(v: Any, optional: bool = False) -> str:
    """A string cell; ``None``/NaN reads as ``""`` where the column is optional."""
    if isinstance(v, str):
        return v
    if optional and _is_null(v):
        return ""
    raise RowError(f"is {_show(v)}, not a string")


def as_name(v: Any) -> str:
    """A non-empty string cell (ids, architectures, splits)."""
    if not as_text(v):
        raise RowError("is empty")
    return v


def as_optional_text(v: Any) -> str:
    """A string cell that may be null (read as ``""``)."""
    return as_text(v, optional=True)


def as_number(v: Any) -> float:
    """A float cell; ``None`` reads as NaN (unknown)."""
    if _is_null(v):
        return math.nan
    if isinstance(v, bool | np.bool_) or not isinstance(v, int | float | np.integer | np.floating):
        raise RowError(f"is {_show(v)}, not a number")
    return float(v)


def as_indices(v: Any) -> list[int]:
    """A list of class indices (a list or array of integers)."""
    if not isinstance(v, list | tuple | np.ndarray) or (isinstance(v, np.ndarray) and v.ndim != 1):
        raise RowError(f"is {_show(v)}, not a list of class indices")
    out = []
    for x in v:
        if isinstance(x, bool | np.bool_) or not isinstance(x, int | np.integer):
            raise RowError(f"holds {_show(x)}, not an integer class index")
        out.append(int(x))
    return out


def as_dict(v: Any) -> dict[str, Any]:
    """A JSON object cell (stored as JSON text); ``None`` reads as ``{}``."""
    if _is_null(v):
        return {}
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except RecursionError:
            raise RowError("nests JSON too deeply") from None
        except ValueError as e:
            raise RowError(f"holds invalid JSON ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(v, dict):
        raise RowError(f"is {_show(v)}, not a JSON object")
    return v


def check_table(
    frame: pd.DataFrame, where: Path, columns: dict[str, Callable[[Any], Any]]
) -> pd.DataFrame:
    """Convert each of ``columns`` with its cell function; the first bad cell is one line.

    Raises:
        ZooError: ``{where}: row N (id 'X'): column 'c' is ...``.
    """
    ids = frame["id"].tolist() if "id" in frame.columns else [None] * len(frame)
    for col, convert in columns.items():
        if convert is as_number and _numeric(frame[col]):  # the usual case, checked at once
            frame[col] = frame[col].astype("float64")
            continue
        cells = frame[col].tolist()
        out = []
        for i, v in enumerate(cells):
            try:
                out.append(convert(v))
            except RowError as e:
                raise ZooError(f"{where}: row {i} (id {_show(ids[i])}): {col!r} {e}") from None
        frame[col] = out
    return frame


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


_META_FIELDS: dict[str, tuple[type, type | None, str]] = {
    "name": (str, None, "a string"),
    "classes": (list, str, "a list of strings"),
    "trees": (dict, dict, "an object of tree id -> object"),
    "label_schema": (dict, str, "an object of label -> kind"),
    "build": (dict, None, "an object"),
    "layout": (dict, list, "an object of architecture -> tensor names"),
    "holdout_concepts": (list, str, "a list of strings"),
    "version": (str, None, "a string"),
    "format": (str, None, "a string"),
}


def check_meta(d: dict[str, Any], where: Path) -> None:
    """Each known ``zoo.json`` field has its type (unknown fields are reported by the reader)."""
    for key, (outer, inner, what) in _META_FIELDS.items():
        if key not in d:
            continue
        value = d[key]
        values = value.values() if isinstance(value, dict) else value
        ok = isinstance(value, outer) and (
            inner is None or all(isinstance(v, inner) for v in values)
        )
        if not ok:
            raise ZooError(f"{where}: {key!r} must be {what}, not {_show(value)}")


def read_json(path: Path) -> Any:
    """A zoo's JSON file (``zoo.json``), read without blocking, with one-line errors."""
    try:
        text = read_regular(path, _MAX_JSON_BYTES)
        return json.loads(text)
    except NotRegularFileError as e:
        raise ZooError(f"{path}: is {e.kind}, not a regular file") from None
    except RecursionError:
        raise ZooError(f"{path}: JSON nested too deeply") from None
    except OSError as e:
        raise ZooError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:  # invalid JSON or text, or a file over the limit
        raise ZooError(f"{path}: invalid JSON ({str(e).splitlines()[0][:120]})") from None


def read_manifest(
    path: Path, columns: list[str], cells: dict[str, Callable[[Any], Any]]
) -> pd.DataFrame:
    """The manifest table at ``path``: every column present, at least one row, each cell
    converted (see :func:`check_table`)."""
    try:
        with open_regular(path) as f:
            frame = pd.read_parquet(f)
    except FileNotFoundError:
        raise ZooError(f"{path}: manifest table is missing") from None
    except NotRegularFileError as e:
        raise ZooError(f"{path}: is {e.kind}, not a regular file") from None
    except Exception as e:  # pyarrow's errors for a file that is not Parquet vary
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise ZooError(
            f"{path}: not a readable Parquet table ({e.__class__.__name__}: {first})"
        ) from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ZooError(f"{path}: manifest lacks columns {missing}")
    if frame.empty:
        raise ZooError(f"{path}: manifest has no models")
    return check_table(frame, path, cells)


class ZooPaths:
    """Resolves the paths a zoo's manifest names, refusing any that leave the zoo folder.

    A path must be relative, without ``..``, and its real location (every symlink followed)
    must lie inside the zoo folder's real location. Checked paths are remembered, so opening a
    member on a hot path costs a set lookup; each folder's real location is resolved once.

    Args:
        root: The zoo folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._real_root: str | None = None
        self._real_root_path: Path | None = None
        self._real_dirs: dict[str, str] = {}
        self._checked: set[str] = set()

    def known(self, rel: Any) -> bool:
        """Whether ``rel`` was checked already (then ``root / rel`` is safe to use)."""
        return isinstance(rel, str) and rel in self._checked

    def real_root(self) -> Path:
        """The zoo folder's real location (symlinks resolved)."""
        if self._real_root_path is None:
            self._real_root = os.path.realpath(self.root)
            self._real_root_path = Path(self._real_root)
        return self._real_root_path

    def resolve(self, rel: Any, where: str) -> Path:
        """``root / rel`` after the checks; ``where`` prefixes the error (file, row and id).

        Raises:
            ZooError: The path is not a non-empty string, is absolute, has ``..``, or resolves
                (through symlinks) outside the zoo folder.
        """
        if self.known(rel):
            return self.root / rel
        if not isinstance(rel, str) or not rel or "\0" in rel:
            raise ZooError(f"{where}: path {_show(rel)} is not a file name")
        pure = PurePosixPath(rel.replace("\\", "/"))
        if pure.is_absolute() or rel.startswith("~") or (len(rel) > 1 and rel[1] == ":"):
            raise ZooError(
                f"{where}: path {rel!r} is absolute; manifest paths are relative to the zoo folder"
            )
        if ".." in pure.parts:
            raise ZooError(f"{where}: path {rel!r} climbs out of the zoo folder with '..'")
        full = self.root / rel
        real_parent = self._real_dir(str(full.parent))
        self._inside(real_parent, rel, where, shown=os.path.join(real_parent, full.name))
        if os.path.islink(full):
            self._inside(os.path.realpath(full), rel, where)
        self._checked.add(rel)
        return full

    def _real_dir(self, folder: str) -> str:
        real = self._real_dirs.get(folder)
        if real is None:
            real = self._real_dirs[folder] = os.path.realpath(folder)
        return real

    def _inside(self, real: str, rel: str, where: str, shown: str | None = None) -> None:
        self.real_root()
        if real != self._real_root and not real.startswith(self._real_root.rstrip(os.sep) + os.sep):
            raise ZooError(
                f"{where}: path {rel!r} resolves to {shown or real}, outside the zoo folder "
                f"{self._real_root} (a symlink out of the zoo)"
            )

    def check_all(self, paths: Iterable[tuple[Any, str]]) -> None:
        """Resolve each ``(path, where)``; raise on the first that leaves the zoo."""
        for rel, where in paths:
            self.resolve(rel, where)
