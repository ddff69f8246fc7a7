"""An in-memory and on-disk cache of text embeddings, keyed by (model id, kind, text).

Each entry is one small safetensors file ``<cache_dir>/<model>/<kind>/<sha1(text)>.safetensors``
holding tensor ``"value"`` and the model id and text in its metadata. Files are written atomically,
so concurrent zoo shards sharing a cache directory never read a partial entry; two shards computing
the same entry both write the same bytes and the last rename wins.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nwa.atomic import atomic_path


def default_cache_dir() -> Path:
    """``$NWA_CACHE_DIR/text``, else ``~/.cache/nwa/text``."""
    root = os.environ.get("NWA_CACHE_DIR") or Path.home() / ".cache" / "nwa"
    return Path(root).expanduser() / "text"


def _slug(text: str) -> str:
    """A filesystem-safe folder name for a model id, unique thanks to a short hash suffix."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60]
    return f"{readable}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


class EmbeddingCache:
    """Cache of per-text tensors.

    Args:
        cache_dir: Folder for the on-disk cache; ``None`` keeps entries in memory only.
    """

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self._memory: dict[tuple[str, str, str], torch.Tensor] = {}

    def _file(self, model_id: str, kind: str, text: str) -> Path:
        assert self.dir is not None
        name = hashlib.sha1(text.encode()).hexdigest()
        return self.dir / _slug(model_id) / kind / f"{name}.safetensors"

    def get(self, model_id: str, kind: str, text: str) -> torch.Tensor | None:
        """The cached tensor, from memory or disk, or ``None``."""
        key = (model_id, kind, text)
        if key in self._memory:
            return self._memory[key]
        if self.dir is None:
            return None
        path = self._file(model_id, kind, text)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                value = f.get_tensor("value")
        except Exception:  # an unreadable entry is recomputed and overwritten, never fatal
            return None
        if meta.get("text") != text or meta.get("model_id") != model_id:
            return None
        self._memory[key] = value
        return value

    def put(self, model_id: str, kind: str, text: str, value: torch.Tensor) -> None:
        """Store a tensor in memory and (atomically) on disk."""
        value = value.detach().to("cpu", torch.float32).contiguous()
        self._memory[(model_id, kind, text)] = value
        if self.dir is None:
            return
        with atomic_path(self._file(model_id, kind, text)) as tmp:
            save_file({"value": value}, str(tmp), metadata={"model_id": model_id, "text": text})

    def clear_memory(self) -> None:
        """Forget the in-memory entries (the disk entries stay)."""
        self._memory.clear()
