"""What the MODEL arguments of ``nwa.predict`` and ``nwa.diagnose`` name.

A MODEL is a weights file (safetensors, or a torch state dict loaded with ``weights_only``), a
model folder (Hugging Face layout, single or sharded, or a cache entry), a LoRA file or folder, a
Hugging Face Hub id (when :func:`~nwa.weights.io.open_weights` resolves it), or a zoo directory:
an nwa zoo or any public layout an adapter reads, standing for all its models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the readers import torch; they are imported when a model is opened
    from nwa.weights.source import WeightSource


def open_weights(location: str) -> WeightSource:
    """:func:`nwa.weights.io.open_weights`, imported on first use."""
    from nwa.weights.io import open_weights as open_any

    return open_any(location)


@dataclass
class ModelRef:
    """One model to read: a display name, where it is, and how to open it.

    Attributes:
        name: What tables call it (the argument as given, or the zoo member's id).
        location: Its file or folder (or Hub id), as a string.
        opener: Opens its weights lazily.
        row: The zoo's manifest row, for zoo members (labels, split, tree).
        zoo: The zoo, for zoo members.
    """

    name: str
    location: str
    opener: Callable[[], WeightSource]
    row: Mapping[str, Any] | None = None
    zoo: Any = field(default=None, repr=False)

    def open(self) -> WeightSource:
        return self.opener()


def is_zoo(path: Path) -> bool:
    """Whether a folder is a zoo (nwa's ``zoo.json`` or a layout an adapter detects)."""
    if not path.is_dir():
        return False  # decided without importing the zoo code (and pandas)
    from nwa.zoo.adapters import detect_adapter
    from nwa.zoo.manifest import META

    return (path / META).is_file() or detect_adapter(path) is not None


def zoo_members(path: Path, keep: Callable[[Any], bool] | None = None) -> list[ModelRef]:
    """Every model of a zoo directory (those ``keep`` accepts, given the manifest table), in
    manifest order."""
    from nwa.zoo.adapters import open_zoo

    zoo = open_zoo(path)
    table = zoo.table if keep is None else zoo.table[keep(zoo.table)]
    refs = []
    for row in table.to_dict("records"):
        refs.append(
            ModelRef(
                name=str(row["id"]),
                location=str(zoo.path_of(row)),
                opener=lambda row=row: zoo.open_model(row),
                row=row,
                zoo=zoo,
            )
        )
    return refs


def expand(models: Sequence[str], keep: Callable[[Any], bool] | None = None) -> list[ModelRef]:
    """The models the arguments name, zoos expanded into their members (filtered by ``keep``).

    Nothing is opened here except zoo manifests; a missing file fails when it is opened, with
    one line naming it.
    """
    refs: list[ModelRef] = []
    for arg in models:
        path = Path(arg).expanduser()
        if is_zoo(path):
            refs.extend(zoo_members(path, keep))
        else:
            refs.append(ModelRef(arg, arg, lambda arg=arg: open_weights(arg)))
    return refs
