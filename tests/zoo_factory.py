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
