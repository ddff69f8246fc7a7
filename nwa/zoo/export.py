"""Writing an nwa zoo in a public layout, so code written for that layout reads it.

``small_cnn_zoo``: the Small CNN Zoo's files (Unterthiner et al. 2020) for one architecture
whose tensors are named as that zoo names its layers (``conv2d``, ``conv2d_1``, ``dense``, ...;
:mod:`nwa.zoo.properties` builds such networks):

- ``weights.npy``: float32 ``[checkpoints, parameters]``, each row the flattened tensors in
  ``layout.csv`` order (each layer's bias before its kernel, kernels in TensorFlow order:
  ``[kh, kw, in, out]`` and ``[in, out]``);
- ``layout.csv``: ``varname`` (``sequential/conv2d/kernel:0``), ``start_idx``, ``end_idx``,
  ``shape``;
- ``metrics.csv.gz``: one row per checkpoint: ``config.*`` hyperparameters under the public
  zoo's names (``config.learning_rate``, ``config.optimizer``, ``config.w_init``, ...),
  ``modeldir`` (the run), ``step`` (the checkpoint's epoch, equal across runs as there), ``train_accuracy``, ``test_accuracy``, the other labels, the
  nwa ``split`` and the model's nwa id (``nwa_id``).

Diverged checkpoints keep their NaN weights, as in the public zoo. A zoo with several such
architectures is written one folder per architecture (``OUT/<arch>/``). Every file is written
to a temporary name and renamed, ``weights.npy`` last, so a reader never sees a half export.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nwa.atomic import atomic_path
from nwa.errors import ZooError
from nwa.zoo.manifest import Zoo

FORMATS = ("small_cnn_zoo",)
PUBLIC_HPARAMS = {
    "lr": "learning_rate",
    "init": "w_init",
    "l2": "l2reg",
}
_LAYER = re.compile(r"^(conv2d|dense)(_\d+)?\.(weight|bias)$")


def _varname(name: str, ndim: int) -> tuple[str, tuple[int, ...] | None]:
    """``conv2d_1.weight`` -> (``sequential/conv2d_1/kernel:0``, the axes to TensorFlow order)."""
    layer, _, leaf = name.rpartition(".")
    if leaf == "bias":
        return f"sequential/{layer}/bias:0", None
    return f"sequential/{layer}/kernel:0", {4: (2, 3, 1, 0), 2: (1, 0)}[ndim]


def _layout(zoo: Zoo, arch: str, rows: pd.DataFrame) -> list[tuple[str, str, tuple, Any]]:
    """(tensor, varname, stored shape, permutation) per tensor, each bias before its kernel."""
    with zoo.open_model(rows.iloc[0]) as src:
        infos = src.infos()
        names = src.names()
    bad = [n for n in names if not _LAYER.match(n) or len(infos[n].shape) not in (1, 2, 4)]
    if bad:
        raise ZooError(
            f"{zoo.root}: architecture {arch!r} has tensors {bad[:3]} the Small CNN Zoo layout "
            "cannot hold (it names layers conv2d[_N] and dense[_N])"
        )
    out = []
    layers = list(dict.fromkeys(n.rpartition(".")[0] for n in names))
    for layer in layers:
        for leaf in ("bias", "weight"):
            name = f"{layer}.{leaf}"
            if name in infos:
                shape = tuple(infos[name].shape)
                var, perm = _varname(name, len(shape))
                stored = shape if perm is None else tuple(shape[i] for i in perm)
                out.append((name, var, stored, perm))
    return out


def _metrics(rows: pd.DataFrame) -> pd.DataFrame:
    """The public ``metrics.csv`` columns of ``rows`` (plus ``split`` and ``nwa_id``)."""
    records = []
    for _, row in rows.iterrows():
        hp = dict(row["hparams"])
        labels = dict(row["labels"])
        rec = {f"config.{PUBLIC_HPARAMS.get(k, k)}": v for k, v in hp.items() if k != "epoch"}
        # the public zoo's step is the same for every run's n-th checkpoint: here the epoch
        rec |= {"modeldir": row["tree"] or row["id"], "step": labels.pop("epoch", hp.get("epoch"))}
        rec |= {"train_accuracy": row["train_acc"], "test_accuracy": row["test_acc"]}
        rec |= {"robustness": row["robustness"], "gen_gap": row["gen_gap"]}
        rec |= {k: v for k, v in labels.items() if k not in rec}
        records.append(rec | {"split": row["split"], "nwa_id": row["id"]})
    return pd.DataFrame(records)


def export_small_cnn_zoo(zoo: Zoo, out: Path, arch: str) -> Path:
    """Write ``arch``'s models of ``zoo`` into ``out`` in the Small CNN Zoo's layout.

    Raises:
        ZooError: No such architecture, or tensors the layout cannot name.
    """
    rows = zoo.table[zoo.table["arch"].astype(str) == arch].sort_values("id", kind="stable")
    if rows.empty:
        raise ZooError(f"{zoo.root}: no models of architecture {arch!r}")
    layout = _layout(zoo, arch, rows)
    width = sum(int(np.prod(shape)) for _, _, shape, _ in layout)
    weights = np.empty((len(rows), width), dtype=np.float32)
    for i, (_, row) in enumerate(rows.iterrows()):
        with zoo.open_model(row) as src:
            parts = []
            for name, _, _, perm in layout:
                t = src.get(name).float().numpy()
                parts.append((t if perm is None else t.transpose(perm)).reshape(-1))
        weights[i] = np.concatenate(parts)
    out.mkdir(parents=True, exist_ok=True)
    table, start = [], 0
    for _, var, shape, _ in layout:
        end = start + int(np.prod(shape))
        table.append({"varname": var, "start_idx": start, "end_idx": end, "shape": str(shape)})
        start = end
    with atomic_path(out / "layout.csv") as tmp:
        pd.DataFrame(table).to_csv(tmp, index=False)
    with atomic_path(out / "metrics.csv.gz") as tmp:
        _metrics(rows).to_csv(tmp, index=False, compression="gzip")
    with atomic_path(out / "weights.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, weights, allow_pickle=False)
    return out


def export(
    zoo: Zoo, out: str | Path, fmt: str = "small_cnn_zoo", archs: Sequence[str] = ()
) -> list[Path]:
    """Export ``zoo`` (or its ``archs``) in a public layout; returns the folders written.

    One architecture goes straight into ``out``; several into ``out/<arch>/``.

    Raises:
        ZooError: An unknown format or architecture, or an architecture the layout cannot hold.
    """
    if fmt not in FORMATS:
        raise ZooError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    present = sorted(zoo.table["arch"].astype(str).unique())
    chosen = list(archs) or present
    if missing := sorted(set(chosen) - set(present)):
        raise ZooError(f"{zoo.root}: no models of architecture {missing}; it has {present}")
    out = Path(out).expanduser()
    if len(chosen) == 1:
        return [export_small_cnn_zoo(zoo, out, chosen[0])]
    return [export_small_cnn_zoo(zoo, out / a, a) for a in chosen]
