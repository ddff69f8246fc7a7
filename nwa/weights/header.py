"""The safetensors header, parsed as strictly as ``safetensors.safe_open`` parses it, and then some.

A file is ``<u64 little-endian n><n bytes of JSON><data>``. The JSON maps tensor names to
``{"dtype", "shape", "data_offsets"}`` (offsets relative to the data) plus an optional
``"__metadata__"`` of strings. A file is accepted only if safe_open would accept it: every dtype
one of the format's, every dimension and offset a non-negative integer, each byte range exactly
its tensor's size, and the ranges tiling the data with no gap, overlap or trailing byte. Beyond
safe_open, nwa refuses duplicate keys (JSON readers silently keep one of them) and dimensions
torch cannot hold. Every refusal is one :class:`~nwa.errors.CorruptWeightsError` line naming the
file and, where there is one, the tensor.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO, NamedTuple

import torch

from nwa.errors import CorruptWeightsError, UnsupportedWeightsError
from nwa.weights.source import TensorInfo

# Every dtype the format defines, with its bits per value (F4 and F6 values are packed).
DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
_TORCH_NAMES = {
    "BOOL": "bool",
    "F4": "float4_e2m1fn_x2",  # two values per byte: the last dimension halves
    "U8": "uint8",
    "I8": "int8",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "C64": "complex64",
    "F64": "float64",
    "I64": "int64",
    "U64": "uint64",
}
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    code: getattr(torch, name) for code, name in _TORCH_NAMES.items() if hasattr(torch, name)
}
MAX_HEADER = 100 * 1024 * 1024
_MAX_DIM = 2**63 - 1  # torch sizes are int64
_HEAD_READ = 16 * 1024  # first read: the header length and, for most files, the header
_POSITIONAL = hasattr(os, "pread") and hasattr(os, "preadv")  # reads that need no seek


class Header(NamedTuple):
    """A parsed header. Read-only: parsed headers are shared between files (see :func:`parse_header`)."""

    infos: Mapping[str, TensorInfo]
    metadata: Mapping[str, str]
    offsets: Mapping[str, int]  # where each tensor's bytes start in the file


class HeaderError(Exception):
    """A header fault, before the file's path is known; :func:`read_header` adds it."""

    def __init__(self, reason: str, tensor: str | None = None, unsupported: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.tensor, self.unsupported = reason, tensor, unsupported


class _Literal(str):
    """A JSON number that is not an integer (``1.5``, ``1e400``, ``Infinity``), kept as written."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise HeaderError(f"duplicate key {dup!r} in the header (JSON readers keep only one)")
    return out


def read_header(f: BinaryIO, path: Path) -> Header:
    """Read and validate the header of an open (unbuffered) safetensors file."""
    size = os.fstat(f.fileno()).st_size
    # One read gets the length and, for all but huge headers, the whole header.
    head = pread(f, min(size, _HEAD_READ), 0)
    if len(head) < 8:
        raise CorruptWeightsError(path, f"file is {size} bytes, too short for a safetensors header")
    (n,) = struct.unpack_from("<Q", head)
    if n > min(MAX_HEADER, size - 8):
        raise CorruptWeightsError(
            path,
            f"header length {n} exceeds the file ({size} bytes): truncated or not safetensors",
        )
    raw = head[8 : 8 + n]
    if len(raw) < n:
        raw += pread(f, n - len(raw), 8 + len(raw))
    if len(raw) < n:  # the file shrank since fstat
        raise CorruptWeightsError(path, f"header ends after {len(raw)} of its {n} bytes")
    try:
        if n <= _HEAD_READ:
            return parse_header(raw, size)
        return parse_header.__wrapped__(raw, size)  # too big to keep
    except HeaderError as e:
        error = UnsupportedWeightsError if e.unsupported else CorruptWeightsError
        raise error(path, e.reason, tensor=e.tensor) from None


@functools.lru_cache(maxsize=256)
def parse_header(raw: bytes, size: int) -> Header:
    """Parse and validate the JSON header ``raw`` of a file of ``size`` bytes.

    The result depends on nothing else, and the members of a zoo (one architecture, one writer)
    have byte-identical headers: each distinct header is parsed once, not once per file read.

    Raises:
        HeaderError: What is wrong, and the tensor concerned if any.
    """
    header = _load_json(raw)
    meta = _metadata(header.pop("__metadata__", None))
    data_start = 8 + len(raw)
    data_size = size - data_start
    entries = sorted(
        ((*_entry(name, entry, data_size), name) for name, entry in header.items()),
        key=lambda e: (e[0], e[1], e[3]),
    )  # by byte range: the storage order
    _check_tiling(entries, data_size)
    infos = {name: info for _, _, info, name in entries}
    offsets = {name: data_start + start for start, _, _, name in entries}
    layout = meta.get("nwa.layout")
    if layout:
        try:
            order = [k for k in json.loads(layout) if k in infos]
            infos = {k: infos[k] for k in order} | {
                k: v for k, v in infos.items() if k not in order
            }
        except (ValueError, TypeError, RecursionError):
            pass  # a layout hint only: the storage order stands
    return Header(MappingProxyType(infos), MappingProxyType(meta), MappingProxyType(offsets))


def _load_json(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_unique_keys,
            parse_float=_Literal,
            parse_constant=_Literal,
        )
    except UnicodeDecodeError:
        raise HeaderError("header is not UTF-8 text") from None
    except RecursionError:
        raise HeaderError("header nests JSON arrays or objects too deeply") from None
    except json.JSONDecodeError as e:
        raise HeaderError(f"header is not valid JSON ({str(e).splitlines()[0][:120]})") from None
    except ValueError:  # Python refuses to parse integers of more than 4300 digits
        raise HeaderError("header holds an integer too long to parse") from None
    if not isinstance(header, dict):
        raise HeaderError("header is not a JSON object")
    return header


def _metadata(meta: Any) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise HeaderError("header '__metadata__' is not a JSON object")
    bad = next((k for k, v in meta.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise HeaderError(f"header '__metadata__' value of {bad!r} is not a string")
    return meta


def _is_count(x: Any) -> bool:
    return type(x) is int and 0 <= x <= _MAX_DIM  # not bool, not a float literal


def _entry(name: str, entry: Any, data_size: int) -> tuple[int, int, TensorInfo]:
    """``(start, end, info)`` of one header entry, validated."""
    if not isinstance(entry, dict):
        raise HeaderError("header entry is not a JSON object", name)
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        raise HeaderError(f"header entry lacks {', '.join(missing)}", name)
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(code, str) or code not in DTYPE_BITS:
        raise HeaderError(f"unknown dtype {code!r}", name)
    if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
        raise HeaderError(f"shape {_show(shape)} is not a list of integers in 0..2**63-1", name)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise HeaderError(f"data_offsets {_show(offsets)} are not two non-negative integers", name)
    start, end = offsets
    numel = _numel(shape, max(1, DTYPE_BITS[code] // 8), name)
    bits = numel * DTYPE_BITS[code]
    if bits % 8:
        raise HeaderError(f"{numel} values of {code} do not end at a byte boundary", name)
    if end < start or end - start != bits // 8:
        raise HeaderError(
            f"byte range {start}..{end} does not fit shape {_show(shape)} of {code} ({bits // 8} bytes)",
            name,
        )
    if end > data_size:
        raise HeaderError(
            f"data ends at byte {end} but the file holds {data_size}: truncated", name
        )
    return start, end, TensorInfo(name, _torch_shape(code, shape, name), _torch_dtype(code, name))


def _numel(shape: list[int], itemsize: int, name: str) -> int:
    """Number of values; refuses shapes whose extent overflows torch's int64 size arithmetic
    (torch computes strides with empty dimensions counted as 1)."""
    extent, empty = itemsize, False
    for s in shape:
        extent *= max(s, 1)  # each factor < 2**63, and the loop stops past 2**63: stays small
        empty |= s == 0
        if extent > _MAX_DIM:
            raise HeaderError(f"shape {_show(shape)} is too large for torch (int64 overflow)", name)
    return 0 if empty else extent // itemsize


def _show(value: Any, depth: int = 0) -> str:
    """A header value as JSON-like text, short (numbers that are not integers as written)."""
    if isinstance(value, _Literal):
        return str(value)
    if isinstance(value, list):
        if depth > 2:
            return "[...]"
        inner = ", ".join(_show(v, depth + 1) for v in value[:6])
        return f"[{inner}{', ...' if len(value) > 6 else ''}]"
    return json.dumps(value, default=str)[:40]


def _torch_dtype(code: str, name: str) -> torch.dtype:
    dtype = SAFETENSORS_DTYPES.get(code)
    if dtype is None:
        why = (
            f"needs torch.{_TORCH_NAMES[code]}, which torch {torch.__version__} lacks"
            if code in _TORCH_NAMES
            else "has no torch dtype (safe_open cannot read it into torch either)"
        )
        raise HeaderError(f"dtype {code} {why}", name, unsupported=True)
    return dtype


def _torch_shape(code: str, shape: list[int], name: str) -> tuple[int, ...]:
    if code != "F4":
        return tuple(shape)
    # torch's float4_e2m1fn_x2 packs two values per element, along the last dimension.
    if not shape or shape[-1] % 2:
        raise HeaderError(
            f"F4 shape {_show(shape)} cannot be read into torch: its last dimension must be even",
            name,
            unsupported=True,
        )
    return (*shape[:-1], shape[-1] // 2)


def _check_tiling(entries: list[tuple[int, int, TensorInfo, str]], data_size: int) -> None:
    """The byte ranges (sorted) must tile the data exactly, as the format requires."""
    expected, previous = 0, None
    for start, end, _, name in entries:
        if start < expected:
            raise HeaderError(f"byte range {start}..{end} overlaps tensor {previous!r}", name)
        if start > expected:
            raise HeaderError(f"bytes {expected}..{start} before it belong to no tensor", name)
        expected, previous = end, name
    if expected != data_size:
        raise HeaderError(
            f"tensors end at data byte {expected} but the data holds {data_size} bytes: "
            "the rest belongs to no tensor"
        )


def pread(f: BinaryIO, n: int, offset: int) -> bytes:
    """Up to ``n`` bytes of ``f`` from ``offset`` (fewer only at the end of the file)."""
    buf = bytearray(n)
    del buf[readinto_at(f, memoryview(buf), offset) :]
    return bytes(buf)


def readinto_at(f: BinaryIO, buffer: memoryview, offset: int) -> int:
    """Fill ``buffer`` from ``offset`` of ``f``; return the bytes read (short only at the end)."""
    done, total = 0, len(buffer)
    while done < total:
        if _POSITIONAL:  # no seek: safe when threads share the file
            got = os.preadv(f.fileno(), [buffer[done:]], offset + done)
        else:
            f.seek(offset + done)
            got = f.readinto(buffer[done:])
        if not got:
            break
        done += got
    return done
