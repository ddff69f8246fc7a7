"""ModelZooDataModule: batches of model weights, with labels, from any zoo."""

from __future__ import annotations

import fnmatch
import random
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from nwa.data.labels import encode_labels, label_targets
from nwa.data.reading import (
    BATCHED_INPUTS,
    INPUTS,
    BatchLayout,
    BatchMemory,
    Normalizer,
    check_finite_batch,
    collate,
    make_input,
    read_layers,
    read_layers_into,
    resolve_graphs,
    resolve_spec,
)
from nwa.errors import ConfigError, NonFiniteWeightsError, ZooError
from nwa.tasks import Targets
from nwa.weights.spec import WeightShapes
from nwa.zoo.manifest import Zoo

TARGETS = ("classes", "concept", "tree", "arch", "properties", "labels")
_NORM_MODELS = 256


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
        t = read_layers(self.dm.zoo, self._records[i], self.dm.tensor_names(self._records[i]))
        if self.dm.cache:
            self._cache[i] = t
        return t

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i in self._inputs:
            return {"x": self._inputs[i], "y": self.targets[i], "index": i}
        tensors = self.dm.normalizer(self.tensors(i))
        record = self._records[i]
        if self.augment:
            tensors = self.dm.permute(tensors, record)
        plan = self.dm.graphs.plan(record) if self.dm.graphs is not None else None
        where = str(self.dm.zoo.path_of(record))
        x = make_input(self.dm.input, tensors, self.dm.spec, self.dm.layer_names, plan, where)
        if self.dm.cache and not self.augment and self.dm.input == "stats":
            # StatNN features sort every tensor: compute them once, not every epoch.
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
        check_finite_batch(layers, lambda j: dm.zoo.path_of(self._records[indices[j]]))
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


