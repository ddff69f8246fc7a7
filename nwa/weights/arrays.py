"""Safetensors checkpoints read as numpy arrays, without importing torch.

``nwa.diagnose`` needs nothing of torch but reading tensors; importing it costs about 700 MB of
resident memory (its libraries) and seconds of start-up. :func:`open_arrays` reads a plain
safetensors file, or a folder of them, one tensor at a time with a positioned read of its bytes
(no memory map: the pages of a mapped file stay in the process's resident set once read, so
reading a model through a map costs its whole size), and declines (``None``) whatever needs
nwa's full reader (:func:`nwa.weights.io.open_weights`): torch pickles, LoRA factor files (read
as ``B @ A`` deltas), Hugging Face cache entries, Hub ids, dtypes numpy lacks (bfloat16, float8)
and any header it does not fully trust (the full reader then says what is wrong).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

NUMPY_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


class ArrayInfo(NamedTuple):
    """Name, shape, numpy dtype and absolute byte offset of one tensor (from the header)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int


def _entries(path: Path) -> list[ArrayInfo]:
    """The header's tensors in storage order, each checked to lie inside the file with as many
    bytes as its shape needs; ``ValueError`` otherwise (or for a dtype numpy lacks)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > min(size - 8, 100 << 20):
            raise ValueError("bad header length")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    out = []
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        dtype = np.dtype(NUMPY_DTYPES[e["dtype"]])  # KeyError: a dtype numpy lacks
        begin, end = (int(v) for v in e["data_offsets"])
        shape = tuple(int(v) for v in e["shape"])
        if min(shape, default=1) < 0 or end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"tensor {name!r}: byte range does not match its shape")
        if 8 + length + end > size:
            raise ValueError(f"tensor {name!r} lies beyond the end of the file")
        out.append(ArrayInfo(name, shape, dtype.str, 8 + length + begin))
    return out


class SafetensorsArrays:
    """The tensors of one or more safetensors files (shards), in storage order, as numpy arrays.

    Args:
        files: The files; a tensor is read from the file that holds it.
    """

    def __init__(self, files: list[Path]) -> None:
        self.path = files[0] if len(files) == 1 else files[0].parent
        self._files = files
        self._infos: dict[str, ArrayInfo] = {}
        self._where: dict[str, int] = {}
        for k, f in enumerate(files):
            for info in _entries(f):
                self._infos[info.name] = info
                self._where[info.name] = k
        self._fds = [os.open(f, os.O_RDONLY) for f in files]

    def infos(self) -> Mapping[str, ArrayInfo]:
        return self._infos

    def names(self) -> list[str]:
        return list(self._infos)

    def get(self, name: str) -> np.ndarray:
        """Read one tensor, with one positioned read into its own array."""
        info = self._infos[name]
        out = np.empty(info.shape, dtype=info.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):  # pread may return fewer bytes than asked
            n = os.preadv(self._fds[self._where[name]], [view[done:]], info.offset + done)
            if n <= 0:
                raise OSError(f"{self._files[self._where[name]]}: file ended inside {name!r}")
            done += n
        return out

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> SafetensorsArrays:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _files(path: Path) -> list[Path] | None:
    if path.is_file():
        return [path] if path.suffix == ".safetensors" else None
    if not path.is_dir():
        return None
    index = sorted(path.glob("*.safetensors.index.json"))
    if len(index) == 1:
        shards = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        return [path / s for s in shards]
    single = path / "model.safetensors"
    return [single] if single.is_file() else None


def open_arrays(location: str | Path) -> SafetensorsArrays | None:
    """A numpy reader of a plain safetensors checkpoint (file, or folder with
    ``model.safetensors`` or a shard index), or ``None`` when :func:`~nwa.weights.io.open_weights`
    must read it. Any doubt (malformed header, missing shard, LoRA names, a dtype numpy lacks)
    gives ``None``: the full reader then reports what is wrong, in one line."""
    try:
        files = _files(Path(location).expanduser())
        if not files or not all(f.is_file() for f in files):
            return None
        source = SafetensorsArrays(files)
    except Exception:  # anything unexpected: the full reader says what is wrong
        return None
    if any("lora" in name.lower() for name in source.names()):
        source.close()
        return None
    return source
