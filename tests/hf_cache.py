"""A Hugging Face cache laid out as ``huggingface_hub`` lays it out, for offline Hub-id tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def add_repo(
    cache: Path, repo_id: str, files: Path, commit: str = "0123456789abcdef" * 2 + "01234567"
) -> Path:
    """Put a folder's files into ``cache`` as the ``main`` snapshot of ``repo_id``; return it."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    shutil.copytree(files, snapshot)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def use_offline_cache(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """Point ``huggingface_hub`` at ``cache`` with downloads disabled (its settings are read at
    import, so the module constants are patched as well as the environment)."""
    from huggingface_hub import constants

    for name, value in (("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
