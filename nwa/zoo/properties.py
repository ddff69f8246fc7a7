"""The property zoo recipe: small networks trained from scratch as the Small CNN Zoo trains them.

Unterthiner et al. (2020, "Predicting Neural Network Accuracy from Weights") train many small
CNNs with hyperparameters sampled per run and keep several checkpoints of each run, so test
accuracy spreads from chance (runs that stall or diverge) to the best the architecture reaches.
This recipe does the same on any image source (``digits`` by default: every machine has it):

- architectures: ``small_cnn`` (three 3x3 convolutions of ``width`` filters with stride 2, global
  average pooling, a dense layer, as in the public zoo) and ``small_mlp`` (two hidden layers);
  tensors are named as the public zoo names them (``conv2d``, ``conv2d_1``, ..., ``dense``), so
  :mod:`nwa.zoo.export` writes the public layout;
- per run: optimizer, learning rate (log-uniform), initializer and its scale, L2 penalty,
  dropout, the fraction of the training images and the activation, sampled from the run's id;
- checkpoints: the run is kept after each of ``checkpoints`` epochs, one manifest member each
  (ids ``<run>-eEE``, one tree per run, so a split never separates a run's checkpoints).

Labels: ``train_acc`` (on up to ``eval_images`` of the run's training images), ``test_acc``
(on up to ``eval_images`` test images), ``gen_gap``, ``robustness`` (test accuracy under Gaussian
noise), and in ``labels``: ``epoch``, ``train_steps``, ``train_loss`` (mean over the last epoch), ``eval_images`` (the
test images each accuracy was measured on) and
``diverged`` (1.0 when the weights hold NaN/Inf). A diverged run stops training; its later
checkpoints repeat the non-finite weights, and its accuracies are what the network predicts
(NaN logits), as the public zoo keeps them. Data modules leave such models out at training time
(``drop_nonfinite``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nwa.errors import ConfigError
from nwa.zoo import datasets
from nwa.zoo.classifiers import accuracy, stable_seed
from nwa.zoo.images import take
from nwa.zoo.manifest import ZooWriter
from nwa.zoo.recipe import Job, Recipe, argument

ARCHS = ("small_cnn", "small_mlp")
OPTIMIZERS = ("sgd", "adam", "rmsprop")
INITS = ("normal", "truncated_normal", "glorot_uniform", "he_normal", "orthogonal")
ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu, "sigmoid": torch.sigmoid}


class SmallNet(nn.Module):
    """A Small-CNN-Zoo network: three stride-2 3x3 convolutions (or two hidden dense layers),
    then a dense classifier; dropout after every hidden layer.

    Args:
        arch: ``small_cnn`` or ``small_mlp``.
        in_chans: Input channels.
        size: Input side in pixels.
        n_classes: Outputs.
        width: Filters per convolution / units per hidden layer.
        activation: Key of :data:`ACTIVATIONS`.
        dropout: Dropout probability after each hidden layer.
    """

    def __init__(
        self,
        arch: str,
        in_chans: int,
        size: int,
        n_classes: int,
        width: int = 16,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.arch, self.act, self.drop = arch, ACTIVATIONS[activation], nn.Dropout(dropout)
        if arch == "small_cnn":
            self.conv2d = nn.Conv2d(in_chans, width, 3, stride=2, padding=1)
            self.conv2d_1 = nn.Conv2d(width, width, 3, stride=2, padding=1)
            self.conv2d_2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
            self.hidden: list[nn.Module] = [self.conv2d, self.conv2d_1, self.conv2d_2]
            self.dense = nn.Linear(width, n_classes)
        else:
            self.dense = nn.Linear(in_chans * size * size, width)
            self.dense_1 = nn.Linear(width, width)
            self.hidden = [self.dense, self.dense_1]
            self.dense_2 = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of images ``x``: [B, C, H, W] -> [B, n_classes]."""
        if self.arch == "small_mlp":
            x = x.flatten(1)
        for layer in self.hidden:
            x = self.drop(self.act(layer(x)))
        if self.arch == "small_cnn":
            return self.dense(x.mean(dim=(2, 3)))
        return self.dense_2(x)


