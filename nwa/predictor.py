"""A trained metanetwork applied to models found in the wild (the library behind ``nwa.predict``).

:meth:`Predictor.load` rebuilds a run's LightningModule from its checkpoint alone: the config it
carries (``nwa_config``), the shapes and targets in its hyperparameters, and what the data module
stored (``ModelZooDataModule``: the tensors read, the input kind, the normalization); the zoo is not
needed. The checkpoint is read with ``torch.load(weights_only=True)``: nothing in it can run code.
:meth:`Predictor.read` reads only the tensors the metanetwork needs from each model, into a batch
built as the data module builds its batches, so a zoo's test split gives the run's test outputs
exactly; :meth:`Predictor.outputs` runs the forward pass.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nwa import calibration
from nwa.data.reading import (
    BATCHED_INPUTS,
    BatchLayout,
    Normalizer,
    collate,
    make_input,
)
from nwa.errors import ConfigError, LayerNotFoundError, NwaError, ShapeMismatchError
from nwa.inputs import ModelRef
from nwa.tasks import Targets
from nwa.weights.source import WeightSource
from nwa.weights.spec import WeightShapes, ZooSpec, check_finite

DATA_KEY = "ModelZooDataModule"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, unpickled safely; one-line errors for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that wants code, a truncated zip ...
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: not a checkpoint nwa can read safely ({reason})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not ckpt.get("nwa_config"):
        raise ConfigError(f"{path}: not an nwa training checkpoint (no state_dict or nwa_config)")
    return ckpt


def build_module(ckpt: dict[str, Any]) -> Any:
    """The run's LightningModule, built from the checkpoint's config and weights, in eval mode."""
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningModule

    hp = ckpt.get("hyper_parameters") or {}
    if "shapes" not in hp or "targets" not in hp:
        raise ConfigError("checkpoint hyperparameters lack the shapes and targets of the data")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", fail_untyped=False)
    parser.add_class_arguments(_Links, "data")
    parser.link_arguments("data.shapes", "model.init_args.shapes", apply_on="instantiate")
    parser.link_arguments("data.targets", "model.init_args.targets", apply_on="instantiate")
    from nwa.lit.align import without_moved_arguments

    config = without_moved_arguments(yaml.safe_load(ckpt["nwa_config"]))
    links = {"shapes": hp["shapes"], "targets": hp["targets"]}
    try:
        parsed = parser.parse_object({"model": config["model"], "data": links})
        module = parser.instantiate(parsed).model
    except Exception as e:
        raise ConfigError(f"cannot rebuild the model from the checkpoint's config: {e}") from None
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()


class _Links:
    """The data-derived model arguments, as the checkpoint stored them."""

    def __init__(self, shapes: dict, targets: dict) -> None:
        layers = {k: tuple(v) for k, v in shapes["layers"].items()}
        self.shapes = WeightShapes(**{**shapes, "layers": layers})
        self.targets = Targets(targets["kind"], tuple(targets["names"]))


def data_state(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """What the data module stored; for checkpoints made before it did, recomputed from the run's
    zoo (which must then be available)."""
    if DATA_KEY in ckpt:
        return ckpt[DATA_KEY]
    import yaml

    from nwa.data import ModelZooDataModule

    config = yaml.safe_load(ckpt["nwa_config"])["data"]["init_args"]
    try:
        return ModelZooDataModule(**config).state_dict()
    except NwaError as e:
        raise ConfigError(
            f"{path}: this checkpoint predates stored input normalization and its zoo cannot be "
            f"read to recompute it ({e})"
        ) from None


@dataclass
class Batch:
    """Models read into one metanetwork input: the refs, the input, and the errors of the
    models left out (``skip_bad``)."""

    refs: list[ModelRef]
    x: Any
    errors: list[str]


class Predictor:
    """A checkpoint's metanetwork, ready to read and score models.

    Attributes:
        module: The LightningModule (eval mode).
        data: The stored data state (see :meth:`ModelZooDataModule.state_dict`).
        calibration: Validation residuals and tree distances (empty if the run stored none).
        targets: What the module predicts.
    """

    def __init__(self, module: Any, data: dict[str, Any], calib: dict[str, Any], path: Path):
        self.module, self.data, self.calibration, self.path = module, data, calib, path
        self.targets: Targets = module.targets
        self.spec = ZooSpec.from_shapes(data["tensors"])
        self.layer_names = list(data["layers"])
        self.input = data["input"]
        norm = data["normalize"]
        self.normalizer = Normalizer(dict(norm["mean"]), dict(norm["std"]))
        self.layout = (
            BatchLayout(self.input, self.spec, self.layer_names)
            if self.input in BATCHED_INPUTS
            else None
        )

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        """Load a training checkpoint (see the module docstring)."""
        path = Path(path)
        ckpt = load_checkpoint(path)
        data = data_state(ckpt, path)
        module = build_module(ckpt)
        return cls(module, data, dict(ckpt.get(calibration.KEY) or {}), path)

    # ----- which models -----
    def selects(self, trees: Sequence[str] | None = None, arch: str | None = None) -> Callable:
        """A manifest-table filter: the run's model selection (its tree and architecture globs)
        unless others are given, so a zoo gives the models the metanetwork was trained for."""
        trees = list(self.data.get("trees") or []) if trees is None else list(trees)
        arch = self.data.get("arch") if arch is None else arch

        def keep(table: Any) -> Any:
            mask = [True] * len(table)
            if trees:
                mask = [any(fnmatch.fnmatchcase(t, g) for g in trees) for t in table["tree"]]
            if arch:
                mask = [m and fnmatch.fnmatchcase(a, arch) for m, a in zip(mask, table["arch"])]
            return mask

        return keep

    def split_names(self, names: Sequence[str]) -> list[str]:
        """Manifest split names for stage names (``train``/``val``/``test``, as the run defined
        them) or split names."""
        stages = self.data.get("splits", {})
        return [s for n in names for s in stages.get(n, [n])]

    def split_of(self, ref: ModelRef) -> str | None:
        """A zoo member's split as the run saw it: its own random split when the run made one
        (``split: {fractions, seed}``), else the manifest's."""
        if ref.row is None:
            return None
        own = self.data.get("model_splits") or {}
        return own.get(str(ref.row.get("id")), ref.row.get("split"))

    # ----- reading -----
    def check(self, source: WeightSource, where: str | Path) -> None:
        """Raise a one-line error naming what the metanetwork expects and what the model has."""
        for layer in self.spec.layers:
            if layer.name not in source:
                close = difflib.get_close_matches(layer.name, source.names(), n=3, cutoff=0.5)
                found = (
                    f"close names: {', '.join(close)}"
                    if close
                    else f"{len(source.names())} other tensors"
                )
                raise LayerNotFoundError(
                    where,
                    f"the metanetwork reads tensor {layer.name!r} of shape {list(layer.shape)}; "
                    f"this model has none ({found})",
                    tensor=layer.name,
                )
            shape = tuple(source.info(layer.name).shape)
            if shape != layer.shape:
                raise ShapeMismatchError(
                    where,
                    f"the metanetwork expects shape {list(layer.shape)}, this model has {list(shape)}",
                    tensor=layer.name,
                )

    def _read_one(self, ref: ModelRef, slot: dict[str, torch.Tensor] | None) -> Any:
        """Read a model's tensors into its batch slot (batched inputs) or return its input."""
        with ref.open() as source:
            self.check(source, ref.location)
            if slot is not None:
                for name, t in slot.items():
                    source.read_into(name, t)
                return None
            tensors = {}
            for name in self.spec.names:
                t = source.get(name).float()
                check_finite(t, ref.location, name)
                tensors[name] = t
        return make_input(self.input, self.normalizer(tensors), self.spec, self.layer_names)

    def read(self, refs: Sequence[ModelRef], skip_bad: bool = False) -> Batch:
        """One batch of models, normalized as in training; a model that cannot be read raises
        its one-line error, or with ``skip_bad`` is left out and its error returned."""
        errors, good, items = [], [], []
        slots: list[Any] = [None] * len(refs)
        x = None
        if self.layout is not None:
            x, slots = self.layout.empty(len(refs))
        for j, (ref, slot) in enumerate(zip(refs, slots)):
            try:
                item = self._read_one(ref, slot)
                if slot is not None:
                    for name, t in slot.items():
                        check_finite(t, ref.location, name)
            except NwaError as e:
                if not skip_bad:
                    raise
                errors.append(str(e))
                continue
            good.append(j)
            items.append(item)
        kept = [refs[j] for j in good]
        if not good:
            return Batch([], None, errors)
        if self.layout is None:
            return Batch(kept, collate(self.input, items), errors)
        if len(good) < len(refs):
            index = torch.tensor(good)
            x = {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]
        self.normalizer.apply_(self.layout.layers(x))
        return Batch(kept, x, errors)

    # ----- scoring -----
    @torch.inference_mode()
    def outputs(self, x: Any) -> dict[str, torch.Tensor]:
        """The module's outputs for one batch: ``out`` (what its metrics take), ``pred`` (what a
        user reads: probabilities or values) and, for a tree router, ``tree`` and ``distance``."""
        module = self.module
        out = module(x)
        result = {"out": out, "pred": module.task.predict(out)}
        if hasattr(module, "router"):
            ids, dist = module.router.nearest(module._router_input(x))
            result |= {"tree": ids, "distance": dist}
        if hasattr(module.task, "model_embeddings"):
            result["embedding"] = module.task.model_embeddings(module.encoder(x))
        return result

    def half_widths(self, coverage: float) -> list[float]:
        """Interval half-width of each property at ``coverage`` (``nan``: not calibrated)."""
        if self.targets.kind != "regression":
            return []
        return calibration.half_widths(self.calibration, self.targets.names, coverage)

    def tree_threshold(self, coverage: float) -> float:
        return calibration.tree_threshold(self.calibration, coverage)

    def concept_scores(self, embeddings: torch.Tensor, concepts: Sequence[str]) -> torch.Tensor:
        """Probabilities of free-text concepts (zero-shot), from model embeddings [B, D]."""
        feats = self.module.concept_features(list(concepts)).to(embeddings)
        logits = self.module.task.scale.detach() * embeddings @ feats.T
        return logits.softmax(-1)


def label_of(ref: ModelRef, name: str) -> Any:
    """A zoo member's label (a manifest column or a ``labels`` entry); ``None`` if unknown."""
    row = ref.row or {}
    if name in row:
        value = row[name]
    else:
        value = (row.get("labels") or {}).get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def targets_of(predictor: Predictor, refs: Sequence[ModelRef]) -> torch.Tensor | None:
    """The true targets of zoo members, encoded as the data module encodes them, or ``None``
    when some model has no known target."""
    t = predictor.targets
    data_target = predictor.data.get("target")
    if any(r.row is None for r in refs):
        return None
    if t.kind == "regression":
        values = [[label_of(r, p) for p in t.names] for r in refs]
        if any(v is None for row in values for v in row):
            return None
        return torch.tensor(values, dtype=torch.float32)
    if t.kind == "multilabel":
        y = torch.zeros(len(refs), t.n)
        for i, r in enumerate(refs):
            names = r.zoo.meta.classes
            for c in r.row["classes"]:
                if names[c] in t.names:
                    y[i, t.names.index(names[c])] = 1.0
        return y
    index = {n: i for i, n in enumerate(t.names)}
    return torch.tensor([index.get(r.row.get(data_target), -1) for r in refs], dtype=torch.long)
