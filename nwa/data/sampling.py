"""Training order and augmentation draws that depend only on the seed and the epoch, so a run
resumed from a checkpoint sees the batches an unbroken run sees."""

from __future__ import annotations

import os
from collections.abc import Sized

import numpy as np
import torch
from torch.utils.data import RandomSampler


def derived_seed(*parts: int) -> int:
    """A 32-bit seed from integers (``numpy.random.SeedSequence``: well mixed, stable)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def global_seed() -> int:
    """The run's seed as ``seed_everything`` recorded it (0 when never seeded)."""
    value = os.environ.get("PL_GLOBAL_SEED", "")
    return int(value) if value.lstrip("-").isdigit() else 0


class EpochShuffle(RandomSampler):
    """A random permutation per epoch that depends only on ``seed`` and the epoch.

    Lightning calls :meth:`set_epoch` before every training epoch. Under DDP, Lightning replaces
    a ``RandomSampler`` by a ``DistributedSampler`` with shuffling on and the run's seed, whose
    order also depends only on the seed and the epoch.

    Args:
        data_source: The dataset (only its length is used).
        seed: Seed of every epoch's permutation.
        epoch: The epoch the first iteration is for (a resumed run starts past 0).
    """

    def __init__(self, data_source: Sized, seed: int, epoch: int = 0) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
        yield from torch.randperm(len(self.data_source), generator=gen).tolist()
