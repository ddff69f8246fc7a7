"""Weight file formats: safetensors (memory-mapped), Hugging Face shard folders, and torch
pickles loaded only with ``weights_only=True``."""

from __future__ import annotations

import functools
import json
import os
import pickle
import struct
import warnings
import weakref
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO, NamedTuple

import torch

from nwa.errors import CorruptWeightsError, UnsafeCheckpointError, WeightsNotFoundError
from nwa.weights.source import TensorInfo, WeightSource

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", torch.uint8),
    "F8_E5M2": getattr(torch, "float8_e5m2", torch.uint8),
}
_MAX_HEADER = 100 * 1024 * 1024
_HEAD_READ = 16 * 1024  # first read: the header length and, for most files, the header
_POSITIONAL = hasattr(os, "pread") and hasattr(os, "preadv")  # reads that need no seek
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_safetensors_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header without touching the tensor data.

    Checks what a truncated or corrupt file gets wrong: the header length, the JSON, the dtypes,
    and that every tensor's byte range matches its shape and lies inside the file.

    Returns:
        Tensor infos in storage order, and the ``__metadata__`` strings.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(path, "no such file")
    with open(path, "rb", buffering=0) as f:
        header = _read_header(f, path)
    return dict(header.infos), dict(header.metadata)


class _Header(NamedTuple):
    infos: Mapping[str, TensorInfo]  # read-only: parsed headers are shared (see _parse_header)
    metadata: Mapping[str, str]
    offsets: Mapping[str, int]  # where each tensor's bytes start in the file


