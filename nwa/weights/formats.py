"""Weight file formats: safetensors (memory-mapped), Hugging Face shard folders, and torch
pickles loaded only with ``weights_only=True``."""

from __future__ import annotations

import json
import pickle
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open

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
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptWeightsError(
                path, f"file is {size} bytes, too short for a safetensors header"
            )
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise CorruptWeightsError(
                path,
                f"header length {n} exceeds the file ({size} bytes): truncated or not safetensors",
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptWeightsError(
            path, f"header is not valid JSON ({e.__class__.__name__})"
        ) from None
    if not isinstance(header, dict):
        raise CorruptWeightsError(path, "header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CorruptWeightsError(path, "header '__metadata__' is not a JSON object")
    entries = []
    data_size = size - 8 - n
    for name, entry in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CorruptWeightsError(path, "malformed header entry", tensor=name) from None
        numel = 1
        for s in shape:
            numel *= s
        if end - start != numel * dtype.itemsize or start < 0:
            raise CorruptWeightsError(
                path, f"byte range {start}..{end} does not fit shape {list(shape)}", tensor=name
            )
        if end > data_size:
            raise CorruptWeightsError(
                path,
                f"data ends at byte {end} but the file holds {data_size}: truncated",
                tensor=name,
            )
        entries.append((start, name, TensorInfo(name, shape, dtype)))
    entries.sort()
    infos = {name: info for _, name, info in entries}
    layout = meta.get("nwa.layout")
    if layout:
        try:
            order = [k for k in json.loads(layout) if k in infos]
            infos = {k: infos[k] for k in order} | {
                k: v for k, v in infos.items() if k not in order
            }
        except (json.JSONDecodeError, TypeError):
            pass
    return infos, {str(k): str(v) for k, v in meta.items()}


class SafetensorsFile(WeightSource):
    """One ``.safetensors`` file, memory-mapped; a read touches only that tensor's bytes.

    The header is parsed and validated on first need: a plain :meth:`get` of a present tensor
    goes straight to the memory map, and only a failed read parses the header to say why.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsNotFoundError(self.path, "no such file")
        self._header: tuple[dict[str, TensorInfo], dict[str, str]] | None = None
        self._handle = None

    def _parsed(self) -> tuple[dict[str, TensorInfo], dict[str, str]]:
        if self._header is None:
            self._header = read_safetensors_header(self.path)
        return self._header

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._parsed()[0]

    def metadata(self) -> dict[str, str]:
        return dict(self._parsed()[1])

    def get(self, name: str) -> torch.Tensor:
        if self._header is not None and name not in self._header[0]:
            raise self._missing(name)
        try:
            if self._handle is None:
                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            return self._handle.get_tensor(name)
        except Exception as e:  # safetensors raises its own untyped errors
            self._parsed()  # raises the precise CorruptWeightsError when the header is at fault
            if name not in self.infos():
                raise self._missing(name) from None
            raise CorruptWeightsError(self.path, f"cannot read: {e}", tensor=name) from None

    def _read(self, name: str) -> torch.Tensor:
        return self.get(name)

    def close(self) -> None:
        self._handle = None


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

    Each shard is opened only when one of its tensors is asked for.
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

    def metadata(self) -> dict[str, str]:
        return next(iter(self._shards.values())).metadata() if self._shards else {}

    def close(self) -> None:
        for s in self._shards.values():
            s.close()
