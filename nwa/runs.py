"""Training runs read back from disk: metric histories, summaries, configs, names and groups.

Three layouts are runs (:func:`load_run`):

- a W&B run folder, ``runs/wandb/offline-run-<time>-<id>/`` (or ``run-...`` for online runs, or
  the ``run-<id>.wandb`` file itself). The ``.wandb`` file is a LevelDB-style log of protobuf
  records (``wandb.proto.wandb_internal_pb2.Record``); wandb 0.31 ships no Python reader for it
  (``wandb sync --view`` is gone and ``wandb.Api`` needs a server), so :func:`wandb_records`
  reads the framing and lets wandb's own protobuf classes parse the records;
- a CSV logger folder, ``<save_dir>/[<name>/]version_<n>/`` with ``metrics.csv`` and the CLI's
  ``config.yaml`` (or Lightning's ``hparams.yaml``);
- a run folder, ``<root>/<name>/<id>/`` (``config.yaml`` beside ``checkpoints/``, see
  :mod:`nwa.resume`): its CSV log (``metrics.csv``) or its W&B run (``wandb/``); the older
  checkpoint folder ``runs/nwa/<id>/`` finds its W&B run under ``runs/wandb/``.

A resumed W&B run is one run in several log folders (``offline-run-<time>-<id>``, one per
launch); they are read as one, in time order, each launch's rows replacing the rows an earlier
launch logged from the step it resumed at.

Naming scheme. A run's **name** is ``--run_name`` when given, else the stem(s) of its
``--config`` file(s) joined by ``+`` (``probex_vision``); its **group** is ``--group`` when
given, else the zoo's name (``tiny``, ``default_vision``, or the ``name`` in a zoo folder's
``zoo.json``). :func:`default_run_name` and :func:`default_group` compute these defaults, so
``nwa.cli`` can fill them in at launch; runs made without that (or outside ``nwa.fit``) are
named by their logger (W&B display name, CSV folder) or id, and grouped by their W&B group or zoo.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml

from nwa.errors import NwaError

MAX_IS_BETTER = ("acc", "f1", "r2", "precision", "recall", "kendall", "top1", "auroc", "exact")
MIN_IS_BETTER = ("loss", "mse", "mae", "rmse")
AXES = ("epoch", "step")  # history columns that are x axes, never metrics

# LevelDB log framing of .wandb files: a 7-byte file header, then 32 KiB blocks of chunks,
# each ``crc32 (uint32) | length (uint16) | type (uint8) | data``; a record spans chunks.
_MAGIC = b":W&B"
_BLOCK = 32768
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


class RunError(NwaError):
    """A path that is not a run, or a run that cannot be read."""


@dataclass
class Run:
    """One training run as logged.

    Args:
        name: Display name (see the module docstring for the naming scheme).
        group: Group of comparable runs (by default the zoo).
        kind: ``wandb`` or ``csv``: where the metrics came from.
        path: The folder (or file) the run was read from.
        run_id: W&B run id, or the CSV folder's name.
        config: The run's config as logged: the CLI config when the run came from ``nwa.fit``.
        history: One row per logging call: ``epoch``, ``step`` and one column per metric.
        summary: Last logged value of every metric (W&B's run summary).
        finished: Whether the run's end was logged (W&B's exit record); ``None`` for CSV logs.
        job_type: W&B job type (empty for CSV logs).
        tags: W&B tags (none for CSV logs).
    """

    name: str
    group: str
    kind: Literal["wandb", "csv"]
    path: Path
    run_id: str
    config: dict[str, Any]
    history: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    finished: bool | None = None
    job_type: str = ""
    tags: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> list[str]:
        """Names of the numeric metrics with at least one logged value, sorted."""
        h = self.history
        return sorted(
            c
            for c in h.columns
            if c not in AXES and pd.api.types.is_numeric_dtype(h[c]) and h[c].notna().any()
        )

    @property
    def flat_config(self) -> dict[str, Any]:
        """The config as ``{"model.init_args.lr": 0.001, ...}``."""
        return flatten(self.config)

    def values(self, metric: str) -> pd.Series:
        """The logged values of ``metric`` in logging order (empty if never logged)."""
        if metric not in self.history:
            return pd.Series(dtype=float)
        return pd.to_numeric(self.history[metric], errors="coerce").dropna()

    def final(self, metric: str) -> float:
        """The last logged value (the summary value if the history lacks it; NaN if neither)."""
        v = self.values(metric)
        if len(v):
            return float(v.iloc[-1])
        return self.summarized(metric, "last")

    def summarized(self, metric: str, kind: str = "last") -> float:
        """The run summary's ``kind`` (``last``, ``max``, ``min``) of ``metric``: W&B keeps them
        as ``{"max": ..., "last": ...}`` once the metric was declared with
        ``define_metric`` (:mod:`nwa.dashboard`), as a bare value otherwise (its last)."""
        value = self.summary.get(metric)
        if isinstance(value, dict):
            return _as_float(value.get(kind))
        return _as_float(value) if kind == "last" else math.nan

    def best(self, metric: str) -> float:
        """The best logged value by :func:`metric_goal` (NaN when the goal is unknown)."""
        v, goal = self.values(metric), metric_goal(metric)
        if not len(v) or goal is None:
            return math.nan
        return float(v.max() if goal == "max" else v.min())

    def curve(self, metric: str, x: str = "epoch") -> pd.DataFrame:
        """``[x, metric]`` rows where ``metric`` was logged (``x`` falls back to ``step``)."""
        if x not in self.history:
            x = next((a for a in AXES if a in self.history), x)
        cols = [c for c in (x, metric) if c in self.history]
        if metric not in self.history:
            return pd.DataFrame(columns=[x, metric])
        return self.history[cols].dropna(subset=[metric]).reset_index(drop=True)


def metric_goal(metric: str) -> Literal["max", "min"] | None:
    """Whether higher (``max``) or lower (``min``) values of ``metric`` are better.

    The first token of the name's last part that names a known measure decides, so
    ``test/r2_test_acc`` is ``max`` and ``val/mse_gen_gap`` is ``min``; ``None`` if none does.
    """
    for token in re.split(r"[_\-.]", metric.rsplit("/", 1)[-1].lower()):
        if token in MAX_IS_BETTER:
            return "max"
        if token in MIN_IS_BETTER:
            return "min"
    return None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys; lists and scalars are leaves."""
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


