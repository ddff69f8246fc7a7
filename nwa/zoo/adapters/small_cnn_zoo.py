"""The Small CNN Zoo (Unterthiner et al. 2020, "Predicting Neural Network Accuracy from Weights")
as a :class:`~nwa.zoo.manifest.Zoo`.

The public layout of one zoo (e.g. CIFAR10-GS)::

    weights.npy       one row per checkpoint: 4,970 flattened parameters
    metrics.csv.gz    one row per checkpoint: test_accuracy, train_accuracy, step, config.* ...
    layout.csv        varname, start_idx, end_idx, shape: which slice of a row is which tensor

The network: three 3x3 conv layers of 16 filters (stride 2) on 32x32x1 grayscale input, global
average pooling, a dense layer to 10 classes; TensorFlow names such as
``sequential/conv2d_1/kernel:0``. Kernels are stored in TensorFlow order ([kh, kw, in, out] for
conv, [in, out] for dense) and are transposed here to torch order ([out, in, kh, kw],
[out, in]); tensors are renamed ``conv2d_1.weight`` etc. ``weights.npy`` is memory-mapped, so
reading one tensor of one model touches only those bytes.

The zoo ships no split: a deterministic train/val/test split is drawn from a seed (or taken from
a ``split`` column when the metrics have one). It is a forest of random initializations, so
every model's ``tree`` is empty.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nwa.errors import ConfigError, CorruptWeightsError, ZooError
from nwa.weights.io import TensorInfo, WeightSource
from nwa.zoo.adapters.records import (
    ACC_COLUMNS,
    SPLIT_COLUMNS,
    build_zoo,
    find_column,
    hparams_and_labels,
    parse_list,
    parse_split,
    read_table_file,
    used_columns,
)
from nwa.zoo.manifest import Zoo, ZooMeta
from nwa.zoo.validation import ZooPaths

ARCH = "small_cnn"
WEIGHTS = "weights.npy"
LAYOUT = "layout.csv"
METRICS = ("metrics.csv.gz", "metrics.csv")
LAYOUT_COLUMNS = ("varname", "start_idx", "end_idx", "shape")


@dataclass(frozen=True)
class FlatTensor:
    """One tensor's slice of a flattened parameter row.

    Attributes:
        name: Torch-style name (``conv2d_1.weight``).
        varname: The TensorFlow variable name in ``layout.csv``.
        start: First column of the slice in ``weights.npy``.
        end: One past the last column.
        stored_shape: Shape in TensorFlow order, as stored.
        perm: Axis permutation to torch order (``None`` for biases).
    """

    name: str
    varname: str
    start: int
    end: int
    stored_shape: tuple[int, ...]
    perm: tuple[int, ...] | None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape in torch order."""
        if self.perm is None:
            return self.stored_shape
        return tuple(self.stored_shape[i] for i in self.perm)


def torch_name(varname: str) -> str:
    """``sequential/conv2d_1/kernel:0`` -> ``conv2d_1.weight``; ``.../bias:0`` -> ``....bias``."""
    parts = re.sub(r":\d+$", "", varname.strip()).split("/")
    if len(parts) > 2:
        parts = parts[1:]  # the Keras model scope ("sequential") is the same for every tensor
    leaf = {"kernel": "weight"}.get(parts[-1], parts[-1])
    return ".".join([*parts[:-1], leaf])


def _to_torch_perm(varname: str, ndim: int) -> tuple[int, ...] | None:
    """TensorFlow kernels [kh, kw, in, out] / [in, out] -> torch [out, in, kh, kw] / [out, in]."""
    if not re.sub(r":\d+$", "", varname).endswith("kernel"):
        return None
    return {4: (3, 2, 0, 1), 2: (1, 0)}.get(ndim)


