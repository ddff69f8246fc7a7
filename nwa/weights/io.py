"""Safe, lazy reads of model weights: :func:`open_weights` opens any supported format.

Every format is read through one interface, :class:`WeightSource`: list tensor names, shapes and
dtypes without reading data, and read one tensor without reading the others. Pickled checkpoints
are only ever loaded with ``torch.load(weights_only=True)``. Paths may be Hugging Face Hub ids
(:mod:`nwa.weights.hub`).
"""

from __future__ import annotations

import os
import re
import stat
import struct
from pathlib import Path

from nwa.errors import CorruptWeightsError, WeightsNotFoundError
from nwa.files import file_kind, open_regular, read_regular, real_location_inside
from nwa.weights.formats import (
    SAFETENSORS_DTYPES,
    TORCH_SUFFIXES,
    SafetensorsFile,
    ShardedFolder,
    TorchFile,
    read_safetensors_header,
)
from nwa.weights.hub import model_path
from nwa.weights.lora import LoraDelta, find_lora_pairs
from nwa.weights.source import TensorInfo, WeightSource

__all__ = [
    "SAFETENSORS_DTYPES",
    "LoraDelta",
    "SafetensorsFile",
    "ShardedFolder",
    "TensorInfo",
    "TorchFile",
    "WeightSource",
    "find_lora_pairs",
    "open_weights",
    "read_safetensors_header",
]

_SNAPSHOT_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,127}")
LORA_FILE_NAMES = (
    "pytorch_lora_weights.safetensors",
    "adapter_model.safetensors",
    "pytorch_lora_weights.bin",
    "adapter_model.bin",
)


def cache_snapshot(folder: Path) -> Path | None:
    """The snapshot ``refs/main`` names in a Hugging Face cache entry ``models--ORG--NAME``;
    ``None`` when the entry has no ``refs/main``.

    Raises:
        CorruptWeightsError: ``refs/main`` is not a commit-like name.
        WeightsNotFoundError: It names a snapshot that is absent.
    """
    ref = folder / "refs" / "main"
    if not ref.is_file():
        return None
    try:
        sha = read_regular(ref, 4096).decode("ascii").strip()
    except (OSError, ValueError):
        sha = ""
    if not _SNAPSHOT_NAME.fullmatch(sha):
        raise CorruptWeightsError(ref, "does not hold a commit hash")
    snap = folder / "snapshots" / sha
    if not snap.is_dir():
        raise WeightsNotFoundError(folder, f"refs/main points at missing snapshot {sha}")
    return snap


def _resolve_hf_cache(folder: Path) -> Path:
    """``models--ORG--NAME`` (a Hugging Face cache entry) -> its ``snapshots/<sha>`` folder."""
    snap = cache_snapshot(folder)
    if snap is not None:
        return snap
    snaps = (
        sorted(p for p in (folder / "snapshots").glob("*") if p.is_dir())
        if (folder / "snapshots").is_dir()
        else []
    )
    return snaps[-1] if len(snaps) == 1 else folder


def _check_within(path: Path, within: Path | None) -> Path:
    """``path``, if its real location lies inside ``within`` (when given)."""
    outside = None if within is None else real_location_inside(path, within)
    if outside is not None:
        raise CorruptWeightsError(path, f"resolves to {outside}, outside {within}")
    return path


def _open_folder(folder: Path, within: Path | None = None) -> WeightSource:
    folder = _check_within(_resolve_hf_cache(folder), within)
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        return ShardedFolder(folder, _check_within(index[0], within), within)
    for name in ("model.safetensors", *LORA_FILE_NAMES, "pytorch_model.bin"):
        if (folder / name).is_file():
            return _open_file(_check_within(folder / name, within))
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return SafetensorsFile(_check_within(found[0], within))
    what = f"{len(found)} safetensors files and no index" if found else "no weight file"
    raise WeightsNotFoundError(
        folder, f"folder holds {what} (expected model.safetensors, an index, or a LoRA file)"
    )


def _open_file(path: Path) -> WeightSource:
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    if path.suffix in TORCH_SUFFIXES:
        return TorchFile(path)
    with open_regular(path) as f:
        head = f.read(8)
        size = os.fstat(f.fileno()).st_size
    if len(head) == 8 and struct.unpack("<Q", head)[0] < size:
        return SafetensorsFile(path)
    raise CorruptWeightsError(
        path,
        f"unknown weight format {path.suffix!r} (use .safetensors, {', '.join(TORCH_SUFFIXES)})",
    )


def open_weights(
    path: str | Path, lora: bool | None = None, within: Path | None = None
) -> WeightSource:
    """Open a model's weights, whatever the format, without reading tensor data.

    Args:
        path: A ``.safetensors`` file, a ``.pt``/``.pth``/``.bin``/``.ckpt`` state dict, a Hugging
            Face model folder (single file or sharded with an index; a cache entry
            ``models--ORG--NAME`` resolves to its snapshot), a LoRA adapter file or folder, or a
            Hub id ``hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]`` (a bare ``ORG/NAME`` too, when no
            such local path exists), fetched into or read from the Hugging Face cache.
        lora: ``True`` exposes LoRA layers as dense deltas ``B @ A``; ``False`` exposes the raw
            tensors; ``None`` chooses the delta view when the file holds LoRA factor pairs.
        within: For a folder, a real (symlink-free) folder that every file read from it must
            really lie in; a zoo passes its own folder.

    Raises:
        WeightsNotFoundError: The path does not exist or holds no weights.
        HubError: A Hub id that cannot be resolved (missing, gated, not cached while offline).
        CorruptWeightsError: The file is truncated, malformed, or not a regular file.
        UnsupportedWeightsError: A valid file holding a dtype torch cannot represent.
        UnsafeCheckpointError: A pickle would run code; refused unexecuted.
    """
    path = path if isinstance(path, Path) else model_path(path)
    path = path.expanduser()
    try:
        mode = path.stat().st_mode  # one stat, on the path of every model read
    except (FileNotFoundError, NotADirectoryError):
        raise WeightsNotFoundError(path, "no such file or folder") from None
    except OSError as e:  # permission denied on a folder above, a name too long, a link loop
        raise WeightsNotFoundError(path, f"cannot open: {e.strerror or e}") from None
    except ValueError:  # a NUL byte in the name
        raise WeightsNotFoundError(path, "not a valid path") from None
    if stat.S_ISDIR(mode):
        source = _open_folder(path, within)
    elif stat.S_ISREG(mode):
        source = _open_file(path)
    else:
        raise CorruptWeightsError(path, f"is {file_kind(mode)}, not a regular file")
    if lora is False:
        return source
    if lora is None and not find_lora_pairs(source.names()):
        return source
    return LoraDelta(source)
