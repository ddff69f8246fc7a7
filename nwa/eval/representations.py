"""The encodings the evaluation callbacks share, and their report (:mod:`nwa.eval.callbacks`)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from nwa.atomic import atomic_write_text
from nwa.errors import ConfigError
from nwa.eval.downstream import random_projection
from nwa.eval.encoded import Encoded, alternate, concat, flatten_input

SIDES = {"learned": False, "raw": True}
"""The representations each suite scores: the encoder's, and the raw flattened weights."""


def run_dir(trainer: Trainer) -> Path:
    """This run's folder: the parent of its checkpoint folder (unique per run for W&B and CSV
    loggers alike), else the trainer's log dir or root dir."""
    ckpt = getattr(trainer, "checkpoint_callback", None)
    if ckpt is not None and getattr(ckpt, "dirpath", None):
        return Path(ckpt.dirpath).parent
    return Path(trainer.log_dir or trainer.default_root_dir)


def scalars(tree: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numeric leaves of a nested results dict, keyed ``prefix/a/b``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= scalars(v, f"{prefix}/{k}")
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}/{k}"] = float(v)
    return out


def _merge(into: dict[str, Any], values: dict[str, Any]) -> None:
    for k, v in values.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def evaluation_report(trainer: Trainer) -> dict[str, Any]:
    """The results of the last test run's evaluation callbacks (what the results JSON holds),
    ``{}`` when the run had none."""
    rep = next((c for c in trainer.callbacks if isinstance(c, Representations)), None)
    return dict(rep.report) if rep is not None else {}


