"""The protocol every zoo recipe (vision fine-tunes, diffusion LoRAs, ...) implements.

A recipe turns a config into a deterministic plan of :class:`Job` s, roots first. The builder
(:mod:`nwa.zoo.build`) runs the plan, possibly split over shards, skipping finished jobs. Roots are
stored under ``roots/`` and referenced from ``ZooMeta.trees``; members are manifest rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from nwa.zoo.manifest import ZooWriter


@dataclass(frozen=True)
class Job:
    """One model to train.

    Attributes:
        id: Model id (also its file stem); unique in the zoo.
        kind: ``root`` (pretrained or random-init tree root) or ``member`` (fine-tune of a root).
        tree: Tree id.
        parent: Root id for members, ``""`` for roots.
        split: Manifest split for members (``""`` for roots).
        params: Everything needed to train it, sampled at plan time (seed, hyperparameters,
            classes or concept), so any shard reproduces it.
        outputs: For a member that writes several manifest rows (one training run kept at
            several checkpoints), their ids in writing order, ending with ``id``; empty for one
            row. The job is finished when its last row exists.
    """

    id: str
    kind: str
    tree: str
    parent: str = ""
    split: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()

    @property
    def rows(self) -> tuple[str, ...]:
        """The ids of the manifest rows this job writes (its own id for a plain member)."""
        return self.outputs or (self.id,)


class Recipe(ABC):
    """A family of models in a zoo. Subclasses are configured by constructor arguments (YAML).

    Attributes:
        device: Where :meth:`run` trains. The builder makes CPU training bit-for-bit
            reproducible; a recipe that trains on a GPU sets this (``"cuda"``), and the zoo's
            ``build.deterministic`` then says its files agree only to a tolerance.
    """

    device: str = "cpu"

    @abstractmethod
    def validate(self) -> None:
        """Raise :class:`nwa.errors.ConfigError` on a bad value, before any training."""

    @abstractmethod
    def plan(self, seed: int) -> list[Job]:
        """The jobs, roots before their members; the same seed gives the same plan."""

    @abstractmethod
    def classes(self) -> list[str]:
        """Class or concept names this recipe's labels index into."""

    @abstractmethod
    def run(
        self, job: Job, writer: ZooWriter, root: dict[str, torch.Tensor] | None
    ) -> dict[str, Any]:
        """Train one job and save its weights with ``writer``.

        Args:
            job: The job.
            writer: Saves weights (``writer.save_weights`` for safetensors, or any file under
                ``writer.root``).
            root: The parent root's tensors for members, ``None`` for roots.

        Returns:
            For a member: its manifest row (``id``, ``path``, ``tree``, ``parent``, ``arch``,
            ``split``, labels ...), or a list of rows in the order of ``job.outputs``. For a root: ``{"path": ..., "arch": ..., **info}`` for
            ``ZooMeta.trees``.
        """

    def label_schema(self) -> dict[str, str]:
        """Label name -> ``multilabel`` / ``multiclass`` / ``regression``."""
        return {}

    def holdout_concepts(self) -> list[str]:
        return []

    def data_record(self) -> dict[str, Any]:
        """What data the recipe's models saw, for ``zoo.json`` (source, origin, fingerprint)."""
        return {}

    @classmethod
    def data_keys(cls, init_args: dict[str, Any]) -> list[str]:
        """What identifies the data a config's recipe reads, without loading it: part of the
        zoo's cache key, so zoos built from other data (another generator version, another
        folder) never share a folder. Defaults of unset arguments count."""
        return []


def argument(cls: type, init_args: dict[str, Any], name: str) -> Any:
    """A constructor argument as a config sets it, or its default."""
    import inspect

    if name in init_args:
        return init_args[name]
    return inspect.signature(cls.__init__).parameters[name].default


DEVICES = ("cpu", "auto", "cuda", "cuda:N")


def pick_device(name: str) -> torch.device:
    """The torch device a recipe trains on: ``cpu``, ``cuda[:N]``, or ``auto`` (CUDA when present).

    Raises:
        ConfigError: An unknown name, or CUDA asked for where there is none.
    """
    from nwa.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not (name == "cuda" or name.startswith("cuda:") and name[5:].isdigit()):
        raise ConfigError(f"device {name!r}: use one of {', '.join(DEVICES)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: no CUDA device on this machine (use auto or cpu)")
    return torch.device(name)
