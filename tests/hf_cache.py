"""A Hugging Face cache written the way ``huggingface_hub`` writes it, for offline tests.

``models--ORG--NAME/refs/<branch or tag>`` holds a commit hash; ``snapshots/<hash>/<path>`` are
relative symlinks into ``blobs/<sha256 of the content>``, shared between snapshots.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

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
