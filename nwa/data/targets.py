"""What a run predicts, by label name, with its task type from the zoo's label schema.

Any label a zoo's models carry (a manifest column such as ``classes``, ``concept``, ``tree`` or
``test_acc``, a key of their ``labels``, or a hyperparameter) is a target by its name. Its kind
is the one ``zoo.json`` declares (``label_schema``: ``multilabel``, ``multiclass`` or
``regression``); an undeclared label's kind follows its values (lists: multi-label, numbers:
regression, anything else: classes). Two names stand for groups of labels, those listed in
``properties``: ``properties`` (one regression over numeric labels) and ``labels`` (one head per
label, each of its own kind). Errors list what the selected models have.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from nwa.data.selection import label_values, missing, zoo_labels
from nwa.errors import ConfigError
from nwa.tasks import Targets
from nwa.zoo.manifest import Zoo

KINDS = ("multilabel", "multiclass", "regression")
GROUPS = {"properties": "regression", "labels": "multitask"}
"""Targets over the labels named in ``properties``, and their task types."""


def _is_list(value: object) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def label_kind(zoo: Zoo, name: str, values: pd.Series) -> str:
    """A label's kind: ``multilabel`` when its values are lists (whatever a schema says: a
    list is no single class), else the schema's declaration, else ``regression`` when every
    known value is a number and ``multiclass`` otherwise (names such as an optimizer)."""
    known = [v for v in values if not missing(v)]
    if known and all(_is_list(v) for v in known):
        return "multilabel"
    declared = zoo.meta.label_schema.get(name)
    if declared in ("multiclass", "regression"):
        return declared
    return "regression" if all(_is_number(v) for v in known) else "multiclass"


def _item_name(zoo: Zoo, item: object) -> str:
    # the manifest stores multi-label items as indices into the zoo's class names
    if _is_number(item) and zoo.meta.classes and 0 <= int(item) < len(zoo.meta.classes):
        return zoo.meta.classes[int(item)]
    return str(item)


class Target:
    """One run's target on one zoo.

    Args:
        zoo: The zoo.
        name: A label's name, or ``properties``/``labels`` (the labels named in ``properties``).
        properties: The labels of ``properties`` (numeric) and ``labels`` (any kind).
    """

    def __init__(self, zoo: Zoo, name: str, properties: Sequence[str]) -> None:
        self.zoo, self.name, self.properties = zoo, name, list(properties)
        self.task_type = GROUPS.get(name, "")
        self.kinds: dict[str, str] = {}

    def _has(self, rows: pd.DataFrame) -> str:
        numeric, categorical = zoo_labels(self.zoo, rows)
        has = [f"properties {numeric}" if numeric else "no numeric labels"]
        has.append(f"categorical labels {categorical}" if categorical else "no categorical labels")
        return "; the selected models have " + ", ".join(has)

    def _values(self, rows: pd.DataFrame, name: str) -> pd.Series:
        values = label_values(self.zoo, rows, name)
        if values is None:
            raise ConfigError(f"{self.zoo.root}: no label {name!r} to predict{self._has(rows)}")
        return values

    def keep(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Resolve each label's kind on the selected ``rows`` and keep the rows that have the
        target (a model without a value, such as a diverged run of the Small CNN Zoo, is left
        out with a warning; ``labels`` keeps models that lack some of its labels).

        Raises:
            ConfigError: A label no selected model has (naming what they have), or a label of
                the wrong kind for its group.
        """
        root = self.zoo.root
        names = self.properties if self.name in GROUPS else [self.name]
        if not names:
            raise ConfigError(f"target {self.name!r} needs at least one label in properties")
        known = pd.Series(True, index=rows.index)
        for name in names:
            values = self._values(rows, name)
            kind = self.kinds[name] = label_kind(self.zoo, name, values)
            if self.name == "properties":
                known &= pd.to_numeric(values, errors="coerce").notna()
            elif self.name == "labels" and kind == "multilabel":
                raise ConfigError(
                    f"{root}: label {name!r} is multi-label; target 'labels' takes class and "
                    "value labels (predict it alone: target: " + name + ")"
                )
            elif self.name != "labels":
                known &= ~values.map(missing)
            if kind == "multilabel" and not any(len(v) for v in values if _is_list(v)):
                raise ConfigError(
                    f"{root}: label {name!r} is empty for every selected model{self._has(rows)}"
                )
        self.task_type = GROUPS[self.name] if self.name in GROUPS else self.kinds[self.name]
        return _dropping(rows, known, f"without {names}")

    def targets(self, rows: pd.DataFrame) -> Targets:
        """What the model predicts over the selected ``rows`` (for the ``model.targets`` link):
        class names are the values the rows have, sorted (multi-label: in the zoo's order)."""
        if self.name == "properties":
            return Targets("regression", tuple(self.properties))
        if self.name == "labels":
            return Targets(
                "multitask",
                tuple(self.properties),
                tuple(self._single(rows, n, self.kinds[n]) for n in self.properties),
            )
        return self._single(rows, self.name, self.task_type)

    def _single(self, rows: pd.DataFrame, name: str, kind: str) -> Targets:
        if kind == "regression":
            return Targets("regression", (name,))
        values = self._values(rows, name)
        if kind == "multilabel":
            items = sorted({i for v in values if _is_list(v) for i in v}, key=_order)
            names = dict.fromkeys(_item_name(self.zoo, i) for i in items)
            return Targets("multilabel", tuple(names))
        return Targets("multiclass", tuple(sorted({str(v) for v in values if not missing(v)})))

    def row_names(self, rows: pd.DataFrame) -> list[str]:
        """Each row's class name (single-label class targets; ``""`` otherwise)."""
        if self.task_type != "multiclass":
            return [""] * len(rows)
        return ["" if missing(v) else str(v) for v in self._values(rows, self.name)]

    def encode(self, rows: pd.DataFrame, targets: Targets) -> torch.Tensor:
        """The target tensor of the ``rows``: multi-hot [N, C], class index [N] (``-1`` when
        unknown), values [N, P], or for ``labels`` one column per label [N, L] (class index or
        value, ``-1``/``NaN`` when unknown)."""
        if targets.kind == "multitask":
            cols = [self._column(rows, n, t) for n, t in zip(targets.names, targets.labels)]
            return torch.tensor(np.array(cols, dtype=np.float32).T.reshape(len(rows), len(cols)))
        if targets.kind == "regression":
            cols = [pd.to_numeric(self._values(rows, p)) for p in targets.names]
            return torch.tensor(np.stack([c.to_numpy(dtype=np.float32) for c in cols], axis=1))
        if targets.kind == "multilabel":
            index = {n: i for i, n in enumerate(targets.names)}
            y = torch.zeros(len(rows), len(targets.names))
            for r, v in enumerate(self._values(rows, self.name)):
                for item in v if _is_list(v) else ():
                    y[r, index[_item_name(self.zoo, item)]] = 1.0
            return y
        index = {n: i for i, n in enumerate(targets.names)}
        return torch.tensor([index.get(v, -1) for v in self.row_names(rows)], dtype=torch.long)

    def _column(self, rows: pd.DataFrame, name: str, targets: Targets) -> list[float]:
        values = label_values(self.zoo, rows, name)
        values = values if values is not None else pd.Series([None] * len(rows))
        if targets.kind == "multiclass":
            index = {c: i for i, c in enumerate(targets.names)}
            return [-1.0 if missing(v) else float(index.get(str(v), -1)) for v in values]
        return [math.nan if missing(v) else float(v) for v in values]


def _order(item: object) -> tuple[int, object]:
    return (0, int(item)) if _is_number(item) else (1, str(item))


def _dropping(rows: pd.DataFrame, keep: pd.Series, why: str) -> pd.DataFrame:
    if keep.all():
        return rows
    ids = list(rows.loc[~keep, "id"])
    warnings.warn(
        f"leaving out {len(ids)} of {len(rows)} models {why} (e.g. {ids[:3]})", stacklevel=3
    )
    return rows[keep].reset_index(drop=True)