# ----- naming -------------------------------------------------------------------------------------
def default_run_name(config_files: Sequence[str | Path]) -> str | None:
    """``probex_vision`` for ``--config configs/probex_vision.yaml`` (stems joined by ``+``)."""
    stems = [Path(str(p)).stem for p in config_files]
    return "+".join(stems) if stems else None


def default_group(data: Any) -> str | None:
    """The zoo's name from the ``data`` config: an embedded zoo's name, or a zoo folder's name.

    A folder's ``zoo.json`` names it; a cache folder ``tiny-<hash>`` without one gives ``tiny``.
    """
    args = _get(data, "init_args", data)
    zoo = _get(args, "zoo", None)
    if not zoo:
        return None
    path = Path(str(zoo)).expanduser()
    meta = path / "zoo.json"
    if meta.is_file():
        try:
            return str(json.loads(meta.read_text())["name"])
        except (OSError, ValueError, KeyError):
            pass
    return re.sub(r"-[0-9a-f]{10}$", "", path.name) or str(zoo)


def _get(obj: Any, key: str, default: Any) -> Any:
    # configs arrive as plain dicts (read back) or jsonargparse Namespaces (at launch)
    try:
        value = obj[key]
    except (KeyError, TypeError, IndexError):
        return default
    return default if value is None else value


def _name_and_group(
    config: dict[str, Any], name: str | None, group: str | None, fallback: str
) -> tuple[str, str]:
    name = config.get("run_name") or name or fallback
    group = config.get("group") or group or default_group(config.get("data")) or ""
    return str(name), str(group)


