"""WeightDataset: the models of one split, read lazily, as the items (or whole batches) of a
DataLoader."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch.utils.data import Dataset

from nwa.data.reading import (
    BatchLayout,
    check_finite_batch,
    make_input,
    read_layers,
    read_layers_into,
)
from nwa.errors import NonFiniteWeightsError

if TYPE_CHECKING:
    from nwa.data.module import ModelZooDataModule


class WeightDataset(Dataset):
    """Models of a zoo as ``{"x": input, "y": target, "index": row}`` items.

    Reads only the selected tensors of each model, lazily; with ``cache`` the read tensors are
    kept (only those, never whole models), so later epochs read nothing. A DataLoader fetches a
    batch at once (:meth:`__getitems__`): for the ``matrix`` and ``flat`` inputs each model is
    read straight into its slot of the batch.
    """

    def __init__(
        self, module: ModelZooDataModule, rows: pd.DataFrame, augment: bool = False
    ) -> None:
        self.dm = module
        self.rows = rows.reset_index(drop=True)
        self._records = self.rows.to_dict("records")  # row access per item: pandas is slow
        self.augment = augment
        self.targets = module.encode_targets(self.rows)
        self._cache: dict[int, dict[str, torch.Tensor]] = {}
        self._inputs: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def tensors(self, i: int) -> dict[str, torch.Tensor]:
        if i in self._cache:
            return self._cache[i]
        try:
            t = read_layers(self.dm.zoo, self._records[i], self.dm.tensor_names(self._records[i]))
        except NonFiniteWeightsError as e:
            raise self.dm.nonfinite(e, self._records[i]) from None
        if self.dm.cache:
            self._cache[i] = t
        return t

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i in self._inputs:
            return {"x": self._inputs[i], "y": self.targets[i], "index": i}
        tensors = self.dm.normalizer(self.tensors(i))
        record = self._records[i]
        if self.augment:
            tensors = self.dm.permute(tensors, i, record)
        plan = self.dm.graphs.plan(record) if self.dm.graphs is not None else None
        where = str(self.dm.zoo.path_of(record))
        x = make_input(self.dm.input, tensors, self.dm.spec, self.dm.layer_names, plan, where)
        if self.dm.cache and not self.augment and self.dm.input in ("stats", "spectral"):
            # StatNN features sort every tensor, spectral ones solve eigenproblems: compute
            # them once, not every epoch.
            self._inputs[i] = x
        return {"x": x, "y": self.targets[i], "index": i}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """The items of a batch, fetched together (the DataLoader calls this, not ``[i]``).

        For the ``matrix`` and ``flat`` inputs every model is read straight into its slot of one
        batch, which is then checked and normalised whole; the items are views of that batch:
        the module's collate returns the batch as is, any other collate still gets plain items.
        """
        dm, layout = self.dm, self.dm.layout
        if layout is None or self.augment:
            return [self[i] for i in indices]
        x, slots = layout.empty(len(indices), dm.batch_memory)
        read = []
        for j, (i, slot) in enumerate(zip(indices, slots)):
            cached = self._cache.get(i)
            if cached is None:
                read_layers_into(dm.zoo, self._records[i], slot)
                read.append(j)
            else:
                for n, t in slot.items():
                    t.copy_(cached[n])
        # One pass per tensor over the whole batch: far fewer operations (and thread
        # wake-ups) than one per model.
        layers = layout.layers(x)
        checked: list[int] = []  # the model a non-finite error is about is the last one checked

        def path_of(j: int) -> Any:
            checked.append(j)
            return dm.zoo.path_of(self._records[indices[j]])

        try:
            check_finite_batch(layers, path_of)
        except NonFiniteWeightsError as e:
            raise dm.nonfinite(e, self._records[indices[checked[-1]]]) from None
        if dm.cache:
            for j in read:
                self._cache[indices[j]] = {n: t.clone() for n, t in slots[j].items()}
        dm.normalizer.apply_(layers)
        y = self.targets[indices]
        return CollatedItems(layout, {"x": x, "y": y, "index": torch.tensor(indices)})


class CollatedItems(Sequence):
    """Items of a batch that was built whole; ``batch`` is what collating them gives.

    The module's collate takes ``batch`` as is, so the items (views of it) are made only when
    another collate asks for them.
    """

    def __init__(self, layout: BatchLayout, batch: dict[str, Any]) -> None:
        self.layout, self.batch = layout, batch

    def __len__(self) -> int:
        return len(self.batch["index"])

    def __getitem__(self, j: Any) -> Any:
        if isinstance(j, slice):
            return [self[k] for k in range(len(self))[j]]
        j = range(len(self))[j]
        b = self.batch
        return {"x": self.layout.item(b["x"], j), "y": b["y"][j], "index": int(b["index"][j])}