class ModelZooDataModule(L.LightningDataModule):
    """Batches of model weights and their labels, from a zoo directory, a default zoo, or an adapter.

    Everything a model needs to be built (shapes, number of classes, property names) is known
    right after construction, for LightningCLI argument links.

    Args:
        zoo: A zoo directory, a public-zoo directory read by ``adapter``, or the name of an
            embedded zoo config (``tiny``, ``default_vision``, ``default_lora``) built on first use
            and cached under ``$NWA_HOME``.
        adapter: ``model_j``, ``model_j_lora`` or ``small_cnn_zoo`` for public layouts; ``None``
            detects the layout.
        layers: Which tensors: an exact name, a glob, ``re:REGEX``, an index into the layout, or
            a list of these.
        input: The metanetwork family's input: ``matrix`` (one 2-D matrix per layer), ``flat``
            (one vector), ``stats`` (StatNN features), ``graph`` (neural graph), ``chain``
            (per-layer weights and biases, for neuron tokens).
        target: ``classes`` (multi-label training classes), ``concept``, ``tree`` or ``arch``
            (multi-class), ``properties`` (regression), or ``labels`` (several labels at once,
            one head each: each of ``properties`` is a class label or a value, as the zoo's
            label schema declares or its values show).
        properties: Regression targets for ``target: properties``; the labels of
            ``target: labels``.
        trees: Keep only models whose tree matches one of these globs.
        arch: Keep only models whose architecture matches this glob.
        train_splits: Manifest splits used for training.
        val_splits: Manifest splits used for validation.
        test_splits: Manifest splits used for testing.
        normalize: Standardize each layer by its mean and std over training models.
        permute_augment: Permute hidden neurons of training models (``chain`` and ``graph``).
        drop_nonfinite: Drop models with NaN/Inf weights (with a warning) instead of failing.
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
        layers: str | int | list[str | int] = "*weight",
        input: Literal["matrix", "flat", "stats", "graph", "chain"] = "matrix",
        target: Literal["classes", "concept", "tree", "arch", "properties", "labels"] = "classes",
        properties: Sequence[str] = ("test_acc", "gen_gap", "robustness"),
        trees: Sequence[str] | None = None,
        arch: str | None = None,
        train_splits: Sequence[str] = ("train",),
        val_splits: Sequence[str] = ("val",),
        test_splits: Sequence[str] = ("test",),
        normalize: bool = True,
        permute_augment: bool = False,
        drop_nonfinite: bool = False,
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
        if target not in TARGETS:
            raise ConfigError(f"target {target!r} is not one of {TARGETS}")
        if permute_augment and input not in ("chain", "graph"):
            raise ConfigError(
                "permute_augment needs input 'chain' or 'graph' (whole networks, so the permutation is a symmetry)"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.input, self.target, self.properties = input, target, list(properties)
        self.batch_size, self.num_workers, self.cache = batch_size, num_workers, cache
        self.zoo = _open_zoo(zoo, adapter)
        self.rows = self._filter(self.zoo.table, trees, arch, drop_nonfinite)
        self.splits = {
            "train": list(train_splits),
            "val": list(val_splits),
            "test": list(test_splits),
        }
        self._check_labels()
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
        self.layout = (
            BatchLayout(input, self.spec, self.layer_names) if input in BATCHED_INPUTS else None
        )
        self._memory = BatchMemory()
        self.class_names = self._class_names()
        self.normalizer = Normalizer.identity(self.spec.names)
        self._datasets: dict[str, WeightDataset] = {}
        self._rng = random.Random(seed)
        if drop_nonfinite:
            self.rows = self._drop_nonfinite(self.rows)
        if normalize:
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
        return 7 * len(self.spec.names)

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

    @property
    def targets(self) -> Targets:
        """What to predict, for the ``model.targets`` link."""
        if self.target == "labels":
            return label_targets(self.zoo, self.rows, self.properties)
        return Targets(self.task_type, tuple(self.class_names))

    def train_targets(self) -> torch.Tensor:
        return self.dataset("train").targets

    @property
    def num_outputs(self) -> int:
        """Classes (or properties, for regression) the head predicts."""
        if self.target in ("properties", "labels"):
            return len(self.properties)
        return len(self.class_names)

    @property
    def task_type(self) -> str:
        kinds = {"classes": "multilabel", "properties": "regression", "labels": "multitask"}
        return kinds.get(self.target, "multiclass")

    # ----- rows, labels -----
    def _filter(
        self, table: pd.DataFrame, trees: Sequence[str] | None, arch: str | None, drop: bool
    ) -> pd.DataFrame:
        rows = table
        if trees:
            rows = rows[[any(fnmatch.fnmatchcase(t, g) for g in trees) for t in rows["tree"]]]
        if arch:
            rows = rows[[fnmatch.fnmatchcase(a, arch) for a in rows["arch"]]]
        if rows.empty:
            raise ConfigError(
                f"{self.zoo.root}: no model matches trees={list(trees or [])} arch={arch!r}; trees: {sorted(set(table['tree']))[:8]}, archs: {sorted(set(table['arch']))}"
            )
        max_models = self.hparams.max_models
        if max_models:
            rows = rows.groupby("split", group_keys=False).apply(lambda g: g.head(max_models))
        return rows.reset_index(drop=True)

    def _check_labels(self) -> None:
        root = self.zoo.root
        if self.target == "classes" and not any(len(c) for c in self.rows["classes"]):
            raise ConfigError(
                f"{root}: target 'classes' needs training classes, but the selected models have none"
            )
        if self.target == "concept" and not any(self.rows["concept"]):
            raise ConfigError(
                f"{root}: target 'concept' needs concepts, but the selected models have none"
            )
        if self.target in ("properties", "labels"):
            if not self.properties:
                raise ConfigError(f"target {self.target!r} needs at least one property")
            for p in self.properties:
                try:
                    values = self.zoo.label(p)
                except ZooError as e:
                    raise ConfigError(str(e)) from None
                if values.loc[self.zoo.table["id"].isin(self.rows["id"])].isna().all():
                    raise ConfigError(f"{root}: label {p!r} is unknown for every selected model")
        for stage, names in self.splits.items():
            if stage != "test" and self.rows["split"].isin(names).sum() == 0:
                raise ConfigError(f"{root}: no selected model is in the {stage} splits {names}")

    def _class_names(self) -> list[str]:
        if self.target == "classes":
            used = sorted({c for cs in self.rows["classes"] for c in cs})
            return [self.zoo.meta.classes[c] for c in used]
        if self.target in ("properties", "labels"):
            return list(self.properties)
        column = {"concept": "concept", "tree": "tree", "arch": "arch"}[self.target]
        return sorted(set(self.rows[column]) - {""})

    def encode_targets(self, rows: pd.DataFrame) -> torch.Tensor:
        """The target tensor of each row: multi-hot, class index, or property values."""
        if self.target == "classes":
            index = {self.zoo.meta.classes.index(n): i for i, n in enumerate(self.class_names)}
            y = torch.zeros(len(rows), len(self.class_names))
            for r, cs in enumerate(rows["classes"]):
                for c in cs:
                    y[r, index[c]] = 1.0
            return y
        if self.target == "labels":
            return encode_labels(self.zoo, rows, self.targets)
        if self.target == "properties":
            cols = [self.zoo.label(p).set_axis(self.zoo.table["id"]) for p in self.properties]
            return torch.tensor(
                np.stack([c.loc[rows["id"]].to_numpy(dtype=np.float32) for c in cols], axis=1)
            )
        index = {n: i for i, n in enumerate(self.class_names)}
        return torch.tensor([index.get(v, -1) for v in rows[self.target]], dtype=torch.long)

    def _drop_nonfinite(self, rows: pd.DataFrame) -> pd.DataFrame:
        keep = []
        for _, row in rows.iterrows():
            try:
                read_layers(self.zoo, row, self.tensor_names(row), check=True)
                keep.append(True)
            except NonFiniteWeightsError as e:
                import warnings

                warnings.warn(f"dropping model {row['id']}: {e}", stacklevel=2)
                keep.append(False)
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

    def permute(self, tensors: dict[str, torch.Tensor], row: Any = None) -> dict[str, torch.Tensor]:
        """Randomly permute hidden neurons of the selected chain, or of the whole network for
        the ``graph`` input (a function-preserving symmetry)."""
        from nwa.weights.symmetry import (
            permute_network,
            random_network_permutation,
            random_permute_state_dict,
        )

        gen = torch.Generator().manual_seed(self._rng.getrandbits(31))
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
        return DataLoader(
            ds,
            batch_size=max(1, min(self.per_rank_batch_size(), len(ds))),
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
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

    def describe(self) -> str:
        counts = {s: int(self.rows["split"].isin(v).sum()) for s, v in self.splits.items()}
        return (
            f"{self.zoo.meta.name}: {len(self.rows)} models {counts}, input={self.input}, target={self.target} "
            f"({self.num_outputs} outputs), layers={self.layer_names[:4]}{'...' if len(self.layer_names) > 4 else ''}"
        )


def _open_zoo(zoo: str, adapter: str | None) -> Zoo:
    from nwa.zoo.cache import zoo_path

    path = zoo_path(zoo)
    if adapter is None and (path / "zoo.json").is_file():
        return Zoo.open(path)
    from nwa.weights.adapters import open_zoo

    return open_zoo(path, adapter)
