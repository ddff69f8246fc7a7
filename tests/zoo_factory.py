"""Synthetic zoos written in the real format, in milliseconds, for data and I/O tests.

Each tree has a random root; members are the root plus small noise, a random half of the classes,
and labels that depend on the weights, so there is something to learn.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nwa.zoo.manifest import Zoo, ZooMeta, ZooWriter

CLASSES = [f"class_{i}" for i in range(6)]


def cnn_chain(gen: torch.Generator, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A conv 1->4->4 (3x3) + linear 4->6 chain, as a named state dict in module order."""
    return {
        "conv1.weight": torch.randn(4, 1, 3, 3, generator=gen) * scale,
        "conv1.bias": torch.randn(4, generator=gen) * scale,
        "conv2.weight": torch.randn(4, 4, 3, 3, generator=gen) * scale,
        "conv2.bias": torch.randn(4, generator=gen) * scale,
        "fc.weight": torch.randn(6, 4, generator=gen) * scale,
        "fc.bias": torch.randn(6, generator=gen) * scale,
    }


def write_chain_zoo(root: Path, trees: int = 2, per_tree: int = 12, seed: int = 0) -> Zoo:
    """A zoo of small CNN chains; splits cycle train, train, val, test."""
    gen = torch.Generator().manual_seed(seed)
    meta = ZooMeta(name="chains", classes=CLASSES, label_schema={"classes": "multilabel"})
    writer = ZooWriter(root, meta)
    splits = ["train", "train", "val", "test"]
    for t in range(trees):
        tree = f"tree{t}"
        base = cnn_chain(gen)
        rid = f"root{t}"
        (root / "roots").mkdir(exist_ok=True)
        meta.trees[tree] = {"root": rid, "arch": "cnn", "path": writer.save_weights(rid, base)}
        for m in range(per_tree):
            classes = sorted(torch.randperm(6, generator=gen)[:3].tolist())
            state = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
            # Make the label readable from the weights: the classes shift the fc rows.
            for c in classes:
                state["fc.weight"][c] += 0.5
            acc = float(state["fc.weight"].mean().sigmoid())
            mid = f"t{t}m{m:02d}"
            path = writer.save_weights(mid, state)
            writer.add(
                dict(
                    id=mid,
                    path=path,
                    tree=tree,
                    parent=rid,
                    arch="cnn",
                    split=splits[m % 4],
                    classes=classes,
                    train_acc=acc + 0.05,
                    test_acc=acc,
                    robustness=acc - 0.1,
                    hparams={"lr": 1e-3 * (1 + m)},
                    labels={"depth": 3},
                )
            )
    return writer.finalize(expected=trees * per_tree)


# ----- the Small CNN Zoo's public layout ------------------------------------------------------------
CNN_LAYOUT = [  # as the public layout.csv lists them: each layer's bias before its kernel
    ("sequential/conv2d/bias:0", (16,)),
    ("sequential/conv2d/kernel:0", (3, 3, 1, 16)),  # TensorFlow order: [kh, kw, in, out]
    ("sequential/conv2d_1/bias:0", (16,)),
    ("sequential/conv2d_1/kernel:0", (3, 3, 16, 16)),
    ("sequential/conv2d_2/bias:0", (16,)),
    ("sequential/conv2d_2/kernel:0", (3, 3, 16, 16)),
    ("sequential/dense/bias:0", (10,)),
    ("sequential/dense/kernel:0", (16, 10)),  # [in, out]
]


def write_cnn_layout(root: Path) -> int:
    """``root/layout.csv`` as the Small CNN Zoo ships it; returns the parameters per row (4970)."""
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    rows, start = [], 0
    for name, shape in CNN_LAYOUT:
        end = start + int(torch.tensor(shape).prod())
        rows.append({"varname": name, "start_idx": start, "end_idx": end, "shape": str(shape)})
        start = end
    pd.DataFrame(rows).to_csv(root / "layout.csv", index=False)
    return start


def write_small_cnn_zoo(root: Path, n_runs: int = 40, diverged: tuple[int, ...] = (5, 23)) -> Path:
    """A zoo in the Small CNN Zoo's public layout (``weights.npy``, ``layout.csv``,
    ``metrics.csv.gz``): two checkpoints per run (step 0 and the last), ``config.*``
    hyperparameters, test accuracy readable from the dense kernel, and ``diverged`` runs whose
    last checkpoint holds NaN weights and NaN metrics, as diverged runs of the public zoo do."""
    import numpy as np
    import pandas as pd

    width = write_cnn_layout(root)
    rng = np.random.default_rng(0)
    weights = (0.1 * rng.standard_normal((2 * n_runs, width))).astype(np.float32)
    run = np.arange(2 * n_runs) // 2
    last = np.arange(2 * n_runs) % 2 == 1
    acc = 1 / (1 + np.exp(-20 * weights[:, 4810:].mean(axis=1)))  # from the dense kernel
    for r in diverged:
        weights[2 * r + 1] = np.nan
        acc[2 * r + 1] = np.nan
    np.save(root / "weights.npy", weights)
    metrics = pd.DataFrame(
        {
            "config.learning_rate": 10.0 ** -(2 + run % 3),
            "config.optimizer": np.where(run % 2, "adam", "sgd"),
            "config.activation": np.where(run % 3, "relu", "tanh"),
            "config.w_init": "glorot_uniform",
            "config.dropout": 0.1,
            "config.l2reg": 1e-4,
            "config.init_std": 0.05,
            "config.train_fraction": 1.0,
            "modeldir": [f"run_{r:05d}" for r in run],
            "step": np.where(last, 86, 0),
            "test_accuracy": acc,
            "train_accuracy": acc + 0.05,
            "test_loss": np.where(np.isnan(acc), np.nan, 1.5),
            "train_loss": np.where(np.isnan(acc), np.nan, 1.4),
        }
    )
    metrics.to_csv(root / "metrics.csv.gz", index=False, compression="gzip")
    return root


def write_mixed_zoo(root: Path, per_family: int = 4, seed: int = 0) -> Zoo:
    """A zoo of four architectures (MLP, CNN, timm ResNet, timm ViT; ``tests.networks``), one
    tree each; splits cycle train, train, val, test; ``test_acc`` depends on the weights."""
    from tests.networks import float_state, network

    gen = torch.Generator().manual_seed(seed)
    meta = ZooMeta(name="mixed", classes=CLASSES, label_schema={"classes": "multilabel"})
    writer = ZooWriter(root, meta)
    splits = ["train", "train", "val", "test"]
    for f, family in enumerate(("mlp", "cnn", "resnet", "vit")):
        model, _, _ = network(family, seed + f)
        base = float_state(model)
        meta.trees[family] = {"root": "", "arch": family}
        for m in range(per_family):
            state = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
            head = [k for k, v in state.items() if v.dim() == 2][-1]
            acc = float(state[head].mean().sigmoid())
            mid = f"{family}{m:02d}"
            writer.add(
                dict(
                    id=mid,
                    path=writer.save_weights(mid, state),
                    tree=family,
                    arch=family,
                    split=splits[m % 4],
                    classes=sorted(torch.randperm(6, generator=gen)[:3].tolist()),
                    test_acc=acc,
                    labels={"family": family},
                )
            )
    return writer.finalize(expected=4 * per_family)
