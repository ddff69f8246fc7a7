"""ModelZooDataModule: batches of model weights, with labels, from any zoo."""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, get_worker_info

from nwa.data.dataset import CollatedItems, WeightDataset
from nwa.data.reading import (
    BATCHED_INPUTS,
    INPUTS,
    BatchLayout,
    BatchMemory,
    Normalizer,
    collate,
    read_layers,
    resolve_graphs,
    resolve_spec,
)
from nwa.data.sampling import EpochShuffle, derived_seed, global_seed
from nwa.data.selection import AUTO_LAYERS, apply_presets, resplit, select_rows
from nwa.data.targets import Target
from nwa.errors import ConfigError, NonFiniteWeightsError, NwaError
from nwa.tasks import Targets
from nwa.weights.spec import WeightShapes
from nwa.zoo.manifest import Zoo

_NORM_MODELS = 256
DIVERGED = ("small_cnn_zoo",)
"""Adapters of zoos that hold diverged (NaN) runs, which ``drop_nonfinite`` leaves out by default."""


class ModelZooDataModule(L.LightningDataModule):
    """Batches of model weights and their labels, from a zoo directory, a default zoo, or an adapter.

    Everything a model needs to be built (shapes, number of classes, property names) is known
    right after construction, for LightningCLI argument links.

    Any zoo works by ``zoo`` alone: every model is used unless ``trees``/``arch`` (or a matching
    ``zoo_presets`` entry) narrow them, and unset ``layers`` fit the input (:data:`AUTO_LAYERS`:
    the largest weight matrix for ``matrix``/``flat``, every weight and bias for ``stats``, every
    weight of two or more dimensions for ``chain``/``graph``).

    Args:
        zoo: A zoo directory, a public-zoo directory read by ``adapter``, or the name of an
            embedded zoo config (``tiny``, ``default_vision``, ``default_lora``) built on first use
            and cached under ``$NWA_HOME``.
        adapter: ``model_j``, ``model_j_lora`` or ``small_cnn_zoo`` for public layouts; ``None``
            detects the layout.
        adapter_options: Options of the adapter's reader, e.g. ``{step: last, seed: 0}`` for the
            Small CNN Zoo (see :mod:`nwa.zoo.adapters`).
        layers: Which tensors: an exact name, a glob, ``re:REGEX``, an index into the layout,
            ``largest`` (the largest tensor of two or more dimensions, the deepest among equals),
            ``matrices`` (every such tensor), or a list of these; ``None``: by ``input``.
        input: The metanetwork family's input: ``matrix`` (one 2-D matrix per layer), ``flat``
            (one vector), ``stats`` (StatNN features), ``spectral`` (WeightWatcher-style
            spectral features of each selected 2-D+ weight, computed on the raw weights),
            ``graph`` (neural graph), ``chain`` (per-layer weights and biases, for neuron tokens).
        target: Any label of the zoo by name, predicted as the zoo's label schema declares it
            (:mod:`nwa.data.targets`): ``classes`` (multi-label training classes), ``concept``,
            ``tree``, ``arch``, ``test_acc``, or any label or hyperparameter the models record
            (e.g. ``activation`` in the Small CNN Zoo); or ``properties`` (one regression over
            the numeric labels in ``properties``) or ``labels`` (one head per label in
            ``properties``, each a class label or a value).
        properties: Regression targets for ``target: properties`` (models without a value are
            left out, with a warning); the labels of ``target: labels``.
        trees: Keep only models whose tree matches one of these globs (``None``: every tree).
        arch: Keep only models whose architecture matches this glob (``None``: every one).
        zoo_presets: Choices for particular zoos: a list of ``{trees, arch, layers}`` (and
            optionally ``zoos``: name globs); the first entry whose trees and arch select some of
            the zoo's models (in a zoo whose name matches) fills the fields this config leaves
            unset (recipes name the trees and layers of the zoos nwa builds this way).
        split: Split the selected models other than as the zoo does: ``{fractions: [train, val,
            test], seed: 0}`` (a seeded random split; NFN holds out half for test:
            ``[0.45, 0.05, 0.5]``) or ``{column: NAME}`` (split names from a label or
            hyperparameter).
        train_splits: Manifest splits used for training.
        val_splits: Manifest splits used for validation.
        test_splits: Manifest splits used for testing.
        normalize: Standardize each layer by its mean and std over training models (not for
            the ``spectral`` input, whose features describe the raw weights).
        permute_augment: Permute hidden neurons of training models (``chain`` and ``graph``).
        drop_nonfinite: Leave out models with NaN/Inf weights (with a warning) instead of
            failing; ``None``: only in zoos known to hold diverged runs (the Small CNN Zoo, whose
            authors drop them too, and zoos whose schema declares a ``diverged`` label).
        graph_max_edges: Refuse models whose neural graph (``graph`` input) has more edges
            (``None``: ``nwa.weights.graph_archs.MAX_EDGES``, 4 M); select a layer range of
            larger models.
        batch_size: Global batch size; each of ``world_size`` ranks gets an equal share.
        num_workers: DataLoader worker processes.
        cache: Keep read tensors in memory (only the selected layers).
        max_models: Use at most this many models per split (for quick runs).
        seed: Seed for augmentation and subsampling.
    """

    def __init__(
        self,
        zoo: str,
        adapter: str | None = None,
        adapter_options: dict[str, Any] | None = None,
        layers: str | int | list[str | int] | None = None,
        input: Literal["matrix", "flat", "stats", "spectral", "graph", "chain"] = "matrix",
        target: str = "classes",
        properties: Sequence[str] = ("test_acc", "gen_gap", "robustness"),
        trees: Sequence[str] | None = None,
        arch: str | None = None,
        zoo_presets: list[dict[str, Any]] | None = None,
        split: dict[str, Any] | None = None,
        train_splits: Sequence[str] = ("train",),
        val_splits: Sequence[str] = ("val",),
        test_splits: Sequence[str] = ("test",),
        normalize: bool = True,
        permute_augment: bool = False,
        drop_nonfinite: bool | None = None,
        graph_max_edges: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        cache: bool = True,
        max_models: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if input not in INPUTS:
            raise ConfigError(f"input {input!r} is not one of {INPUTS}")
        if permute_augment and input not in ("chain", "graph"):
            raise ConfigError(
                "permute_augment needs input 'chain' or 'graph' (whole networks, so the permutation is a symmetry)"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.input, self.target, self.properties = input, target, list(properties)
        self.batch_size, self.num_workers, self.cache = batch_size, num_workers, cache
        self.zoo = _open_zoo(zoo, adapter, adapter_options)
        given = {"trees": trees, "arch": arch, "layers": layers}
        self.selection = apply_presets(self.zoo, zoo_presets, given)
        if self.selection["layers"] is None:
            self.selection["layers"] = AUTO_LAYERS[input]
        rows = select_rows(self.zoo, self.selection["trees"], self.selection["arch"])
        self._target = Target(self.zoo, target, properties)
        rows = self._target.keep(resplit(rows, self.zoo, split))
        # a run that splits the zoo its own way keeps each model's split (max_models aside), so
        # that nwa.predict's ``--split test`` means this run's test models, not the manifest's
        self._own_splits = (
            dict(zip(rows["id"].astype(str), rows["split"])) if split is not None else None
        )
        self.rows = self._first_per_split(rows)
        self.splits = {
            "train": list(train_splits),
            "val": list(val_splits),
            "test": list(test_splits),
        }
        for stage, names in self.splits.items():
            if stage != "test" and self.rows["split"].isin(names).sum() == 0:
                raise ConfigError(
                    f"{self.zoo.root}: no selected model is in the {stage} splits {names}; "
                    f"they are in {sorted(set(self.rows['split']))}"
                )
        layers = self.selection["layers"]
        # graph input: a plan per model, so one batch may mix architectures and sizes
        self.graphs = (
            resolve_graphs(self.zoo, self.rows, layers, graph_max_edges)
            if input == "graph"
            else None
        )
        if self.graphs is not None:
            self.spec, self.extra_names = self.graphs.union_spec(), []
        else:
            self.spec, self.extra_names = resolve_spec(self.zoo, self.rows, layers, input)
        self.layer_names = [n for n in self.spec.names if n not in self.extra_names]
        if input == "spectral":
            flat = [n for n in self.spec.names if len(self.spec[n].shape) < 2]
            if flat:
                raise ConfigError(
                    f"input 'spectral' needs 2-D or larger weights, but {flat[:4]} are 1-D; narrow data.layers"
                )
        self.layout = (
            BatchLayout(input, self.spec, self.layer_names) if input in BATCHED_INPUTS else None
        )
        self._memory = BatchMemory()
        self.targets: Targets = self._target.targets(self.rows)
        self.class_names = list(self.targets.names)
        self.normalizer = Normalizer.identity(self.spec.names)
        self._datasets: dict[str, WeightDataset] = {}
        self.epoch = 0  # the training epoch augmentations are drawn for (see set_epoch)
        held = self.zoo.meta.build.get("adapter") in DIVERGED or "diverged" in (
            self.zoo.meta.label_schema or {}
        )
        if drop_nonfinite or (drop_nonfinite is None and held):
            self.rows = self._drop_nonfinite(self.rows)
        if normalize and input != "spectral":
            self.normalizer = self._fit_normalizer()

    # ----- what models need to be built (LightningCLI links) -----
    @property
    def layer_shapes(self) -> dict[str, tuple[int, int]]:
        """2-D shape of each selected layer (the ``matrix`` input)."""
        return {n: self.spec[n].matrix for n in self.layer_names}

    @property
    def flat_dim(self) -> int:
        return sum(self.spec[n].numel for n in self.layer_names)

    @property
    def stats_dim(self) -> int:
        """Features of the ``stats`` (7 per tensor) or ``spectral`` input (6 per tensor)."""
        from nwa.weights.spectral import FEATURES

        per_tensor = len(FEATURES) if self.input == "spectral" else 7
        return per_tensor * len(self.spec.names)

    @property
    def chain_shapes(self) -> list[tuple[int, int, int]]:
        """(out, in, kernel) of each layer of the ``chain`` input."""
        if self.graphs is not None:
            return []
        out = []
        for n in self.layer_names:
            shape = self.spec[n].shape
            k = int(np.prod(shape[2:])) if len(shape) > 2 else 1
            out.append((shape[0], shape[1] if len(shape) > 1 else 1, k))
        return out

    @property
    def shapes(self) -> WeightShapes:
        """Every input shape, for the ``model.shapes`` link."""
        return WeightShapes(
            self.layer_shapes,
            self.flat_dim,
            self.stats_dim,
            tuple(self.chain_shapes),
            self.graphs.shapes if self.graphs is not None else None,
        )

    def train_targets(self) -> torch.Tensor:
        return self.dataset("train").targets

    @property
    def num_outputs(self) -> int:
        """Classes (or properties, for regression) the head predicts."""
        return len(self.targets.names)

    @property
    def task_type(self) -> str:
        return self._target.task_type

    # ----- rows, labels -----
    def _first_per_split(self, rows: pd.DataFrame) -> pd.DataFrame:
        max_models = self.hparams.max_models
        if max_models:
            rows = rows.groupby("split", group_keys=False).apply(lambda g: g.head(max_models))
        return rows.reset_index(drop=True)

    def encode_targets(self, rows: pd.DataFrame) -> torch.Tensor:
        """The target tensor of each row: multi-hot, class index, property values, or one column
        per label (``labels``: class index or value)."""
        return self._target.encode(rows, self.targets)

    def target_names(self, rows: pd.DataFrame) -> list[str]:
        """Each row's class name, for categorical targets (a LoRA's concept, say)."""
        return self._target.row_names(rows)

    def model_ref(self, row: Mapping[str, Any]) -> str:
        """``model ID, manifest row K`` (and the row of a one-array zoo's file, e.g. the Small
        CNN Zoo's ``weights.npy``)."""
        ids = self.zoo.table["id"].to_numpy()
        ref = f"model {row['id']}, manifest row {int(np.flatnonzero(ids == row['id'])[0])}"
        npy = (row.get("labels") or {}).get("npy_row")
        return ref + (f", {Path(self.zoo.path_of(row)).name} row {npy}" if npy is not None else "")

    def nonfinite(self, error: NonFiniteWeightsError, row: Mapping[str, Any]) -> NwaError:
        """``error`` naming the model (id, rows) and the option that leaves such models out."""
        return NonFiniteWeightsError(
            error.path,
            f"{error.reason} ({self.model_ref(row)}); set data.init_args.drop_nonfinite: true to "
            "leave such models out",
            error.tensor,
        )

    def _drop_nonfinite(self, rows: pd.DataFrame) -> pd.DataFrame:
        keep, dropped = [], []
        for _, row in rows.iterrows():
            try:
                read_layers(self.zoo, row, self.tensor_names(row), check=True)
                keep.append(True)
            except NonFiniteWeightsError as e:
                dropped.append(f"{e} ({self.model_ref(row)})")
                keep.append(False)
        if dropped:
            warnings.warn(
                f"leaving out {len(dropped)} models with NaN/Inf weights (drop_nonfinite), e.g. "
                f"{dropped[0]}",
                stacklevel=2,
            )
        return rows[keep].reset_index(drop=True)

    def _fit_normalizer(self) -> Normalizer:
        train = self.dataset("train")
        idx = list(range(len(train)))
        if len(idx) > _NORM_MODELS:
            idx = sorted(random.Random(0).sample(idx, _NORM_MODELS))
        return Normalizer.fit([train.tensors(i) for i in idx])

    # ----- datasets, loaders -----
    def dataset(self, stage: str) -> WeightDataset:
        """The dataset of a stage (``train``/``val``/``test``) or of one manifest split name."""
        if stage not in self._datasets:
            splits = self.splits.get(stage, [stage])
            rows = self.rows[self.rows["split"].isin(splits)]
            self._datasets[stage] = WeightDataset(
                self, rows, augment=stage == "train" and self.hparams.permute_augment
            )
        return self._datasets[stage]

    def tensor_names(self, row: Any) -> list[str]:
        """The tensors read from one model (its graph's, for the ``graph`` input)."""
        return self.graphs.plan(row).names if self.graphs is not None else self.spec.names

    def set_epoch(self, epoch: int) -> None:
        """The training epoch to draw augmentations for (the LightningModules call it)."""
        self.epoch = epoch

    def permute(
        self, tensors: dict[str, torch.Tensor], index: int, row: Any = None
    ) -> dict[str, torch.Tensor]:
        """Randomly permute hidden neurons of the selected chain, or of the whole network for
        the ``graph`` input (a function-preserving symmetry).

        The permutation depends only on the seeds, the epoch and the model's ``index``, so a
        resumed run draws what an unbroken run draws.
        """
        from nwa.weights.symmetry import (
            permute_network,
            random_network_permutation,
            random_permute_state_dict,
        )

        seed = derived_seed(self.hparams.seed, global_seed(), self.epoch, index)
        gen = torch.Generator().manual_seed(seed)
        if self.graphs is not None:
            plan = self.graphs.plan(row)
            return permute_network(tensors, plan, random_network_permutation(plan, gen))
        return random_permute_state_dict(tensors, self.layer_names, generator=gen)

    def per_rank_batch_size(self) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise ConfigError(
                f"batch_size {self.batch_size} is not divisible by the world size {world}"
            )
        return self.batch_size // world

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(stage)
        sampler = None
        if shuffle:
            # the order of an epoch depends on the seeds and the epoch only (resumable runs)
            epoch = getattr(self.trainer, "current_epoch", 0)
            self.epoch = epoch
            sampler = EpochShuffle(ds, derived_seed(self.hparams.seed, global_seed()), epoch)
        return DataLoader(
            ds,
            batch_size=max(1, min(self.per_rank_batch_size(), len(ds))),
            sampler=sampler,
            num_workers=self.num_workers,
            # workers keep a copy of the dataset: augmenting ones restart each epoch to see it
            persistent_workers=self.num_workers > 0 and not ds.augment,
            collate_fn=self.collate,
        )

    def batch_memory(self, numel: int) -> torch.Tensor:
        """Uninitialised float32 memory for one batch built in place.

        In a DataLoader worker it is shared memory, as the default collate allocates, so sending
        the batch to the main process copies nothing; in the main process blocks are reused once
        their last batch is gone (:class:`BatchMemory`).
        """
        if get_worker_info() is not None:
            storage = torch.UntypedStorage._new_shared(numel * 4)
            return torch.empty(0).set_(storage, 0, (numel,))
        return self._memory(numel)

    def teardown(self, stage: str) -> None:
        self._memory.release()

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if isinstance(items, CollatedItems):
            return items.batch
        return {
            "x": collate(self.input, [it["x"] for it in items]),
            "y": torch.stack([torch.as_tensor(it["y"]) for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
        }

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def loader(self, splits: Sequence[str], batch_size: int | None = None) -> DataLoader:
        """A loader over the given manifest splits, in manifest order (for evaluation)."""
        key = "+".join(splits)
        if key not in self._datasets:
            self._datasets[key] = WeightDataset(
                self, self.rows[self.rows["split"].isin(list(splits))]
            )
        return DataLoader(
            self._datasets[key], batch_size=batch_size or self.batch_size, collate_fn=self.collate
        )

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to read new models as this module read the zoo's (Lightning
        stores it in every checkpoint): the input kind, each tensor's name and shape, the
        layers (as opposed to paired biases), the normalization, and the model selection.
        Plain containers, so ``torch.load(weights_only=True)`` reads it."""
        sel = self.selection  # after the zoo's presets: the models this run actually read
        return {
            "input": self.input,
            "target": self.target,
            "tensors": {n: list(self.spec[n].shape) for n in self.spec.names},
            "layers": list(self.layer_names),
            "normalize": {"mean": dict(self.normalizer.mean), "std": dict(self.normalizer.std)},
            "zoo": self.zoo.meta.name,
            "trees": list(sel["trees"] or []),
            "arch": sel["arch"],
            "splits": {k: list(v) for k, v in self.splits.items()},
            "batch_size": self.batch_size,
        } | ({"model_splits": self._own_splits} if self._own_splits is not None else {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: the module recomputes the same state from its zoo."""

    def describe(self) -> str:
        counts = {s: int(self.rows["split"].isin(v).sum()) for s, v in self.splits.items()}
        return (
            f"{self.zoo.meta.name}: {len(self.rows)} models {counts}, input={self.input}, target={self.target} "
            f"({self.num_outputs} outputs), layers={self.layer_names[:4]}{'...' if len(self.layer_names) > 4 else ''}"
        )


def _open_zoo(zoo: str, adapter: str | None, options: dict[str, Any] | None) -> Zoo:
    from nwa.zoo.cache import zoo_path

    path = zoo_path(zoo)
    if adapter is None and not options and (path / "zoo.json").is_file():
        return Zoo.open(path)
    from nwa.zoo.adapters import open_zoo

    return open_zoo(path, adapter, **(options or {}))
