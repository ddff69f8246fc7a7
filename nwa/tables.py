"""Tables of results written as CSV, JSON or Parquet, chosen by the file's suffix, atomically."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nwa.atomic import atomic_path
from nwa.errors import ConfigError

FORMATS = (".csv", ".json", ".parquet")


def check_suffix(path: str | Path) -> Path:
    """``path`` if its suffix is a known table format, else :class:`ConfigError` (before any work)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"{path}: unknown table format; use one of {', '.join(FORMATS)}")
    return path


def _plain(v: Any, infinite: bool) -> Any:
    if hasattr(v, "item") and not isinstance(v, list | dict | str):
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or (math.isinf(v) and not infinite)):
        return None
    return v


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` (dicts; columns in first-seen order) to ``path``; NaN is left empty (CSV) or
    null, infinities are written as such (``inf``) except in JSON (null). Nothing is left
    half-written on failure.

    Nested values (lists, dicts) are kept in JSON and written as JSON strings in CSV/Parquet.
    """
    path = check_suffix(path)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    suffix = path.suffix.lower()
    flat = [{c: _plain(r.get(c), suffix != ".json") for c in columns} for r in rows]
    with atomic_path(path) as tmp:
        if suffix == ".json":
            tmp.write_text(json.dumps(flat, indent=1, default=str) + "\n")
            return path
        flat = [{c: _cell(v) for c, v in r.items()} for r in flat]
        if suffix == ".csv":
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(flat)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(flat), tmp)
    return path


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, list | dict) else v


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (tabulate's ``github`` format) of display values, written as
    given: no number is re-parsed or re-formatted, ``|`` inside a cell is escaped."""
    from tabulate import tabulate

    def text(v: Any) -> str:
        return str(v).replace("|", "\\|")

    body = [[text(c) for c in row] for row in rows]
    return tabulate(
        body, headers=[text(h) for h in header], tablefmt="github", disable_numparse=True
    )