def initialize(model: nn.Module, init: str, std: float) -> None:
    """Initialize every kernel with ``init`` (``std`` scales ``normal`` and ``truncated_normal``)
    and every bias with zeros, as Keras does; uses the global generator (seeded per job)."""
    for p in model.parameters():
        if p.dim() == 1:
            nn.init.zeros_(p)
        elif init == "normal":
            nn.init.normal_(p, std=std)
        elif init == "truncated_normal":
            nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)
        elif init == "glorot_uniform":
            nn.init.xavier_uniform_(p)
        elif init == "he_normal":
            nn.init.kaiming_normal_(p, nonlinearity="relu")
        else:
            nn.init.orthogonal_(p)


def make_optimizer(name: str, params: Any, lr: float, l2: float) -> torch.optim.Optimizer:
    """Plain SGD, Adam or RMSprop with an L2 penalty of ``l2`` (coupled, as a Keras regularizer)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=l2)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=l2)
    return torch.optim.RMSprop(params, lr=lr, weight_decay=l2)


def finite(model: nn.Module) -> bool:
    """Whether every parameter is finite (a diverged run's are not)."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _ranges_problem(space: dict[str, Any]) -> str | None:
    for key in ("lr", "init_std", "l2"):
        lo, hi = space[key]
        if not 0 < lo <= hi:
            return f"{key} must be a range [low, high] with 0 < low <= high, got {space[key]}"
    for key, top in (("dropout", 1.0), ("train_fraction", 1.0)):
        lo, hi = space[key]
        if not (0 <= lo <= hi <= top and (key == "dropout" and hi < 1 or key != "dropout")):
            return f"{key} must be a range within [0, 1), got {space[key]}"
    if space["train_fraction"][0] <= 0:
        return f"train_fraction must be above 0, got {space['train_fraction']}"
    for key, known in (("optimizer", OPTIMIZERS), ("init", INITS), ("activation", ACTIVATIONS)):
        if not space[key] or set(space[key]) - set(known):
            return f"{key} choices {space[key]} must be non-empty, from {', '.join(known)}"
    return None


class PropertyRecipe(Recipe):
    """Small networks trained from random initializations with sampled hyperparameters.

    Args:
        name: Prefix of run ids; distinct per recipe in one zoo.
        source: Image source (see :mod:`nwa.zoo.datasets`); ``digits`` ships with scikit-learn.
        source_options: Options of the source (``n_train``, ``n_test`` for drawn sources).
        image_size: Input side (default: the source's own size).
        archs: Architectures (``small_cnn``, ``small_mlp``).
        runs_per_arch: Training runs per architecture.
        width: Filters per convolution / units per hidden layer.
        checkpoints: Epochs after which a run is kept (one member each), ascending.
        batch_size: Training batch size.
        optimizer: Optimizer choices, one sampled per run.
        lr: Learning-rate range ``[low, high]``, sampled log-uniformly.
        init: Initializer choices.
        init_std: Range of the std of ``normal`` / ``truncated_normal`` initializers (log-uniform).
        l2: L2 penalty range (log-uniform).
        dropout: Dropout range (uniform).
        train_fraction: Range of the fraction of the training images a run sees (uniform).
        activation: Activation choices.
        eval_images: Images per accuracy estimate (capped by the source's test split; the
            count used is recorded in each model's labels).
        corruption_sigma: Std of the Gaussian noise for ``robustness``.
        splits: Fractions of runs in train / val / test (all checkpoints of a run together).
    """

    def __init__(
        self,
        name: str = "props",
        source: str = "digits",
        source_options: dict[str, Any] | None = None,
        image_size: int | None = None,
        archs: Sequence[str] = ("small_cnn",),
        runs_per_arch: int = 100,
        width: int = 16,
        checkpoints: Sequence[int] = (1, 3, 6, 10),
        batch_size: int = 32,
        optimizer: Sequence[str] = OPTIMIZERS,
        lr: Sequence[float] = (2e-4, 0.3),
        init: Sequence[str] = INITS,
        init_std: Sequence[float] = (1e-3, 0.5),
        l2: Sequence[float] = (1e-8, 1e-2),
        dropout: Sequence[float] = (0.0, 0.5),
        train_fraction: Sequence[float] = (0.1, 1.0),
        activation: Sequence[str] = ("relu", "tanh"),
        eval_images: int = 2000,
        corruption_sigma: float = 0.3,
        splits: Sequence[float] = (0.7, 0.15, 0.15),
    ) -> None:
        self.name, self.source, self.source_options = name, source, dict(source_options or {})
        self.image_size, self.archs, self.runs_per_arch = image_size, list(archs), runs_per_arch
        self.width, self.checkpoints, self.batch_size = width, list(checkpoints), batch_size
        self.space: dict[str, Any] = {
            "optimizer": list(optimizer),
            "lr": list(lr),
            "init": list(init),
            "init_std": list(init_std),
            "l2": list(l2),
            "dropout": list(dropout),
            "train_fraction": list(train_fraction),
            "activation": list(activation),
        }
        self.eval_images, self.corruption_sigma = eval_images, corruption_sigma
        self.splits = list(splits)

    def _bad(self, what: str) -> ConfigError:
        return ConfigError(f"{type(self).__name__} {self.name!r}: {what}")

    def _size(self) -> int:
        return self.image_size or datasets.native_size(self.source)

    def validate(self) -> None:
        try:
            datasets.options_of(self.source, self.source_options)
            datasets.n_classes(self.source)
        except ConfigError as e:
            raise self._bad(str(e)) from None
        if not self.archs or set(self.archs) - set(ARCHS):
            raise self._bad(f"archs {self.archs} must be non-empty, from {', '.join(ARCHS)}")
        if self.runs_per_arch < 1 or self.width < 1 or self.batch_size < 1:
            raise self._bad("runs_per_arch, width and batch_size must be >= 1")
        c = self.checkpoints
        if not c or c[0] < 0 or any(b <= a for a, b in zip(c, c[1:])):
            raise self._bad(f"checkpoints must be ascending epochs >= 0, got {c}")
        if any(len(v) != 2 for k, v in self.space.items() if k in ("lr", "init_std", "l2")):
            raise self._bad("lr, init_std and l2 must be ranges [low, high]")
        if problem := _ranges_problem(self.space):
            raise self._bad(problem)
        if len(self.splits) != 3 or min(self.splits) < 0 or abs(sum(self.splits) - 1) > 1e-6:
            raise self._bad(f"splits must be three fractions summing to 1, got {self.splits}")
        if self.eval_images < 1 or self._size() < 4:
            raise self._bad("eval_images must be >= 1 and the image size >= 4 pixels")

    def classes(self) -> list[str]:
        return datasets.class_names(self.source)

    def label_schema(self) -> dict[str, str]:
        names = ("train_acc", "test_acc", "gen_gap", "robustness", "diverged", "epoch")
        return dict.fromkeys(names, "regression")

    @classmethod
    def data_keys(cls, init_args: dict[str, Any]) -> list[str]:
        source = argument(cls, init_args, "source")
        try:
            return [datasets.source_key(source, argument(cls, init_args, "source_options"))]
        except ConfigError:  # reported by validate()
            return [str(source)]

    def data_record(self) -> dict[str, Any]:
        data = self._data()
        return datasets.data_record(data, self.source, self.source_options) | {
            "image_size": self._size()
        }

    # -- plan ----------------------------------------------------------------------------------

    def plan(self, seed: int) -> list[Job]:
        jobs = []
        for arch in self.archs:
            n = self.runs_per_arch
            rng = np.random.default_rng(stable_seed(seed, self.name, arch, "splits"))
            cut = np.cumsum([round(f * n) for f in self.splits[:2]])
            rank = np.argsort(rng.permutation(n))
            for r in range(n):
                run = f"{self.name}-{arch}-r{r:04d}"
                split = "train" if rank[r] < cut[0] else "val" if rank[r] < cut[1] else "test"
                outputs = tuple(f"{run}-e{e:02d}" for e in self.checkpoints)
                params = {"arch": arch, "hparams": self._sample(seed, run)}
                jobs.append(Job(outputs[-1], "member", run, "", split, params, outputs))
        return jobs

    def _sample(self, seed: int, run: str) -> dict[str, Any]:
        """A run's hyperparameters, from its own generator (adding runs changes no other run)."""
        rng = np.random.default_rng(stable_seed(seed, run, "hparams"))
        s = self.space

        def log_uniform(key: str) -> float:
            return float(np.exp(rng.uniform(np.log(s[key][0]), np.log(s[key][1]))))

        return {
            "optimizer": str(rng.choice(s["optimizer"])),
            "lr": log_uniform("lr"),
            "init": str(rng.choice(s["init"])),
            "init_std": log_uniform("init_std"),
            "l2": log_uniform("l2"),
            "dropout": float(rng.uniform(*s["dropout"])),
            "train_fraction": float(rng.uniform(*s["train_fraction"])),
            "activation": str(rng.choice(s["activation"])),
            "batch_size": self.batch_size,
            "seed": int(rng.integers(0, 2**31 - 1)),
        }

    # -- training ------------------------------------------------------------------------------

    def _data(self) -> datasets.ImageData:
        n = datasets.n_classes(self.source)
        return datasets.load_source(self.source, n, self._size(), self.source_options)

    def run(self, job: Job, writer: ZooWriter, root: dict[str, torch.Tensor] | None) -> list:
        data = self._data()
        hp, arch = job.params["hparams"], job.params["arch"]
        torch.manual_seed(hp["seed"])
        c, n = data.shape[0], len(data.classes)
        model = SmallNet(arch, c, self._size(), n, self.width, hp["activation"], hp["dropout"])
        initialize(model, hp["init"], hp["init_std"])
        g = torch.Generator().manual_seed(hp["seed"])
        share = max(self.batch_size, int(hp["train_fraction"] * len(data.train_y)))
        idx = torch.randperm(len(data.train_y), generator=g)[:share]
        x, y = take(data.train_x, idx), data.train_y[idx]
        xf = datasets.to_float(x).sub_(0.5).div_(0.5)  # the scaling accuracy() applies too
        opt = make_optimizer(hp["optimizer"], model.parameters(), hp["lr"], hp["l2"])
        rows, epoch, loss = [], 0, float("nan")
        for out_id, target in zip(job.rows, self.checkpoints):
            while epoch < target and finite(model):
                loss = self._epoch(model, opt, xf, y, g)
                epoch += 1
            row = {"arch": arch, "classes": list(range(n)), "hparams": hp | {"epoch": target}}
            row |= self._accuracies(model, data, x, y)
            path = writer.save_weights(out_id, _tensors(model), {"nwa.arch": arch})
            steps = float(target * (share // self.batch_size))
            labels = {"epoch": float(target), "train_steps": steps}
            labels |= {"train_loss": loss, "diverged": 0.0 if finite(model) else 1.0}
            labels["eval_images"] = float(min(self.eval_images, len(data.test_y)))
            rows.append(row | {"id": out_id, "path": path, "labels": labels})
        return rows

    def _epoch(
        self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, g
    ) -> float:
        """One pass over the run's images in shuffled batches; the mean loss."""
        model.train()
        perm, losses = torch.randperm(len(y), generator=g), []
        for i in range(0, len(y) - self.batch_size + 1, self.batch_size):
            b = perm[i : i + self.batch_size]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    def _accuracies(
        self, model: nn.Module, data: datasets.ImageData, x: datasets.Images, y: torch.Tensor
    ) -> dict[str, float]:
        """Accuracies of the checkpoint on its training images, the test images, noisy ones."""
        n, every = self.eval_images, range(len(data.classes))
        tx, ty = take(data.test_x, slice(0, n)), data.test_y[:n]
        return {
            "train_acc": accuracy(model, x[:n], y[:n], every),
            "test_acc": accuracy(model, tx, ty, every),
            "robustness": accuracy(model, tx, ty, every, self.corruption_sigma),
        }
