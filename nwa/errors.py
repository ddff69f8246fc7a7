"""Exception types. Every error a user can cause names the file (and tensor) at fault."""

from __future__ import annotations

from pathlib import Path


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
