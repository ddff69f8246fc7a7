"""Model paths in zoo configs: local files and folders, or Hugging Face Hub ids.

Resolution is :mod:`nwa.weights.hub`'s (``hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]``, the Hugging
Face cache and its ``HF_HOME`` / ``HF_HUB_OFFLINE`` / ``HF_TOKEN`` settings); here a failure is a
config error, raised before any training.
"""

from __future__ import annotations

from pathlib import Path

from nwa.errors import ConfigError, HubError
from nwa.weights.hub import PREFIX as HUB
from nwa.weights.hub import model_path as _resolve

__all__ = ["HUB", "model_path"]


def model_path(spec: str, patterns: list[str] | None = None) -> Path:
    """A local file or folder, or a Hub id fetched into the Hugging Face cache.

    Raises:
        ConfigError: A Hub id that cannot be fetched, or a local path that does not exist.
    """
    try:
        path = _resolve(spec, patterns)
    except HubError as e:
        raise ConfigError(str(e)) from None
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    return path
