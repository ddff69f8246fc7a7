"""Several labels of a zoo as one multi-task target (``target: labels``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from nwa.tasks import Targets
from nwa.zoo.manifest import Zoo

KINDS = ("multiclass", "regression")


def _known(v: object) -> bool:
    return v is not None and v != "" and not (isinstance(v, float) and math.isnan(v))


def label_kind(zoo: Zoo, name: str, values: pd.Series) -> str:
    """A label's kind: the zoo's declaration (``label_schema``), else ``regression`` when every
    known value is a number and ``multiclass`` otherwise (names such as an optimizer)."""
    declared = zoo.meta.label_schema.get(name)
    if declared in KINDS:
        return declared
    known = [v for v in values if _known(v)]
    numbers = all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in known)
    return "regression" if numbers else "multiclass"


def label_targets(zoo: Zoo, rows: pd.DataFrame, names: Sequence[str]) -> Targets:
    """The ``multitask`` targets of ``names`` over the selected ``rows``: a class label's class
    names are its known values among them, sorted."""
    labels = []
    for name in names:
        values = zoo.label(name).set_axis(zoo.table["id"]).loc[rows["id"]]
        kind = label_kind(zoo, name, values)
        if kind == "multiclass":
            classes = sorted({str(v) for v in values if _known(v)})
            labels.append(Targets("multiclass", tuple(classes)))
        else:
            labels.append(Targets("regression", (name,)))
    return Targets("multitask", tuple(names), tuple(labels))


def encode_labels(zoo: Zoo, rows: pd.DataFrame, targets: Targets) -> torch.Tensor:
    """[N, L] floats: a class label's class index (``-1`` when unknown or not among the
    targets' classes), a regression label's value (``NaN`` when unknown)."""
    cols = []
    for name, t in zip(targets.names, targets.labels):
        values = zoo.label(name).set_axis(zoo.table["id"]).loc[rows["id"]]
        if t.kind == "multiclass":
            index = {c: i for i, c in enumerate(t.names)}
            cols.append([float(index.get(str(v), -1)) if _known(v) else -1.0 for v in values])
        else:
            cols.append([float(v) if _known(v) else math.nan for v in values])
    return torch.tensor(np.array(cols, dtype=np.float32).T.reshape(len(rows), len(cols)))
