"""Exception types. Every error a user can cause names the file (and tensor) at fault."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class NwaError(Exception):
    """Base class of every error nwa raises on purpose."""


class WeightsError(NwaError):
    """A problem with one weight file or one tensor in it.

    Args:
        path: The file (or folder) at fault.
        reason: What is wrong, in one sentence.
        tensor: The tensor at fault, when there is one.
    """

    def __init__(self, path: str | Path, reason: str, tensor: str | None = None) -> None:
        self.path = Path(path)
        self.reason = reason
        self.tensor = tensor
        where = f"{self.path}" + (f" [{tensor}]" if tensor else "")
        super().__init__(f"{where}: {reason}")


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """The weight file or folder does not exist, or holds no known weight format."""


class CorruptWeightsError(WeightsError):
    """The file exists but is truncated, malformed, or not the format its name says."""


class UnsafeCheckpointError(WeightsError):
    """A pickled checkpoint asks to run code; it was refused and nothing of it executed."""


class UnsupportedWeightsError(WeightsError):
    """The file is valid but holds what torch cannot represent (e.g. a 6-bit float dtype)."""


class HubError(WeightsNotFoundError):
    """A Hugging Face Hub id could not be resolved: missing, gated, or not cached while offline.

    ``path`` is the id as given (``hf-hub:ORG/NAME[@REVISION]``).
    """


class LayerNotFoundError(WeightsError):
    """A requested layer is absent from a model."""


class ShapeMismatchError(WeightsError):
    """A tensor's shape differs from the one the zoo (or the request) requires."""


class NonFiniteWeightsError(WeightsError):
    """A tensor holds NaN or Inf values."""


class ZooError(NwaError):
    """A zoo directory or its manifest is invalid."""


class ConfigError(NwaError):
    """A configuration value is invalid; raised before any work starts."""


class GraphBuildError(WeightsError):
    """A model's tensors do not form a network that can be read as a neural graph."""


def exit_on_error(run: Callable[..., Any], *args: Any) -> Any:
    """``run(*args)``, where an :class:`NwaError` ends the process with one line ``nwa: ...`` on
    stderr and status 2 (a command's user error, never a traceback)."""
    try:
        return run(*args)
    except NwaError as e:
        print(f"nwa: {e}", file=sys.stderr)
        raise SystemExit(2) from None
