"""The discriminative zoo recipe: timm trees of class-subset fine-tunes (a Model-J in any size).

Architectures are nwa's small rows (:data:`~nwa.zoo.classifiers.ARCHS`) or any timm model name
(``resnet18``, ``vit_small_patch16_224``, ``convnext_atto``, with a pretrained tag where wanted:
``resnet18.a1_in1k``). Each tree has a root: pretrained here on every class of the source (its own
random share of the training images and its own seed), loaded from timm / the Hub / a file
(:mod:`nwa.zoo.roots`), or, for a forest, a random initialization. Members are full fine-tunes of a
root on a random subset of the classes (half by default), with hyperparameters sampled per model.
Images are resized to the model's input size (``image_size``) batch by batch. Labels, all restricted to the member's own classes (logits of other classes are
ignored when predicting):

- ``train_acc``: accuracy on the member's fine-tuning images (up to ``eval_images`` of them),
- ``val_acc``: on held-out images from the source's training split (never used for training),
- ``test_acc``: on the source's test split,
- ``gen_gap``: ``train_acc - test_acc``,
- ``robustness``: ``test_acc`` under Gaussian noise of std ``corruption_sigma`` (fixed seed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nwa.errors import ConfigError
from nwa.zoo import datasets
from nwa.zoo.classifiers import (
    AUGMENTATIONS,
    accuracy,
    arch_name,
    build_model,
    load_tensors,
    pick,
    stable_seed,
    state_tensors,
    train,
)
from nwa.zoo.manifest import ZooWriter
from nwa.zoo.recipe import Job, Recipe, argument, pick_device
from nwa.zoo.roots import check as check_root_weights
from nwa.zoo.roots import check_arch, root_model, weights_key
from nwa.zoo.runner import save_root


def _space_problem(s: dict[str, list], splits: list[float], split_within: str) -> str | None:
    """What is wrong with a member hyperparameter space and split fractions, if anything."""
    for key in ("lr", "steps"):
        if len(s[key]) != 2 or not 0 < s[key][0] <= s[key][1]:
            return f"{key} must be a range [low, high] with 0 < low <= high, got {s[key]}"
    for key in ("weight_decay", "batch_size", "train_images"):
        if not s[key] or min(s[key]) < 0 or (key != "weight_decay" and min(s[key]) < 1):
            return f"{key} needs at least one valid choice, got {s[key]}"
    if unknown := sorted(set(s["augment"]) - set(AUGMENTATIONS)):
        return f"unknown augmentations {unknown}; known: {', '.join(AUGMENTATIONS)}"
    if len(splits) != 3 or min(splits) < 0 or abs(sum(splits) - 1) > 1e-6:
        return f"splits must be three fractions summing to 1, got {splits}"
    if split_within not in ("arch", "tree"):
        return f"split_within must be 'arch' or 'tree', got {split_within!r}"
    return None


def sample_hparams(
    rng: np.random.Generator, space: dict[str, list], lr: Sequence[float]
) -> dict[str, Any]:
    """A member's hyperparameters from ``space`` (learning rate log-uniform in ``lr``), drawn
    in a fixed order so that a generator in one state gives one member."""
    s = space
    return {
        "lr": float(np.exp(rng.uniform(np.log(lr[0]), np.log(lr[1])))),
        "steps": int(rng.integers(s["steps"][0], s["steps"][1] + 1)),
        "weight_decay": float(rng.choice(s["weight_decay"])),
        "batch_size": int(rng.choice(s["batch_size"])),
        "train_images": int(rng.choice(s["train_images"])),
        **{f: bool(rng.random() < 0.5) for f in s["augment"]},
        "seed": int(rng.integers(0, 2**31 - 1)),
    }


class VisionRecipe(Recipe):
    """Trees of timm classifiers fine-tuned on class subsets.

    Args:
        name: Prefix of tree and model ids; distinct per recipe in one zoo.
        source: Image source (see :mod:`nwa.zoo.datasets`): ``shapes`` (drawn by nwa, the same
            on every machine), ``digits``, ``fashion_mnist``, a torchvision dataset (``cifar100``,
            ...) or ``imagefolder:PATH``.
        source_options: Options of the source (``n_train``, ``n_test`` for ``shapes``;
            ``test_fraction`` for image folders).
        n_classes: Use the first ``n_classes`` classes of the source (default all).
        image_size: Input side of the models; images are resized to it (default: the source's
            own size; drawn images are drawn at it).
        archs: Architectures: rows of :data:`~nwa.zoo.classifiers.ARCHS` or timm model names,
            optionally with a pretrained tag (``resnet18.a1_in1k``).
        root_weights: Where roots' weights come from: ``random``, ``timm`` (the tag's pretrained
            weights), ``hf-hub:ORG/NAME[@REV]`` or a weights path; one value for every
            architecture or a list with one per architecture (see :mod:`nwa.zoo.roots`).
        roots_per_arch: Trees per architecture (distinct roots).
        members_per_tree: Fine-tuned members per tree.
        forest: Roots are random initializations, never trained; with ``members_per_tree: 1``
            every member is its own tree (the paper's forest).
        classes_per_member: Training classes per member (default half of ``n_classes``).
        root_steps: Training steps of each root on the source's classes before its members
            (0: the root is used as loaded).
        root_lr: Root training learning rate.
        root_batch_size: Root training batch size.
        root_data_fraction: Fraction of the training images each root trains on (its own subset).
        lr: Member learning rate range ``[low, high]``, sampled log-uniformly.
        steps: Member step range ``[low, high]``, sampled uniformly (inclusive).
        weight_decay: Member weight decay choices.
        batch_size: Member batch size choices.
        train_images: Choices for the number of fine-tuning images per member.
        augment: Augmentation flags, each switched on per member with probability 1/2.
        val_images: Images of the training split held out for validation (never trained on).
        eval_images: Images per accuracy estimate.
        corruption_sigma: Std of the Gaussian noise for ``robustness``.
        splits: Fractions of members in train / val / test.
        split_within: ``arch``: the fractions hold over each architecture's members (a tree's
            share varies); ``tree``: over each tree's members, so every tree has its own
            train / val / test models (for per-tree evaluation on small trees).
        device: ``cpu``, ``cuda[:N]`` or ``auto`` (CUDA when present). Builds are bitwise
            reproducible on CPU at equal thread counts, not on GPUs.
    """

    def __init__(
        self,
        name: str = "vision",
        source: str = "shapes",
        source_options: dict[str, Any] | None = None,
        n_classes: int | None = None,
        image_size: int | None = None,
        archs: Sequence[str] = ("resnet_tiny", "vit_tiny"),
        root_weights: str | Sequence[str] = "random",
        roots_per_arch: int = 2,
        members_per_tree: int = 10,
        forest: bool = False,
        classes_per_member: int | None = None,
        root_steps: int = 500,
        root_lr: float = 2e-3,
        root_batch_size: int = 128,
        root_data_fraction: float = 0.5,
        lr: Sequence[float] = (3e-4, 3e-3),
        steps: Sequence[int] = (50, 150),
        weight_decay: Sequence[float] = (0.0, 1e-4, 1e-2),
        batch_size: Sequence[int] = (32, 64),
        train_images: Sequence[int] = (500, 1000, 2000),
        augment: Sequence[str] = ("hflip", "shift"),
        val_images: int = 5000,
        eval_images: int = 500,
        corruption_sigma: float = 0.3,
        splits: Sequence[float] = (0.7, 0.15, 0.15),
        split_within: str = "arch",
        device: str = "cpu",
    ) -> None:
        self.name, self.source, self.n_classes = name, source, n_classes
        self.source_options, self.image_size = dict(source_options or {}), image_size
        self.archs, self.forest = list(archs), bool(forest)
        weights = (
            [root_weights] * len(self.archs) if isinstance(root_weights, str) else root_weights
        )
        self.root_weights = list(weights)
        self.roots_per_arch, self.members_per_tree = roots_per_arch, members_per_tree
        self.classes_per_member, self.device = classes_per_member, device
        self.root = {
            "steps": root_steps,
            "lr": root_lr,
            "batch_size": root_batch_size,
            "data_fraction": root_data_fraction,
        }
        self.space = {
            "lr": list(lr),
            "steps": list(steps),
            "weight_decay": list(weight_decay),
            "batch_size": list(batch_size),
            "train_images": list(train_images),
            "augment": list(augment),
        }
        self.val_images, self.eval_images = val_images, eval_images
        self.corruption_sigma, self.splits = corruption_sigma, list(splits)
        self.split_within = split_within

    # -- configuration -------------------------------------------------------------------------

    def _n(self) -> int:
        return self.n_classes or datasets.n_classes(self.source)

    def _k(self) -> int:
        return self.classes_per_member or self._n() // 2

    def _size(self) -> int:
        return self.image_size or datasets.native_size(self.source)

    def _bad(self, what: str) -> ConfigError:
        return ConfigError(f"{type(self).__name__} {self.name!r}: {what}")

    def validate(self) -> None:
        try:
            datasets.options_of(self.source, self.source_options)
            total = datasets.n_classes(self.source)
            pick_device(self.device)
        except ConfigError as e:
            raise self._bad(str(e)) from None
        if self.n_classes is not None and not 2 <= self.n_classes <= total:
            raise self._bad(
                f"n_classes={self.n_classes}, but source {self.source!r} has {total} classes"
            )
        if self.roots_per_arch < 1 or self.members_per_tree < 1:
            raise self._bad(
                f"zero models (roots_per_arch={self.roots_per_arch}, members_per_tree={self.members_per_tree}); need >= 1 each"
            )
        if not 1 <= self._k() < self._n():
            raise self._bad(
                f"classes_per_member={self._k()} must be in 1..{self._n() - 1} (the source has {self._n()})"
            )
        if problem := _space_problem(self.space, self.splits, self.split_within):
            raise self._bad(problem)
        if self.root["steps"] < 0 or not 0 < self.root["data_fraction"] <= 1:
            raise self._bad("root_steps must be >= 0 and root_data_fraction in (0, 1]")
        if self.image_size is not None and self.image_size < 8:
            raise self._bad(f"image_size {self.image_size} is below 8 pixels")
        self._check_archs()

    def _check_archs(self) -> None:
        """Every architecture builds at the input size and its root weights can be found."""
        if not self.archs:
            raise self._bad("archs is empty")
        if len(self.root_weights) != len(self.archs):
            raise self._bad(
                f"root_weights lists {len(self.root_weights)} values for {len(self.archs)} archs"
            )
        size, chans = self._size(), datasets.channels(self.source)
        for arch, weights in zip(self.archs, self.root_weights):
            if self.forest and weights != "random":
                raise self._bad(f"a forest has random roots; root_weights is {weights!r}")
            if problem := check_root_weights(weights, arch) or check_arch(arch, chans, size):
                raise self._bad(problem)

    def classes(self) -> list[str]:
        return datasets.class_names(self.source, self._n())

    def label_schema(self) -> dict[str, str]:
        reg = dict.fromkeys(
            ("train_acc", "val_acc", "test_acc", "gen_gap", "robustness"), "regression"
        )
        return {"classes": "multilabel", **reg}

    @classmethod
    def data_keys(cls, init_args: dict[str, Any]) -> list[str]:
        """The source's identity, and the roots' weights' (a file by path and size)."""
        source, archs, weights = (
            argument(cls, init_args, k) for k in ("source", "archs", "root_weights")
        )
        try:
            keys = [datasets.source_key(source, argument(cls, init_args, "source_options"))]
        except ConfigError:  # reported by validate()
            keys = [str(source)]
        weights = [weights] * len(archs) if isinstance(weights, str) else list(weights)
        return keys + [weights_key(str(w), a) for a, w in zip(archs, weights) if w != "random"]

    def data_record(self) -> dict[str, Any]:
        """The images this recipe's models saw (recorded in ``zoo.json``)."""
        data = self._data()[0]
        return datasets.data_record(data, self.source, self.source_options) | {
            "image_size": self._size()
        }

    # -- plan ----------------------------------------------------------------------------------

    def plan(self, seed: int) -> list[Job]:
        rng = np.random.default_rng(stable_seed(seed, self.name, "plan"))
        roots, members = [], []
        for arch in self.archs:
            trees = [f"{self.name}-{arch}-{j}" for j in range(self.roots_per_arch)]
            m = self.members_per_tree
            by_arch = self.split_within == "arch"
            split_of = self._assign_splits(rng, len(trees) * m) if by_arch else {}
            for j, tree in enumerate(trees):
                if not by_arch:
                    split_of = {j * m + k: s for k, s in self._assign_splits(rng, m).items()}
                rid = f"{tree}-root"
                roots.append(
                    Job(
                        rid,
                        "root",
                        tree,
                        params={"arch": arch, "seed": stable_seed(seed, tree, "root"), **self.root},
                    )
                )
                for k in range(self.members_per_tree):
                    split = split_of[j * self.members_per_tree + k]
                    members.append(
                        Job(f"{tree}-m{k:03d}", "member", tree, rid, split, self._sample(rng, arch))
                    )
        return roots + members

    def _assign_splits(self, rng: np.random.Generator, n: int) -> dict[int, str]:
        """Split of each of ``n`` members, in the configured fractions, at random positions."""
        cut = np.cumsum([round(f * n) for f in self.splits[:2]])
        order = rng.permutation(n)
        return {
            int(i): ("train" if r < cut[0] else "val" if r < cut[1] else "test")
            for r, i in enumerate(order)
        }

    def _sample(self, rng: np.random.Generator, arch: str) -> dict[str, Any]:
        hp = sample_hparams(rng, self.space, self.space["lr"])
        classes = sorted(int(c) for c in rng.choice(self._n(), size=self._k(), replace=False))
        return {"arch": arch, "classes": classes, "hparams": hp}

    # -- training ------------------------------------------------------------------------------

    def _data(self) -> tuple[datasets.ImageData, torch.Tensor, torch.Tensor]:
        """The source, and its training split cut into (fine-tune pool, validation) indices."""
        data = datasets.load_source(self.source, self._n(), self._size(), self.source_options)
        perm = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(0))
        n_val = min(self.val_images, len(perm) // 5)
        return data, perm[n_val:], perm[:n_val]

    def _model(self, arch: str, data: datasets.ImageData) -> nn.Module:
        return build_model(arch, len(data.classes), data.shape[0], self._size())

    def run(
        self, job: Job, writer: ZooWriter, root: dict[str, torch.Tensor] | None
    ) -> dict[str, Any]:
        data, pool, val = self._data()
        p = job.params
        if job.kind == "root":
            return self._root(job, writer, data, pool)
        torch.manual_seed(p["hparams"]["seed"])
        model = self._model(p["arch"], data)
        if root is None:
            raise ValueError(f"member {job.id} needs its root's tensors")
        load_tensors(model, root)
        model.to(pick_device(self.device))
        hp, classes = p["hparams"], p["classes"]
        train_idx = pool[pick(data.train_y[pool], classes, hp["train_images"], hp["seed"])]
        flags = {f: hp.get(f, False) for f in AUGMENTATIONS}
        x, y = data.train_x[train_idx], data.train_y[train_idx]
        loss = train(
            model,
            x,
            y,
            hp["steps"],
            hp["lr"],
            hp["weight_decay"],
            hp["batch_size"],
            hp["seed"],
            flags,
        )
        ev = self._evaluate(model, data, classes, x, y, val)
        arch = arch_name(p["arch"])
        meta = {"nwa.arch": arch, "nwa.classes": json.dumps([data.classes[c] for c in classes])}
        path = writer.save_weights(job.id, state_tensors(model), meta)
        row = {"id": job.id, "path": path, "arch": arch, "classes": classes, "hparams": hp}
        return row | ev | {"labels": {"final_loss": loss}}

    def _evaluate(
        self,
        model: nn.Module,
        data: datasets.ImageData,
        classes: list[int],
        x: datasets.Images,
        y: torch.Tensor,
        val: torch.Tensor,
    ) -> dict[str, float]:
        n = self.eval_images
        vi = val[pick(data.train_y[val], classes, n, 1)]
        ti = pick(data.test_y, classes, n, 2)
        tx, ty = data.test_x[ti], data.test_y[ti]
        return {
            "train_acc": accuracy(model, x[:n], y[:n], classes),
            "val_acc": accuracy(model, data.train_x[vi], data.train_y[vi], classes),
            "test_acc": accuracy(model, tx, ty, classes),
            "robustness": accuracy(model, tx, ty, classes, self.corruption_sigma),
        }

    def _root(
        self, job: Job, writer: ZooWriter, data: datasets.ImageData, pool: torch.Tensor
    ) -> dict[str, Any]:
        p = job.params
        torch.manual_seed(p["seed"])
        weights = self.root_weights[self.archs.index(p["arch"])]
        c, n = data.shape[0], len(data.classes)
        model, origin = root_model(p["arch"], weights, n, c, self._size())
        model.to(pick_device(self.device))
        info: dict[str, Any] = {"arch": arch_name(p["arch"]), "seed": p["seed"], **origin}
        if not self.forest and p["steps"] > 0:
            g = torch.Generator().manual_seed(p["seed"])
            share = max(1, int(p["data_fraction"] * len(pool)))
            sub = pool[torch.randperm(len(pool), generator=g)[:share]]
            x, y = data.train_x[sub], data.train_y[sub]
            loss = train(model, x, y, p["steps"], p["lr"], 0.0, p["batch_size"], p["seed"])
            ti = pick(data.test_y, range(n), 2 * self.eval_images, 2)
            acc = accuracy(model, data.test_x[ti], data.test_y[ti], range(n))
            info |= {k: p[k] for k in ("steps", "lr", "batch_size", "data_fraction")}
            info |= {"final_loss": loss, "test_acc": acc}
            # "pretrained" here, on the source; loaded weights name their origin and the training
            info["init"] = (
                "pretrained" if weights == "random" else f"{origin['init']}, then trained here"
            )
        tensors = state_tensors(model)
        path = save_root(writer, job.id, tensors, {"nwa.arch": info["arch"]})
        return {"path": path, **info}
