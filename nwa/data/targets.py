"""What a run predicts: training classes, a categorical label (concept, tree, arch, or any label
or hyperparameter the zoo records), or numeric properties; checked against the zoo with errors
that list what the zoo has."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from nwa.data.selection import label_values, missing, zoo_labels
from nwa.errors import ConfigError
from nwa.zoo.manifest import Zoo

TARGETS = ("classes", "concept", "tree", "arch", "properties", "labels")
"""The built-in targets; any categorical label of the zoo is a target too."""


class Target:
    """One run's target on one zoo.

    Args:
        zoo: The zoo.
        kind: ``classes``, ``properties``, ``labels`` (one head per label of ``properties``:
            see :mod:`nwa.data.labels`), or a categorical label (``concept``, ``tree``,
            ``arch``, a key of the models' labels or hyperparameters).
        properties: The numeric labels of ``properties``; the labels of ``labels``.
    """

    def __init__(self, zoo: Zoo, kind: str, properties: Sequence[str]) -> None:
        self.zoo, self.kind, self.properties = zoo, kind, list(properties)

    @property
    def task_type(self) -> str:
        kinds = {"classes": "multilabel", "properties": "regression", "labels": "multitask"}
        return kinds.get(self.kind, "multiclass")

    def _has(self, rows: pd.DataFrame) -> str:
        numeric, categorical = zoo_labels(self.zoo, rows)
        has = []
        if any(len(c) for c in rows["classes"]):
            has.append("classes")
        has.append(f"properties {numeric}" if numeric else "no numeric labels")
        has.append(f"categorical labels {categorical}" if categorical else "no categorical labels")
        return "; the selected models have " + ", ".join(has)

    def keep(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The rows that have this target (a model without a property's value, such as a
        diverged run of the Small CNN Zoo, is left out with a warning).

        Raises:
            ConfigError: No selected model has the target; names what they have.
        """
        root = self.zoo.root
        if self.kind == "classes":
            if not any(len(c) for c in rows["classes"]):
                raise ConfigError(
                    f"{root}: target 'classes' needs training classes{self._has(rows)}"
                )
            return rows
        if self.kind == "properties":
            if not self.properties:
                raise ConfigError("target 'properties' needs at least one property")
            known = pd.Series(True, index=rows.index)
            for p in self.properties:
                values = label_values(self.zoo, rows, p)
                if values is None:
                    raise ConfigError(f"{root}: no label {p!r}{self._has(rows)}")
                known &= pd.to_numeric(values, errors="coerce").notna()
            return _dropping(rows, known, f"without {self.properties}")
        if self.kind == "labels":  # one head per label: a model may lack some of them
            if not self.properties:
                raise ConfigError("target 'labels' needs at least one label in properties")
            for p in self.properties:
                values = label_values(self.zoo, rows, p)
                if values is None:
                    raise ConfigError(f"{root}: no label {p!r}{self._has(rows)}")
                if values.map(missing).all():
                    raise ConfigError(f"{root}: label {p!r} is unknown for every selected model")
            return rows
        values = label_values(self.zoo, rows, self.kind)
        if values is None:
            raise ConfigError(f"{root}: no label {self.kind!r} to predict{self._has(rows)}")
        return _dropping(rows, ~values.map(missing), f"without {self.kind}")

    def names(self, rows: pd.DataFrame) -> list[str]:
        """Class names (classification) or property names (regression)."""
        if self.kind == "classes":
            used = sorted({c for cs in rows["classes"] for c in cs})
            return [self.zoo.meta.classes[c] for c in used]
        if self.kind in ("properties", "labels"):
            return list(self.properties)
        return sorted(set(self.row_names(rows)) - {""})

    def row_names(self, rows: pd.DataFrame) -> list[str]:
        """Each row's class name (categorical targets)."""
        values = label_values(self.zoo, rows, self.kind)
        if values is None:
            return [""] * len(rows)
        return ["" if missing(v) else str(v) for v in values]

    def encode(self, rows: pd.DataFrame, names: Sequence[str]) -> torch.Tensor:
        """The target tensor of each row: multi-hot, property values, or class index."""
        if self.kind == "classes":
            index = {self.zoo.meta.classes.index(n): i for i, n in enumerate(names)}
            y = torch.zeros(len(rows), len(names))
            for r, cs in enumerate(rows["classes"]):
                for c in cs:
                    y[r, index[c]] = 1.0
            return y
        if self.kind == "properties":
            cols = [pd.to_numeric(label_values(self.zoo, rows, p)) for p in self.properties]
            return torch.tensor(np.stack([c.to_numpy(dtype=np.float32) for c in cols], axis=1))
        if self.kind == "labels":
            raise ValueError("target 'labels' is encoded by its Targets (nwa.data.labels)")
        index = {n: i for i, n in enumerate(names)}
        return torch.tensor([index.get(v, -1) for v in self.row_names(rows)], dtype=torch.long)


def _dropping(rows: pd.DataFrame, keep: pd.Series, why: str) -> pd.DataFrame:
    if keep.all():
        return rows
    ids = list(rows.loc[~keep, "id"])
    warnings.warn(
        f"leaving out {len(ids)} of {len(rows)} models {why} (e.g. {ids[:3]})", stacklevel=3
    )
    return rows[keep].reset_index(drop=True)
