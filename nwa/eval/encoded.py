"""Encoded models: representations, flattened raw weights and class names, split for evaluation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Encoded:
    """Models of some splits, encoded: embeddings, flattened raw weights, classes, ids.

    Shapes:
        - z: [N, D]; raw: [N, D_raw] (``None`` for graph inputs)
    """

    z: np.ndarray = field(default_factory=lambda: np.zeros((0, 1)))
    raw: np.ndarray | None = None
    concepts: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.concepts)

    def take(self, index: Sequence[int]) -> Encoded:
        """The models at ``index``, in that order."""
        idx = list(index)
        raw = None if self.raw is None else self.raw[idx]
        return Encoded(
            self.z[idx], raw, [self.concepts[i] for i in idx], [self.ids[i] for i in idx]
        )

    def rep(self, raw: bool) -> np.ndarray | None:
        """The learned embeddings, or the raw weights (``None`` where there are none)."""
        return self.raw if raw else self.z


def alternate(enc: Encoded) -> tuple[Encoded, Encoded]:
    """Each class's models alternately into references (1st, 3rd, ...) and queries (2nd, ...)."""
    count: Counter[str] = Counter()
    halves: tuple[list[int], list[int]] = ([], [])
    for i, c in enumerate(enc.concepts):
        halves[count[c] % 2].append(i)
        count[c] += 1
    return enc.take(halves[0]), enc.take(halves[1])


def concat(parts: Sequence[Encoded]) -> Encoded:
    """The non-empty ``parts`` one after another."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return Encoded()
    raws = [p.raw for p in parts]
    raw = np.concatenate(raws) if all(r is not None for r in raws) else None
    return Encoded(
        np.concatenate([p.z for p in parts]),
        raw,
        [c for p in parts for c in p.concepts],
        [i for p in parts for i in p.ids],
    )


def flatten_input(x: Any) -> torch.Tensor | None:
    """A batch's weights as one flat vector per model (``None`` for graph inputs).

    Shapes:
        - x: [B, ...], ``{layer: [B, ...]}`` or ``{key: [[B, ...], ...]}``
        - returns: [B, D]
    """
    if isinstance(x, torch.Tensor):
        return x.flatten(1)
    if not isinstance(x, dict):
        return None
    parts = [p for v in x.values() for p in (v if isinstance(v, list | tuple) else [v])]
    return torch.cat([p.flatten(1) for p in parts], dim=1)