def read_layout(path: Path) -> list[FlatTensor]:
    """Parse ``layout.csv``, in module order with each layer's weight before its bias.

    Raises:
        ZooError: A missing column, or a slice whose length differs from its shape's size.
    """
    frame = read_table_file(path)
    cols = [
        find_column(frame.columns, [c], where=path, what=repr(c), required=True)
        for c in LAYOUT_COLUMNS
    ]
    tensors = []
    for rec in frame.to_dict("records"):
        varname, start, end = str(rec[cols[0]]), int(rec[cols[1]]), int(rec[cols[2]])
        shape = tuple(int(s) for s in parse_list(rec[cols[3]], f"{path} [{varname}]"))
        if end - start != int(np.prod(shape, dtype=np.int64)):
            raise ZooError(
                f"{path}: {varname} spans columns {start}..{end} but has shape {list(shape)}"
            )
        perm = _to_torch_perm(varname, len(shape))
        tensors.append(FlatTensor(torch_name(varname), varname, start, end, shape, perm))
    if not tensors:
        raise ZooError(f"{path}: the layout lists no tensors")
    # layout.csv lists each layer's bias before its kernel (alphabetical); torch lists weight first.
    layers = list(dict.fromkeys(t.name.rpartition(".")[0] for t in tensors))
    rank = {"weight": 0, "bias": 1}
    return sorted(
        tensors,
        key=lambda t: (
            layers.index(t.name.rpartition(".")[0]),
            rank.get(t.name.rpartition(".")[2], 2),
        ),
    )


class FlatRowSource(WeightSource):
    """One checkpoint (one row of ``weights.npy``) as named torch-order tensors, read lazily."""

    def __init__(self, array: np.ndarray, path: Path, row: int, tensors: Sequence[FlatTensor]):
        self.path = path
        self._array = array
        self._row = row
        self._tensors = {t.name: t for t in tensors}
        dtype = torch.from_numpy(np.zeros(0, dtype=array.dtype)).dtype
        self._infos = {t.name: TensorInfo(t.name, t.shape, dtype) for t in tensors}

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def _read(self, name: str) -> torch.Tensor:
        t = self._tensors[name]
        # Slicing the memmap reads only this tensor's bytes of this row.
        flat = np.asarray(self._array[self._row, t.start : t.end])
        values = flat.reshape(t.stored_shape)
        if t.perm is not None:
            values = values.transpose(t.perm)
        # A copy: the map is read-only, and a tensor must own its memory once it leaves here.
        return torch.from_numpy(np.array(values, order="C", copy=True))


class SmallCNNOpener:
    """Opens rows of one zoo's ``weights.npy``; picklable (for data-loader workers), re-mapping
    the file in each process rather than copying it.

    Args:
        weights: Path to ``weights.npy``.
        tensors: The parsed layout.
    """

    def __init__(self, weights: Path, tensors: Sequence[FlatTensor]) -> None:
        self.weights = Path(weights)
        self.tensors = list(tensors)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        """The memory-mapped ``[checkpoints, parameters]`` array."""
        if self._array is None:
            try:
                self._array = np.load(self.weights, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise CorruptWeightsError(
                    self.weights, f"not a readable .npy array ({e})"
                ) from None
        return self._array

    def __call__(self, zoo: Zoo, row: Mapping[str, Any]) -> WeightSource:
        return FlatRowSource(self.array, self.weights, int(row["labels"]["npy_row"]), self.tensors)

    def __getstate__(self) -> dict[str, Any]:
        return {"weights": self.weights, "tensors": self.tensors, "_array": None}


def assign_splits(n: int, fractions: Sequence[float], seed: int) -> list[str]:
    """A deterministic random train/val/test assignment of ``n`` items.

    Raises:
        ConfigError: ``fractions`` are not three non-negative numbers summing to 1.
    """
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions {list(fractions)} must be 3 numbers >= 0 summing to 1")
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fr[0] * n))
    n_val = min(int(round(fr[1] * n)), n - n_train)
    out = ["test"] * n
    for i in perm[:n_train]:
        out[i] = "train"
    for i in perm[n_train : n_train + n_val]:
        out[i] = "val"
    return out


