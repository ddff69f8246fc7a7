"""Image sets too large (or too cheap to draw) to hold in memory: indexed lazily, loaded per batch.

A zoo recipe indexes its images the same way whether they are a uint8 tensor or a lazy set:
``images[idx]`` gives a subset (a view for lazy sets) and :func:`take` materializes it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch


class LazyImages(ABC):
    """A fixed, ordered set of images decoded (or drawn) only when a batch asks for them.

    Subclasses implement :meth:`_load` for absolute indices; indexing gives a view that shares
    the parent's state (and caches).

    Attributes:
        channels: Channels of every image.
        size: Side in pixels of every (square) image.
    """

    channels: int
    size: int

    def __init__(self, count: int) -> None:
        self._index = torch.arange(int(count))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, C, H, W)`` of the view, as for a tensor."""
        return (len(self._index), self.channels, self.size, self.size)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, idx: torch.Tensor | slice | Sequence[int]) -> LazyImages:
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._index = self._index[idx if isinstance(idx, slice) else torch.as_tensor(idx).long()]
        return view

    def load(self) -> torch.Tensor:
        """The images of this view. Shapes: uint8 ``[N, C, size, size]``."""
        if not len(self._index):
            return torch.empty(self.shape, dtype=torch.uint8)
        return self._load(self._index)

    @abstractmethod
    def _load(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 ``[len(index), C, size, size]`` for absolute indices into the whole set."""


Images = torch.Tensor | LazyImages


def take(images: Images, idx: torch.Tensor | slice | None = None) -> torch.Tensor:
    """``images[idx]`` (all of them for ``None``) as a uint8 tensor ``[N, C, H, W]``."""
    part = images if idx is None else images[idx]
    return part if isinstance(part, torch.Tensor) else part.load()