class _HeaderError(Exception):
    def __init__(self, reason: str, tensor: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.tensor = reason, tensor


def _read_header(f: BinaryIO, path: Path) -> _Header:
    """Read and validate the header of an open (unbuffered) safetensors file."""
    size = os.fstat(f.fileno()).st_size
    # One read gets the length and, for all but huge headers, the whole header.
    head = _pread(f, min(size, _HEAD_READ), 0)
    if len(head) < 8:
        raise CorruptWeightsError(path, f"file is {size} bytes, too short for a safetensors header")
    (n,) = struct.unpack_from("<Q", head)
    if n > min(_MAX_HEADER, size - 8):
        raise CorruptWeightsError(
            path,
            f"header length {n} exceeds the file ({size} bytes): truncated or not safetensors",
        )
    raw = head[8 : 8 + n]
    if len(raw) < n:
        raw += _pread(f, n - len(raw), 8 + len(raw))
    if len(raw) < n:  # the file shrank since fstat
        raise CorruptWeightsError(path, f"header ends after {len(raw)} of its {n} bytes")
    try:
        if n <= _HEAD_READ:
            return _parse_header(raw, size)
        return _parse_header.__wrapped__(raw, size)  # too big to keep
    except _HeaderError as e:
        raise CorruptWeightsError(path, e.reason, tensor=e.tensor) from None


@functools.lru_cache(maxsize=256)
def _parse_header(raw: bytes, size: int) -> _Header:
    """Parse and validate the JSON header ``raw`` of a file of ``size`` bytes.

    The result depends on nothing else, and the members of a zoo (one architecture, one writer)
    have byte-identical headers: each distinct header is parsed once, not once per file read.
    """
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _HeaderError(f"header is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise _HeaderError("header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise _HeaderError("header '__metadata__' is not a JSON object")
    entries = []
    data_start = 8 + len(raw)
    data_size = size - data_start
    for name, entry in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _HeaderError("malformed header entry", name) from None
        numel = 1
        for s in shape:
            numel *= s
        if end - start != numel * dtype.itemsize or start < 0:
            raise _HeaderError(f"byte range {start}..{end} does not fit shape {list(shape)}", name)
        if end > data_size:
            raise _HeaderError(
                f"data ends at byte {end} but the file holds {data_size}: truncated", name
            )
        entries.append((start, name, TensorInfo(name, shape, dtype)))
    entries.sort()
    infos = {name: info for _, name, info in entries}
    offsets = {name: data_start + start for start, name, _ in entries}
    layout = meta.get("nwa.layout")
    if layout:
        try:
            order = [k for k in json.loads(layout) if k in infos]
            infos = {k: infos[k] for k in order} | {
                k: v for k, v in infos.items() if k not in order
            }
        except (json.JSONDecodeError, TypeError):
            pass
    return _Header(
        MappingProxyType(infos),
        MappingProxyType({str(k): str(v) for k, v in meta.items()}),
        MappingProxyType(offsets),
    )


def _pread(f: BinaryIO, n: int, offset: int) -> bytes:
    """Up to ``n`` bytes of ``f`` from ``offset`` (fewer only at the end of the file)."""
    buf = bytearray(n)
    del buf[_readinto_at(f, memoryview(buf), offset) :]
    return bytes(buf)


def _readinto_at(f: BinaryIO, buffer: memoryview, offset: int) -> int:
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


class SafetensorsFile(WeightSource):
    """One ``.safetensors`` file; reading a tensor reads that tensor's bytes and nothing else.

    Construction opens the file and reads nothing. The header is read and validated on first
    need, through that handle; each tensor is then one positioned read of its byte range,
    straight into the returned tensor (or into the caller's, with :meth:`read_into`), which
    owns its memory. Tensors are not memory-mapped: faulting a map in page by page makes the
    kernel read ahead megabytes around each fault on a cold page cache, many times what one
    small tensor needs.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = path if isinstance(path, Path) else Path(path)
        self._header: _Header | None = None
        self._file: BinaryIO | None = None
        self._closer: weakref.finalize | None = None
        self._handle()  # opens the file (reads nothing), or says it is missing

    def _handle(self) -> BinaryIO:
        if self._file is None:
            try:
                self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise WeightsNotFoundError(self.path, "no such file") from None
            # A source dropped without close() still releases its handle, without a warning.
            self._closer = weakref.finalize(self, self._file.close)
        return self._file

    def _parsed(self) -> _Header:
        if self._header is None:
            self._header = _read_header(self._handle(), self.path)
        return self._header

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._parsed().infos

    def metadata(self) -> dict[str, str]:
        return dict(self._parsed().metadata)

    def _read(self, name: str) -> torch.Tensor:
        info = self.infos()[name]
        out = torch.empty(info.shape, dtype=info.dtype)
        self._read_bytes(name, out)
        return out

    def read_into(self, name: str, out: torch.Tensor) -> torch.Tensor:
        info = self._check_out(name, out)
        if out.dtype == info.dtype and out.is_contiguous() and out.device.type == "cpu":
            self._read_bytes(name, out)
        else:
            out.copy_(self._read(name))
        return out

    def _read_bytes(self, name: str, out: torch.Tensor) -> None:
        """Read the stored bytes of ``name`` into ``out`` (contiguous, of its dtype and size)."""
        nbytes = out.numel() * out.element_size()
        if nbytes == 0:
            return
        target = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        f, offset = self._handle(), self._parsed().offsets[name]
        try:
            got = _readinto_at(f, target, offset)
        except OSError as e:
            raise CorruptWeightsError(self.path, f"cannot read: {e}", tensor=name) from None
        if got < nbytes:
            raise CorruptWeightsError(
                self.path, f"file ended after {got} of the tensor's {nbytes} bytes", tensor=name
            )

    def close(self) -> None:
        if self._closer is not None:
            self._closer()  # closes the file once, whoever asks first
        self._file = self._closer = None


def _unpickling_reason(message: str) -> str:
    """The informative line of a weights-only refusal (torch puts generic advice first)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln:
            return ln.split("WeightsUnpickler error:")[-1].strip() or ln
    generic = ("Weights only load failed", "Please file an issue", "Check the documentation")
    specific = [ln for ln in lines if not ln.startswith(generic)]
    return specific[0] if specific else "unsupported pickle content"


def _pickle_imports(path: Path) -> list[str] | None:
    """The globals the file's first pickle imports, found by parsing its opcodes (nothing runs).

    Returns ``None`` when the bytes are not a pickle at all.
    """
    import pickletools

    found: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # pickletools raises ValueError and others on non-pickle bytes
        return None
    return list(dict.fromkeys(found))


def _flatten_state(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(_flatten_state(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


class TorchFile(WeightSource):
    """A ``.pt``/``.pth``/``.bin`` state dict, loaded with ``weights_only=True`` (memory-mapped
    when the file is in the zip format). A pickle that would run code is refused, unexecuted.

    A checkpoint that wraps its weights (``{"state_dict": ...}`` or ``{"model": ...}``) is
    unwrapped; non-tensor entries are dropped.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsNotFoundError(self.path, "no such file")
        obj = self._load()
        if isinstance(obj, Mapping):
            for key in ("state_dict", "model", "module"):
                if isinstance(obj.get(key), Mapping):
                    obj = obj[key]
                    break
        self._tensors = _flatten_state(obj)
        if not self._tensors:
            raise CorruptWeightsError(self.path, "holds no tensors")
        self._infos = {k: TensorInfo(k, tuple(v.shape), v.dtype) for k, v in self._tensors.items()}

    def _load(self) -> object:
        mmap = zipfile.is_zipfile(self.path)
        try:
            with warnings.catch_warnings():
                # torch warns about pickle protocols it did not write; the errors below say more.
                warnings.filterwarnings("ignore", message=".*pickle protocol.*")
                return torch.load(self.path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            reason = _unpickling_reason(str(e))
            if "GLOBAL" not in reason and not mmap:
                # Refused for an opcode: either garbage, or a real pickle (e.g. protocol 4+
                # framing) whose imports parsing shows without running anything.
                imports = _pickle_imports(self.path)
                if imports is None:
                    raise CorruptWeightsError(self.path, f"not a valid pickle ({reason})") from None
                if imports:
                    reason = f"it imports {', '.join(imports[:3])}"
            raise UnsafeCheckpointError(
                self.path,
                f"refused to unpickle: it asks for code that weights-only loading forbids ({reason})",
            ) from None
        except Exception as e:  # garbage makes torch.load raise KeyError, RuntimeError, EOFError...
            first = (str(e).strip().splitlines() or [""])[0][:120]
            raise CorruptWeightsError(
                self.path, f"not a readable torch checkpoint ({e.__class__.__name__}: {first})"
            ) from None

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def _read(self, name: str) -> torch.Tensor:
        return self._tensors[name]


class ShardedFolder(WeightSource):
    """A Hugging Face model folder: one safetensors file, or shards with their index JSON.

    Every shard is opened (its file, not its data) when the folder is; a shard's header and
    tensors are read only when one of its tensors is asked for.
    """

    def __init__(self, path: str | Path, index_file: Path) -> None:
        self.path = Path(path)
        try:
            index = json.loads(index_file.read_text())
            weight_map: dict[str, str] = index["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CorruptWeightsError(
                index_file, "not a valid shard index (needs a 'weight_map')"
            ) from None
        self._shards: dict[str, SafetensorsFile] = {}
        for f in sorted(set(weight_map.values())):
            shard = self.path / f
            if not shard.is_file():
                raise WeightsNotFoundError(shard, f"shard listed in {index_file.name} is missing")
            self._shards[f] = SafetensorsFile(shard)
        self._where = {}
        self._infos = {}
        for name, f in weight_map.items():
            info = self._shards[f].infos().get(name)
            if info is None:
                raise CorruptWeightsError(
                    self._shards[f].path, "tensor listed in the index is absent", tensor=name
                )
            self._where[name] = f
            self._infos[name] = info

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def _read(self, name: str) -> torch.Tensor:
        return self._shards[self._where[name]].get(name)

    def read_into(self, name: str, out: torch.Tensor) -> torch.Tensor:
        self._check_out(name, out)
        return self._shards[self._where[name]].read_into(name, out)

    def metadata(self) -> dict[str, str]:
        return next(iter(self._shards.values())).metadata() if self._shards else {}

    def close(self) -> None:
        for s in self._shards.values():
            s.close()