def _select_rows(metrics, step: int | str | None, where: Path) -> np.ndarray:
    """Indices of the checkpoints kept: all, those at one step, or those at the last step."""
    if step is None:
        return np.arange(len(metrics))
    col = find_column(metrics.columns, ["step"], where=where, what="'step'", required=True)
    steps = metrics[col].to_numpy()
    target = steps.max() if step == "last" else int(step)
    keep = np.flatnonzero(steps == target)
    if keep.size == 0:
        raise ZooError(
            f"{where}: no checkpoint at step {target}; steps run {steps.min()}..{steps.max()}"
        )
    return keep


def _read_sources(root: Path) -> tuple[SmallCNNOpener, Any, Path]:
    """The opener (layout + mapped weights) and the metrics table, checked against each other."""
    paths = ZooPaths(root)  # the three files must really be in the folder, not linked from afar
    for name in (WEIGHTS, LAYOUT, *METRICS):
        paths.resolve(name, str(root))
    for needed in (WEIGHTS, LAYOUT):
        if not (root / needed).is_file():
            raise ZooError(
                f"{root / needed}: missing (a Small CNN Zoo folder has {WEIGHTS}, {LAYOUT}, {METRICS[0]})"
            )
    metrics_path = next((root / m for m in METRICS if (root / m).is_file()), root / METRICS[0])
    metrics = read_table_file(metrics_path)
    opener = SmallCNNOpener(root / WEIGHTS, read_layout(root / LAYOUT))
    array = opener.array
    width = max(t.end for t in opener.tensors)
    if array.ndim != 2 or array.shape[1] < width:
        raise ZooError(
            f"{opener.weights}: shape {list(array.shape)} does not hold the layout's {width} parameters per row"
        )
    if len(metrics) != array.shape[0]:
        raise ZooError(
            f"{metrics_path}: {len(metrics)} rows but {WEIGHTS} has {array.shape[0]} checkpoints"
        )
    return opener, metrics, metrics_path


def open_small_cnn_zoo(
    root: str | Path,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    step: int | str | None = "last",
    name: str | None = None,
) -> Zoo:
    """Read one Small CNN Zoo folder.

    Args:
        root: Folder with ``weights.npy``, ``metrics.csv.gz`` and ``layout.csv``.
        fractions: Train/val/test fractions of the random split (used when the metrics have no
            ``split`` column).
        seed: Seed of the random split; the same seed gives the same split.
        step: Which checkpoints to keep: ``"last"`` (the final training step, as in most
            papers), one step number, or ``None`` for all (then checkpoints of one run may land
            in different splits).
        name: Zoo name (default: ``small_cnn_zoo:<root folder name>``).

    Raises:
        ZooError: A missing file or column, or files that disagree on the number of
            checkpoints or parameters.
        ConfigError: Bad ``fractions``.
    """
    root = Path(root).expanduser()
    opener, metrics, metrics_path = _read_sources(root)
    keep = _select_rows(metrics, step, metrics_path)
    records = metrics.iloc[keep].to_dict("records")
    split_col = find_column(metrics.columns, SPLIT_COLUMNS)
    if split_col is not None:
        splits = [parse_split(r[split_col], str(metrics_path)) for r in records]
    else:
        splits = assign_splits(len(records), fractions, seed)
    used = used_columns(records[0] if records else {}, SPLIT_COLUMNS, *ACC_COLUMNS.values())
    width = max(6, len(str(len(metrics) - 1)))
    rows = []
    for i, rec, split in zip(keep.tolist(), records, splits):
        hparams, labels = hparams_and_labels(rec, used)
        row = {"id": f"cnn_{i:0{width}d}", "path": WEIGHTS, "arch": ARCH, "split": split}
        for key, candidates in ACC_COLUMNS.items():
            col = find_column(rec, candidates)
            row[key] = None if col is None or rec[col] != rec[col] else float(rec[col])
        rows.append(row | {"hparams": hparams, "labels": labels | {"npy_row": i}})
    if not rows:
        raise ZooError(f"{metrics_path}: no checkpoints")
    build = {"adapter": "small_cnn_zoo", "source": str(root), "seed": seed, "step": step}
    build |= {"fractions": list(fractions), "split_from": split_col or "seed"}
    meta = ZooMeta(name=name or f"small_cnn_zoo:{root.name}", build=build)
    return build_zoo(rows, meta, root, opener)
