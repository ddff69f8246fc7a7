"""Weight file formats: safetensors (memory-mapped), Hugging Face shard folders, and torch
pickles loaded only with ``weights_only=True``."""

from __future__ import annotations

import json
import pickle
import warnings
import weakref
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import torch

from nwa.errors import (
    CorruptWeightsError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)
from nwa.files import NotRegularFileError, open_regular, read_regular, real_location_inside
from nwa.weights.header import SAFETENSORS_DTYPES, Header, read_header, readinto_at
from nwa.weights.source import TensorInfo, WeightSource, convert_into

__all__ = [
    "SAFETENSORS_DTYPES",
    "TORCH_SUFFIXES",
    "SafetensorsFile",
    "ShardedFolder",
    "TorchFile",
    "load_checkpoint",
    "read_safetensors_header",
]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_safetensors_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header without touching the tensor data.

    Checks what a truncated, corrupt or hostile file gets wrong (see :mod:`nwa.weights.header`).

    Returns:
        Tensor infos in storage order, and the ``__metadata__`` strings.
    """
    path = Path(path)
    with _open_file(path) as f:
        header = read_header(f, path)
    return dict(header.infos), dict(header.metadata)


def _open_file(path: Path) -> BinaryIO:
    """Open a weight file for reading, never blocking; the errors name the file."""
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise WeightsNotFoundError(path, "no such file") from None
    except NotRegularFileError as e:
        raise CorruptWeightsError(path, f"is {e.kind}, not a regular file") from None
    except OSError as e:
        raise WeightsNotFoundError(path, f"cannot open: {e.strerror or e}") from None


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
        self._header: Header | None = None
        self._file: BinaryIO | None = None
        self._closer: weakref.finalize | None = None
        self._handle()  # opens the file (reads nothing), or says it is missing

    def _handle(self) -> BinaryIO:
        if self._file is None:
            self._file = _open_file(self.path)  # closed in close()
            # A source dropped without close() still releases its handle, without a warning.
            self._closer = weakref.finalize(self, self._file.close)
        return self._file

    def _parsed(self) -> Header:
        if self._header is None:
            self._header = read_header(self._handle(), self.path)
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
            convert_into(out, self._read(name), self.path, name)
        return out

    def _read_bytes(self, name: str, out: torch.Tensor) -> None:
        """Read the stored bytes of ``name`` into ``out`` (contiguous, of its dtype and size)."""
        nbytes = out.numel() * out.element_size()
        if nbytes == 0:
            return
        target = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        f, offset = self._handle(), self._parsed().offsets[name]
        try:
            got = readinto_at(f, target, offset)
        except OSError as e:
            raise CorruptWeightsError(self.path, f"cannot read: {e}", tensor=name) from None
        if got < nbytes:
            raise CorruptWeightsError(
                self.path, f"file ended after {got} of the tensor's {nbytes} bytes", tensor=name
            )
        if out.dtype == torch.bool:
            # Any non-zero byte is True; store 1 so torch's kernels (which assume 0/1) agree.
            out.view(torch.uint8).clamp_(max=1)

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


def load_checkpoint(path: str | Path) -> object:
    """Load a torch checkpoint (state dict, Lightning checkpoint) with ``weights_only=True``.

    Every place nwa reads a checkpoint goes through here, so a hostile file is refused the
    same way everywhere: nothing in it runs, and the error is one line naming the file.

    Raises:
        WeightsNotFoundError: No such file.
        CorruptWeightsError: Not a regular file, or not a readable checkpoint.
        UnsafeCheckpointError: The pickle asks for code (refused unexecuted).
    """
    path = Path(path)
    with _open_file(path):  # exists and is a regular file: torch.load must not block on a FIFO
        pass
    mmap = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write; the errors below say more.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        reason = _unpickling_reason(str(e))
        if "GLOBAL" not in reason and not mmap:
            # Refused for an opcode: either garbage, or a real pickle (e.g. protocol 4+
            # framing) whose imports parsing shows without running anything.
            imports = _pickle_imports(path)
            if imports is None:
                raise CorruptWeightsError(path, f"not a valid pickle ({reason})") from None
            if imports:
                reason = f"it imports {', '.join(imports[:3])}"
        raise UnsafeCheckpointError(
            path,
            f"refused to unpickle: it asks for code that weights-only loading forbids ({reason})",
        ) from None
    except Exception as e:  # garbage makes torch.load raise KeyError, RuntimeError, EOFError...
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise CorruptWeightsError(
            path, f"not a readable torch checkpoint ({e.__class__.__name__}: {first})"
        ) from None


class TorchFile(WeightSource):
    """A ``.pt``/``.pth``/``.bin`` state dict, loaded with ``weights_only=True`` (memory-mapped
    when the file is in the zip format). A pickle that would run code is refused, unexecuted.

    A checkpoint that wraps its weights (``{"state_dict": ...}`` or ``{"model": ...}``) is
    unwrapped; non-tensor entries are dropped.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        obj = load_checkpoint(self.path)
        if isinstance(obj, Mapping):
            for key in ("state_dict", "model", "module"):
                if isinstance(obj.get(key), Mapping):
                    obj = obj[key]
                    break
        try:
            self._tensors = _flatten_state(obj)
        except RecursionError:  # a container holding itself, or nested thousands deep
            raise CorruptWeightsError(self.path, "nests its containers too deeply") from None
        if not self._tensors:
            raise CorruptWeightsError(self.path, "holds no tensors")
        self._infos = {k: TensorInfo(k, tuple(v.shape), v.dtype) for k, v in self._tensors.items()}

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def _read(self, name: str) -> torch.Tensor:
        return self._tensors[name]


class ShardedFolder(WeightSource):
    """A Hugging Face model folder: one safetensors file, or shards with their index JSON.

    Every shard is opened (its file, not its data) when the folder is; a shard's header and
    tensors are read only when one of its tensors is asked for.

    Args:
        path: The folder.
        index_file: Its ``*.safetensors.index.json``.
        within: A real folder every shard must really lie in (symlinks followed), if given.
    """

    def __init__(self, path: str | Path, index_file: Path, within: Path | None = None) -> None:
        self.path = Path(path)
        weight_map = _weight_map(index_file)
        self._shards: dict[str, SafetensorsFile] = {}
        for f in sorted(set(weight_map.values())):
            shard = self.path / f
            if not shard.exists():
                raise WeightsNotFoundError(shard, f"shard listed in {index_file.name} is missing")
            outside = None if within is None else real_location_inside(shard, within)
            if outside is not None:
                raise CorruptWeightsError(shard, f"resolves to {outside}, outside {within}")
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


def _weight_map(index_file: Path) -> dict[str, str]:
    """The ``weight_map`` of a shard index: tensor name -> shard file beside the index."""
    try:
        index = json.loads(read_regular(index_file, 64 * 1024 * 1024))
        weight_map = index["weight_map"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        weight_map = None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CorruptWeightsError(
            index_file, "not a valid shard index (needs a 'weight_map' of tensor -> file names)"
        )
    for name, f in weight_map.items():
        # Shards live beside the index (in a Hugging Face cache, as links into its blobs).
        if not f or Path(f).is_absolute() or ".." in Path(f).parts or "\0" in f:
            raise CorruptWeightsError(
                index_file, f"shard {f!r} is not a file name beside the index", tensor=name
            )
    return weight_map