# ----- loading ------------------------------------------------------------------------------------
def load_run(path: str | Path) -> Run:
    """Read one run (see the module docstring for the layouts).

    Raises:
        RunError: ``path`` is not a run, or its files cannot be read.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise RunError(f"{p}: no such file or folder")
    if p.is_file() and p.suffix == ".wandb":
        return _load_wandb(p, p.resolve().parent)
    if p.is_dir() and (found := sorted(p.resolve().glob("run-*.wandb"))):
        return _load_wandb(found[-1], p)
    if p.is_dir() and (p / "metrics.csv").is_file():
        return _load_csv(p)
    if p.is_dir() and (p / "config.yaml").is_file() and (p / "checkpoints").is_dir():
        return _load_wandb(_wandb_file_for(p), p)
    inside = find_runs(p) if p.is_dir() else []
    if len(inside) == 1:  # e.g. a run folder holding its CSV log: <run>/<run>/version_0
        return load_run(inside[0])
    logs = [f for f in inside if f.name.startswith(("offline-run-", "run-"))]
    if len(logs) == 1 and len(inside) == 2:  # a bench run: its W&B run and its CSV twin
        return load_run(logs[0])
    raise RunError(
        f"{p}: not a run (expected a W&B run folder with run-<id>.wandb, a CSV log folder "
        "with metrics.csv, a run folder <root>/<run_name>/<id>, or a folder holding one of these)"
    )


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """:func:`load_run` for each path, in order."""
    return [load_run(p) for p in paths]


def find_runs(root: str | Path) -> list[Path]:
    """Every W&B run folder (the newest of a resumed run's) and CSV log folder under ``root``,
    sorted by path."""
    root = Path(root).expanduser()
    newest: dict[tuple[Path, str], Path] = {}
    for f in sorted(root.rglob("run-*.wandb")):
        if f.parent.name != "latest-run":
            newest[(f.parent.parent, f.stem)] = f.parent  # names sort by launch time
    wandb = set(newest.values())
    csv = {f.parent for f in root.rglob("metrics.csv")}
    return sorted(wandb | csv)


def _wandb_file_for(folder: Path) -> Path:
    """The ``.wandb`` log of a run folder ``<root>/<name>/<id>`` (in its ``wandb/``) or of an
    older checkpoint folder ``<save_dir>/<project>/<id>`` (in ``<save_dir>/wandb/``)."""
    run_id = folder.resolve().name
    for wandb_dir in (folder.resolve() / "wandb", folder.resolve().parents[1] / "wandb"):
        found = sorted(wandb_dir.glob(f"*run-*-{run_id}/run-{run_id}.wandb"))
        if found:
            return found[-1]
    raise RunError(f"{folder}: run folder, but no W&B run {run_id} in it or under ../../wandb")


def _segments(file: Path) -> list[Path]:
    """Every launch's log of the W&B run ``file`` belongs to, oldest first."""
    run_id = file.stem.removeprefix("run-")
    found = sorted(file.resolve().parent.parent.glob(f"*run-*-{run_id}/run-{run_id}.wandb"))
    return [f for f in found if f.parent.name != "latest-run"] or [file]


def _load_csv(folder: Path) -> Run:
    try:
        history = pd.read_csv(folder / "metrics.csv")
    except (OSError, ValueError) as e:
        raise RunError(f"{folder / 'metrics.csv'}: unreadable ({e})") from None
    config = _read_yaml(folder / "config.yaml") or _read_yaml(folder / "hparams.yaml")
    summary = {c: history[c].dropna().iloc[-1] for c in history if history[c].notna().any()}
    # CSVLogger folders are <save_dir>/<name>/version_<n>; the name is the logger's
    logged = folder.parent.name if folder.name.startswith("version_") else None
    fallback = f"{logged}/{folder.name}" if logged else folder.name
    name, group = _name_and_group(config, None, None, fallback)
    return Run(name, group, "csv", folder, folder.name, config, history, summary)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RunError(f"{path}: not YAML ({e})") from None
    return loaded if isinstance(loaded, dict) else {}


# ----- W&B ----------------------------------------------------------------------------------------
def wandb_records(path: str | Path) -> Iterator[Any]:
    """The protobuf records of a ``.wandb`` file, in order (a truncated tail is ignored).

    Raises:
        RunError: The file is not a W&B log, or a record fails its checksum.
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != _MAGIC:
        raise RunError(f"{path}: not a W&B run log (bad header)")
    pos, parts = 7, b""
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # block trailer: zero padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        chunk = data[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        if kind == 0 or len(chunk) < length:  # preallocated zeros, or a run still writing
            break
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise RunError(f"{path}: corrupt record at byte {pos}")
        pos += _CHUNK_HEADER + length
        parts = chunk if kind in (_FULL, _FIRST) else parts + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record


def _item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _load_wandb(file: Path, folder: Path) -> Run:
    launches: list[list[dict[str, Any]]] = []
    summary: dict[str, Any] = {}
    configs: list[dict[str, Any]] = []
    info: dict[str, Any] = {"id": file.stem.removeprefix("run-"), "name": "", "group": ""}
    finished = False
    for segment in _segments(file):
        rows: list[dict[str, Any]] = []
        finished = False
        for record in wandb_records(segment):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                r = record.run
                info.update(id=r.run_id or info["id"], name=r.display_name, group=r.run_group)
                info.update(job_type=r.job_type, tags=list(r.tags))
                configs.append({_item_key(i): json.loads(i.value_json) for i in r.config.update})
            elif kind == "config":
                update = record.config.update
                configs.append({_item_key(i): json.loads(i.value_json) for i in update})
            elif kind == "history":
                rows.append(_history_row(record.history.item))
            elif kind == "summary":
                update = record.summary.update
                summary.update({_item_key(i): json.loads(i.value_json) for i in update})
                for i in record.summary.remove:
                    summary.pop(_item_key(i), None)
            elif kind == "exit":
                finished = True
        launches.append(rows)
    rows = _merge_launches(launches)
    config = _cli_config(configs)
    name, group = _name_and_group(config, info["name"], info["group"], info["id"])
    summary = {k: v for k, v in summary.items() if not k.startswith("_")}
    history = pd.DataFrame(rows)
    history = history[[*[a for a in AXES if a in history], *sorted(set(history) - set(AXES))]]
    return Run(
        name,
        group,
        "wandb",
        folder,
        info["id"],
        config,
        history,
        summary,
        finished,
        info.get("job_type", ""),
        info.get("tags", []),
    )


def _merge_launches(launches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One history from a resumed run's launches: a launch's rows replace an earlier launch's
    from the first step it logged (the steps after the checkpoint it resumed from)."""
    rows: list[dict[str, Any]] = []
    for launch in launches:
        steps = [r["step"] for r in launch if _is_number(r.get("step"))]
        if steps:
            start = min(steps)
            rows = [r for r in rows if not (_is_number(r.get("step")) and r["step"] >= start)]
        rows += launch
    return rows


def _history_row(items: Iterable[Any]) -> dict[str, Any]:
    raw = {_item_key(i): json.loads(i.value_json) for i in items}
    # Lightning's WandbLogger logs the trainer step as a metric; W&B's own _step counts log calls
    step = raw.get("trainer/global_step", raw.get("_step"))
    row = {
        k: v
        for k, v in raw.items()
        if not k.startswith("_") and k != "trainer/global_step" and _is_number(v)
    }
    return {**row, "step": step}


def _cli_config(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run config; only the CLI's keys when ``nwa.fit`` logged its config (Lightning also
    logs the module's flat hyperparameters, which repeat it)."""
    merged: dict[str, Any] = {}
    for c in configs:
        merged.update(c)
    cli = next((c for c in configs if "trainer" in c and "model" in c), None)
    keys = cli.keys() if cli else merged.keys()
    return {k: merged[k] for k in keys if not k.startswith("_")}


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _as_float(v: Any) -> float:
    return float(v) if _is_number(v) else math.nan
