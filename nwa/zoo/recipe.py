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
    """

    id: str
    kind: str
    tree: str
    parent: str = ""
    split: str = ""
    params: dict[str, Any] = field(default_factory=dict)


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
            ``split``, labels ...). For a root: ``{"path": ..., "arch": ..., **info}`` for
            ``ZooMeta.trees``.
        """

    def label_schema(self) -> dict[str, str]:
        """Label name -> ``multilabel`` / ``multiclass`` / ``regression``."""
        return {}

    def holdout_concepts(self) -> list[str]:
        return []
