"""Safe, lazy reads of model weights: :func:`open_weights` opens any supported format.

Every format is read through one interface, :class:`WeightSource`: list tensor names, shapes and
dtypes without reading data, and read one tensor without reading the others. Pickled checkpoints
are only ever loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from nwa.errors import CorruptWeightsError, WeightsNotFoundError
from nwa.weights.formats import (
    SAFETENSORS_DTYPES,
    TORCH_SUFFIXES,
    SafetensorsFile,
    ShardedFolder,
    TorchFile,
    read_safetensors_header,
)
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

LORA_FILE_NAMES = (
    "pytorch_lora_weights.safetensors",
    "adapter_model.safetensors",
    "pytorch_lora_weights.bin",
    "adapter_model.bin",
)


def _resolve_hf_cache(folder: Path) -> Path:
    """``models--ORG--NAME`` (a Hugging Face cache entry) -> its ``snapshots/<sha>`` folder."""
    ref = folder / "refs" / "main"
    if ref.is_file():
        snap = folder / "snapshots" / ref.read_text().strip()
        if not snap.is_dir():
            raise WeightsNotFoundError(folder, f"refs/main points at missing snapshot {snap.name}")
        return snap
    snaps = (
        sorted(p for p in (folder / "snapshots").glob("*") if p.is_dir())
        if (folder / "snapshots").is_dir()
        else []
    )
    return snaps[-1] if len(snaps) == 1 else folder


def _open_folder(folder: Path) -> WeightSource:
    folder = _resolve_hf_cache(folder)
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        return ShardedFolder(folder, index[0])
    for name in ("model.safetensors", *LORA_FILE_NAMES, "pytorch_model.bin"):
        if (folder / name).is_file():
            return _open_file(folder / name)
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return SafetensorsFile(found[0])
    what = f"{len(found)} safetensors files and no index" if found else "no weight file"
    raise WeightsNotFoundError(
        folder, f"folder holds {what} (expected model.safetensors, an index, or a LoRA file)"
    )


def _open_file(path: Path) -> WeightSource:
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    if path.suffix in TORCH_SUFFIXES:
        return TorchFile(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) == 8 and struct.unpack("<Q", head)[0] < os.path.getsize(path):
        return SafetensorsFile(path)
    raise CorruptWeightsError(
        path,
        f"unknown weight format {path.suffix!r} (use .safetensors, {', '.join(TORCH_SUFFIXES)})",
    )


def open_weights(path: str | Path, lora: bool | None = None) -> WeightSource:
    """Open a model's weights, whatever the format, without reading tensor data.

    Args:
        path: A ``.safetensors`` file, a ``.pt``/``.pth``/``.bin``/``.ckpt`` state dict, a Hugging
            Face model folder (single file or sharded with an index; a cache entry
            ``models--ORG--NAME`` resolves to its snapshot), or a LoRA adapter file or folder.
        lora: ``True`` exposes LoRA layers as dense deltas ``B @ A``; ``False`` exposes the raw
            tensors; ``None`` chooses the delta view when the file holds LoRA factor pairs.

    Raises:
        WeightsNotFoundError: The path does not exist or holds no weights.
        CorruptWeightsError: The file is truncated or malformed.
        UnsafeCheckpointError: A pickle would run code; refused unexecuted.
    """
    path = (path if isinstance(path, Path) else Path(path)).expanduser()
    try:
        is_dir = stat.S_ISDIR(path.stat().st_mode)  # one stat, on the path of every model read
    except (FileNotFoundError, NotADirectoryError):
        raise WeightsNotFoundError(path, "no such file or folder") from None
    source = _open_folder(path) if is_dir else _open_file(path)
    if lora is False:
        return source
    if lora is None and not find_lora_pairs(source.names()):
        return source
    return LoraDelta(source)