class Representations(Callback):
    """Encodes the train, test and held-out models once per test run, for the other callbacks.

    Args:
        label: The zoo label that gives each model's class (a manifest column, a ``labels`` or
            ``hparams`` key with one value per model, e.g. ``tree``); ``None``: the run's target,
            which must then be single-class.
        holdout_splits: Splits of held-out-class models (the zoo's ``val_holdout`` is left
            for model selection).
        raw_dim: Raw weights wider than this are randomly projected to it (distances are kept
            approximately); 0 keeps every weight.
        results_file: Results JSON name in the run folder (an absolute path is used as is);
            figures are named after it (``align_results.json``: ``align_embedding.png``).
        prefix: Prefix of the logged metrics (``<prefix>/learned/in_distribution/knn_top1``).
    """

    def __init__(
        self,
        label: str | None = None,
        holdout_splits: Sequence[str] = ("test_holdout",),
        raw_dim: int = 1024,
        results_file: str = "eval_results.json",
        prefix: str = "test",
    ) -> None:
        self.label, self.holdout_splits = label, list(holdout_splits)
        self.raw_dim, self.results_file, self.prefix = raw_dim, results_file, prefix
        self._reset()

    def _reset(self) -> None:
        self.parts: dict[str, Encoded] | None = None
        self.report: dict[str, Any] = {}
        self.vocab: dict[str, int] = {}

    # ----- checks before any training -----
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not isinstance(getattr(pl_module, "encoder", None), nn.Module) or not hasattr(
            pl_module, "embed"
        ):
            raise ConfigError(
                f"trainer.callbacks: the evaluation callbacks need a module with an encoder "
                f"(a WeightModule); {type(pl_module).__name__} has none"
            )
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "rows"):
            self._check_label(dm)

    def _check_label(self, dm: Any) -> None:
        from nwa.data.selection import label_values, zoo_labels

        if self.label is None:
            if dm.targets.kind != "multiclass":
                raise ConfigError(
                    f"Representations: the target {dm.target!r} is {dm.targets.kind}, with no "
                    "single class per model; set init_args.label to a zoo label that has one "
                    "(e.g. tree)"
                )
            return
        values = label_values(dm.zoo, dm.rows, self.label)
        if values is None or any(isinstance(v, list | tuple | np.ndarray) for v in values):
            _, categorical = zoo_labels(dm.zoo, dm.rows)
            what = "no" if values is None else "a multi-label"
            raise ConfigError(
                f"{dm.zoo.root}: Representations: {what} label {self.label!r} to class models by;"
                f" the selected models have categorical labels {categorical}"
            )

    # ----- encodings, shared by the evaluation callbacks -----
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset()

    def encoded(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Encoded] | None:
        """The encoded parts of this test run (computed once); ``None`` without a zoo data
        module. Every rank computes the same (all models, synced weights)."""
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "loader"):
            return None
        if self.parts is None:
            splits = {
                "train": dm.splits["train"],
                "test": dm.splits["test"],
                "held_out": self.holdout_splits,
            }
            self.parts = {k: self._encode(dm, pl_module, s) for k, s in splits.items()}
            self._describe(dm, pl_module, self.parts)
        return self.parts

    @torch.no_grad()
    def _encode(self, dm: Any, pl_module: LightningModule, splits: Sequence[str]) -> Encoded:
        if not dm.rows["split"].isin(list(splits)).any():
            return Encoded()
        loader = dm.loader(list(splits))
        zs, raws, training = [], [], pl_module.training
        pl_module.eval()
        for batch in loader:
            raws.append(flatten_input(batch["x"]))
            x = pl_module.transfer_batch_to_device(batch["x"], pl_module.device, 0)
            zs.append(pl_module.embed(x).float().cpu())
        pl_module.train(training)
        raw = None
        if all(r is not None for r in raws):
            raw = random_projection(torch.cat(raws).double().numpy(), self.raw_dim)
        rows = loader.dataset.rows
        return Encoded(torch.cat(zs).numpy(), raw, self._classes(dm, rows), list(rows["id"]))

    def _classes(self, dm: Any, rows: Any) -> list[str]:
        if self.label is None:
            return dm.target_names(rows) if hasattr(dm, "target_names") else list(rows["concept"])
        from nwa.data.selection import label_values, missing

        return ["" if missing(v) else str(v) for v in label_values(dm.zoo, rows, self.label)]

    def _describe(self, dm: Any, pl_module: LightningModule, parts: dict[str, Encoded]) -> None:
        every = {c for p in parts.values() for c in p.concepts}
        names = list(dm.targets.names) if self.label is None else sorted(every)
        trained = set(parts["train"].concepts)
        seen = [n for n in names if n in trained]
        unseen = sorted(set(parts["held_out"].concepts))
        if trained & set(unseen):
            warnings.warn(
                f"classes {sorted(trained & set(unseen))[:5]} are in training and held-out "
                "splits: their held-out (zero-shot) scores are not held-out",
                stacklevel=2,
            )
        self.vocab = {c: i for i, c in enumerate(sorted(set(names) | every))}
        self.report = {
            "settings": self._settings(dm, pl_module),
            "concepts": {"train": seen, "held_out": unseen},
            "n_models": {name: len(part) for name, part in parts.items()},
            "figures": {},
        }

    def _settings(self, dm: Any, pl_module: LightningModule) -> dict[str, Any]:
        plain = str | int | float | bool | None
        hp = pl_module.hparams.items()
        out = {k: v for k, v in hp if isinstance(v, plain) and not k.startswith("_")}
        out |= {
            "label": self.label or getattr(dm, "target", None),
            "raw_dim": self.raw_dim,
            "layers": list(getattr(dm, "layer_names", None) or []),
            "relu": any(isinstance(m, nn.ReLU) for m in pl_module.encoder.modules()),
        }
        scale = getattr(getattr(pl_module, "task", None), "scale", None)
        if isinstance(scale, torch.Tensor):
            out["logit_scale"] = float(scale.detach())
        return out

    def labels(self, enc: Encoded) -> np.ndarray:
        """The integer class of each of ``enc``'s models. Shapes: -> [len(enc)]."""
        return np.array([self.vocab[c] for c in enc.concepts], dtype=np.int64)

    def suite(self, metrics: Callable[..., dict[str, float | None]]) -> dict[str, Any]:
        """``metrics(ref_z, ref_y, query_z, query_y)`` on learned and raw representations, for
        the training classes (references: train; queries: test) and the held-out ones."""
        parts = self.parts or {}
        pairs = {
            "in_distribution": (parts["train"], parts["test"]),
            "held_out": alternate(parts["held_out"]),
        }
        out: dict[str, Any] = {}
        for side, raw in SIDES.items():
            out[side] = {}
            for name, (a, b) in pairs.items():
                za, zb = a.rep(raw), b.rep(raw)
                if za is None or zb is None:  # graph inputs have no raw-weights floor
                    za = zb = np.zeros((0, 1))
                out[side][name] = metrics(za, self.labels(a), zb, self.labels(b))
        return out

    @property
    def pool(self) -> Encoded:
        """Every encoded model: train, test, then held-out."""
        return concat(list((self.parts or {}).values()))

    # ----- results -----
    def add(self, pl_module: LightningModule, values: dict[str, Any]) -> None:
        """Add ``values`` to the report and log their numbers (every rank holds the same, so
        the sync averages equal values and no rank waits on another)."""
        _merge(self.report, values)
        pl_module.log_dict(scalars(values, self.prefix), sync_dist=True)

    def folder(self, trainer: Trainer) -> Path:
        path = Path(self.results_file)
        return path.parent if path.is_absolute() else run_dir(trainer)

    def figure_path(self, trainer: Trainer, name: str) -> Path:
        stem = Path(self.results_file).name.removesuffix(".json").removesuffix("_results")
        return self.folder(trainer) / f"{stem}_{name}.png"

    def write(self, trainer: Trainer) -> Path:
        """Write the report (atomically) into the run folder; return its path."""
        path = self.folder(trainer) / Path(self.results_file).name
        atomic_write_text(path, json.dumps(self.report, indent=2, default=str))
        return path

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.encoded(trainer, pl_module) is not None:
            self.add(pl_module, {"n_models": self.report["n_models"]})

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.report and trainer.is_global_zero:
            print(f"nwa: evaluation results in {self.write(trainer)}", flush=True)
