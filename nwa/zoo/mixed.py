"""The mixed-architecture zoo recipe: the seed "Neural Weight Archeology"'s benchmark in small.

Every member is trained from its own random initialization (no tree root): an architecture drawn
from one of several families (MLPs, Small-CNN-Zoo convolution chains, ResNets, ViTs; rows of
:data:`~nwa.zoo.classifiers.ARCHS` or timm names), an optimizer, a learning rate in that
optimizer's range, a training-set size and a training length, all sampled from a generator seeded
by the member's id, so any shard, worker or resumed build reproduces it. Members train on every
class of the source. Labels (declared in the zoo's ``label_schema``):

- ``family`` (classes): the architecture family, ``mlp``, ``cnn``, ``resnet``, ``vit``;
- ``optimizer`` (classes): the optimizer name (:data:`~nwa.zoo.classifiers.OPTIMIZERS`);
- ``data_size``: log10 of the number of training images;
- ``n_params``: log10 of the parameter count (tensors saved, BatchNorm statistics excluded);
- ``steps``: the training length in optimizer steps;
- ``train_acc``, ``val_acc``, ``test_acc``, ``gen_gap``, ``robustness`` as in
  :mod:`nwa.zoo.vision` (over all classes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from nwa.zoo import datasets
from nwa.zoo.classifiers import (
    AUGMENTATIONS,
    OPTIMIZERS,
    arch_name,
    family_of,
    pick,
    stable_seed,
    state_tensors,
    train,
)
from nwa.zoo.manifest import ZooWriter
from nwa.zoo.recipe import Job, argument, pick_device
from nwa.zoo.vision import VisionRecipe, sample_hparams

DEFAULT_ARCHS = {
    "mlp": ["mlp_small", "mlp_wide"],
    "cnn": ["cnn_small", "cnn_wide"],
    "resnet": ["resnet_micro"],
    "vit": ["vit_mini"],
}
DEFAULT_LR = {"sgd": [0.01, 0.1], "adam": [0.0003, 0.003]}


class MixedRecipe(VisionRecipe):
    """Models of several architecture families, each trained from scratch with sampled
    optimizer, learning rate, data size and length.

    Args:
        name: Prefix of model ids.
        source: Image source (see :mod:`nwa.zoo.datasets`).
        source_options: Options of the source (``n_train``, ``n_test`` for drawn sources).
        n_classes: Use the first ``n_classes`` classes of the source (default all).
        image_size: Input side of the models (default: the source's own).
        archs: Family name -> architectures of that family (rows of
            :data:`~nwa.zoo.classifiers.ARCHS` or timm names); a member draws one uniformly.
        members_per_family: Members of each family.
        optimizers: Optimizer name -> learning-rate range ``[low, high]`` (log-uniform); a member
            draws an optimizer uniformly.
        steps: Training length range ``[low, high]`` in steps (uniform, inclusive).
        weight_decay: Weight decay choices.
        batch_size: Batch size choices.
        train_images: Choices for the number of training images (all classes, a seeded subset of
            the training split).
        augment: Augmentation flags, each switched on per member with probability 1/2.
        val_images: Images of the training split held out for validation.
        eval_images: Images per accuracy estimate.
        corruption_sigma: Std of the Gaussian noise for ``robustness``.
        splits: Fractions of each family's members in train / val / test.
        device: ``cpu``, ``cuda[:N]`` or ``auto``.
    """

    def __init__(
        self,
        name: str = "mixed",
        source: str = "shapes",
        source_options: dict[str, Any] | None = None,
        n_classes: int | None = None,
        image_size: int | None = 16,
        archs: Mapping[str, Sequence[str]] | None = None,
        members_per_family: int = 10,
        optimizers: Mapping[str, Sequence[float]] | None = None,
        steps: Sequence[int] = (50, 300),
        weight_decay: Sequence[float] = (0.0, 1e-4),
        batch_size: Sequence[int] = (32, 64),
        train_images: Sequence[int] = (250, 500, 1000, 2000),
        augment: Sequence[str] = (),
        val_images: int = 1000,
        eval_images: int = 300,
        corruption_sigma: float = 0.3,
        splits: Sequence[float] = (0.7, 0.15, 0.15),
        device: str = "cpu",
    ) -> None:
        self.families = {f: list(a) for f, a in (archs or DEFAULT_ARCHS).items()}
        self.optimizers = {o: list(r) for o, r in (optimizers or DEFAULT_LR).items()}
        super().__init__(
            name=name,
            source=source,
            source_options=source_options,
            n_classes=n_classes,
            image_size=image_size,
            archs=[a for arch_list in self.families.values() for a in arch_list],
            members_per_tree=members_per_family,
            classes_per_member=None,
            root_steps=0,
            lr=(1e-3, 1e-3),  # per optimizer, see self.optimizers
            steps=steps,
            weight_decay=weight_decay,
            batch_size=batch_size,
            train_images=train_images,
            augment=augment,
            val_images=val_images,
            eval_images=eval_images,
            corruption_sigma=corruption_sigma,
            splits=splits,
            device=device,
        )

    def validate(self) -> None:
        if not self.families or any(not a for a in self.families.values()):
            raise self._bad(
                f"archs must map each family to at least one architecture, got {self.families}"
            )
        if not self.optimizers:
            raise self._bad("optimizers is empty")
        for opt, lr in self.optimizers.items():
            if opt not in OPTIMIZERS:
                raise self._bad(f"unknown optimizer {opt!r}; known: {', '.join(OPTIMIZERS)}")
            if len(lr) != 2 or not 0 < lr[0] <= lr[1]:
                raise self._bad(
                    f"optimizers.{opt} must be a range [low, high] with 0 < low <= high, got {lr}"
                )
        super().validate()  # source, device, sizes, the shared hyperparameter space, archs

    def label_schema(self) -> dict[str, str]:
        values = ("data_size", "n_params", "steps", "train_acc", "val_acc", "test_acc", "gen_gap")
        return {"family": "multiclass", "optimizer": "multiclass"} | dict.fromkeys(
            (*values, "robustness"), "regression"
        )

    @classmethod
    def data_keys(cls, init_args: dict[str, Any]) -> list[str]:
        """The source's identity (members start from random initializations)."""
        source = argument(cls, init_args, "source")
        try:
            return [datasets.source_key(source, argument(cls, init_args, "source_options"))]
        except Exception:  # reported by validate()
            return [str(source)]

    # -- plan ----------------------------------------------------------------------------------

    def plan(self, seed: int) -> list[Job]:
        jobs = []
        for family in self.families:
            rng = np.random.default_rng(stable_seed(seed, self.name, "splits", family))
            split_of = self._assign_splits(rng, self.members_per_tree)
            for k in range(self.members_per_tree):
                mid = f"{self.name}-{family}-m{k:03d}"
                params = self._draw(np.random.default_rng(stable_seed(seed, mid)), family)
                jobs.append(Job(mid, "member", "", "", split_of[k], params))
        return jobs

    def _draw(self, rng: np.random.Generator, family: str) -> dict[str, Any]:
        """One member's architecture and hyperparameters, from its own generator."""
        arch = str(rng.choice(self.families[family]))
        optimizer = str(rng.choice(list(self.optimizers)))
        hp = {"optimizer": optimizer} | sample_hparams(rng, self.space, self.optimizers[optimizer])
        return {"arch": arch, "family": family, "hparams": hp}

    # -- training ------------------------------------------------------------------------------

    def run(
        self, job: Job, writer: ZooWriter, root: dict[str, torch.Tensor] | None
    ) -> dict[str, Any]:
        data, pool, val = self._data()
        p, hp = job.params, job.params["hparams"]
        classes = list(range(len(data.classes)))
        torch.manual_seed(hp["seed"])
        model = self._model(p["arch"], data).to(pick_device(self.device))
        train_idx = pool[pick(data.train_y[pool], classes, hp["train_images"], hp["seed"])]
        x, y = data.train_x[train_idx], data.train_y[train_idx]
        flags = {f: hp.get(f, False) for f in AUGMENTATIONS}
        args = (hp["steps"], hp["lr"], hp["weight_decay"], hp["batch_size"], hp["seed"], flags)
        loss = train(model, x, y, *args, optimizer=hp["optimizer"])
        ev = self._evaluate(model, data, classes, x, y, val)
        tensors = state_tensors(model)
        n_params = sum(int(t.numel()) for t in model.parameters())
        arch = arch_name(p["arch"])
        meta = {"nwa.arch": arch, "nwa.family": family_of(p["arch"])}
        path = writer.save_weights(job.id, tensors, meta)
        labels = {
            "family": p["family"],
            "optimizer": hp["optimizer"],
            "data_size": math.log10(len(train_idx)),
            "n_params": math.log10(n_params),
            "steps": hp["steps"],
            "final_loss": loss,
        }
        row = {"id": job.id, "path": path, "arch": arch, "classes": classes, "hparams": hp}
        return row | ev | {"labels": labels}
