"""A Hugging Face cache written the way ``huggingface_hub`` writes it, for offline tests.

``models--ORG--NAME/refs/<branch or tag>`` holds a commit hash; ``snapshots/<hash>/<path>`` are
relative symlinks into ``blobs/<sha256 of the content>``, shared between snapshots.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save


def safetensors_bytes(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> bytes:
    return save(tensors, metadata=metadata)


def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def cache_repo(
    cache: Path, repo_id: str, files: dict[str, bytes], refs: tuple[str, ...] = ("main",)
) -> str:
    """Add one commit of ``repo_id`` holding ``files`` (repo path -> content); point ``refs`` at it.

    Returns:
        The commit hash (40 hex digits, derived from the content).
    """
    entry = cache / ("models--" + repo_id.replace("/", "--"))
    digest = hashlib.sha1(
        repr(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())).encode()
    )
    commit = digest.hexdigest()
    (entry / "blobs").mkdir(parents=True, exist_ok=True)
    (entry / "refs").mkdir(exist_ok=True)
    snapshot = entry / "snapshots" / commit
    for rel, content in files.items():
        blob = entry / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    for ref in refs:
        (entry / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (entry / "refs" / ref).write_text(commit)  # the hub writes no newline
    return commit


def add_repo(cache: Path, repo_id: str, files: Path) -> Path:
    """Put a folder's files into ``cache`` as the ``main`` snapshot of ``repo_id``; return it."""
    content = {
        str(p.relative_to(files)): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()
    }
    commit = cache_repo(cache, repo_id, content)
    return cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / commit


def use_offline_cache(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """Point ``huggingface_hub`` at ``cache`` with downloads disabled (its settings are read at
    import, so the module constants are patched as well as the environment)."""
    from huggingface_hub import constants

    for name, value in (("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
