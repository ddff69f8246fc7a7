"""timm classifiers as data (:data:`ARCHS`), and the plain torch loop that trains and scores them.

No Lightning here: a zoo member is a few hundred steps, where the loop's own overhead matters.
Images are uint8 ``[N, C, H, W]``; they are scaled to ``[-1, 1]`` on the fly.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nwa.errors import ConfigError
from nwa.zoo import datasets
from nwa.zoo.images import Images, take

# Architecture tables: the timm class and its constructor arguments (image size and channels come
# from the data). Add a row to offer another size. ResNets train in channels-last memory format
# (about 1.8x faster on CPU); saved tensors are contiguous either way.
ARCHS: dict[str, dict[str, Any]] = {
    "resnet_tiny": {
        "family": "resnet",
        "layers": [1, 1, 1, 1],
        "channels": [16, 32, 64, 128],
        "stem_width": 16,
        "channels_last": True,
    },
    # The default vision trees' rows: the last stage (the layer ProbeX reads) and the ViT's MLP
    # matrices 256 wide in both dimensions, ProbeX's regime, at about 1.2x resnet_tiny's and
    # vit_tiny's training cost on 28-pixel images (7-pixel patches: 16 tokens).
    "resnet_wide": {
        "family": "resnet",
        "layers": [1, 1, 1, 1],
        "channels": [16, 32, 64, 256],
        "stem_width": 16,
        "channels_last": True,
    },
    "resnet_micro": {
        "family": "resnet",
        "layers": [1, 1, 1, 1],
        "channels": [8, 16, 32, 64],
        "stem_width": 8,
        "channels_last": True,
    },
    "vit_tiny": {
        "family": "vit",
        "patch_size": 4,
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 2,
        "mlp_ratio": 2.0,
    },
    "vit_wide": {
        "family": "vit",
        "patch_size": 7,
        "embed_dim": 256,
        "depth": 1,
        "num_heads": 4,
        "mlp_ratio": 1.0,
    },
    "vit_micro": {
        "family": "vit",
        "patch_size": 7,
        "embed_dim": 32,
        "depth": 1,
        "num_heads": 2,
        "mlp_ratio": 2.0,
    },
    "vit_mini": {  # vit_micro's width with 4-pixel patches, for 8-, 12- and 16-pixel images
        "family": "vit",
        "patch_size": 4,
        "embed_dim": 32,
        "depth": 1,
        "num_heads": 2,
        "mlp_ratio": 2.0,
    },
    # Plain chains (nn.Sequential): an MLP on the flattened image, and the Small CNN Zoo's
    # convolutions (3x3, stride 2, ReLU) with global average pooling and a linear head.
    "mlp_small": {"family": "mlp", "hidden": [32, 32]},
    "mlp_wide": {"family": "mlp", "hidden": [64]},
    "cnn_small": {"family": "cnn", "channels": [8, 8, 16]},
    "cnn_wide": {"family": "cnn", "channels": [16, 16, 16]},
}
AUGMENTATIONS = ("hflip", "shift")
OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")
"""Member optimizers: ``sgd`` has momentum 0.9, the others torch's defaults."""


def arch_name(arch: str) -> str:
    """The architecture a model is recorded under: a timm name without its pretrained tag."""
    return arch if arch in ARCHS else arch.split(".", 1)[0]


def build_model(arch: str, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    """A randomly initialised classifier: a row of :data:`ARCHS`, or any timm model name.

    The model remembers its input size and normalisation (``nwa_img_size``, ``nwa_mean``,
    ``nwa_std``): built-in rows take ``[-1, 1]`` inputs, timm models their pretrained config's.

    Raises:
        ConfigError: ``arch`` is neither a row nor a timm model.
    """
    if arch in ARCHS:
        model = _builtin(arch, num_classes, in_chans, img_size)
    else:
        model = timm_model(
            arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, img_size=img_size
        )
    return finish_model(model, in_chans, img_size)


def finish_model(model: nn.Module, in_chans: int, img_size: int) -> nn.Module:
    """Record a model's input size and normalisation on it: its timm pretrained config's, or
    ``[-1, 1]`` inputs for models without one (the built-in rows)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean, std = tuple(cfg.get("mean", (0.5,) * 3)), tuple(cfg.get("std", (0.5,) * 3))
    if in_chans != len(mean):  # grayscale: the mean of the colour statistics
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    model.nwa_img_size, model.nwa_mean, model.nwa_std = img_size, mean, std
    return model


def family_of(arch: str) -> str:
    """An architecture's family: its row's ``family``, else the timm name's leading letters
    (``resnet18`` -> ``resnet``, ``vit_small_patch16_224`` -> ``vit``)."""
    if arch in ARCHS:
        return str(ARCHS[arch]["family"])
    return re.match(r"[a-z]*", arch_name(arch)).group(0) or arch_name(arch)


def _chain(
    family: str, spec: dict[str, Any], num_classes: int, in_chans: int, img_size: int
) -> nn.Module:
    """An MLP on the flattened image or a Small-CNN-Zoo-style convolution chain."""
    layers: list[nn.Module] = []
    if family == "mlp":
        width = in_chans * img_size * img_size
        layers.append(nn.Flatten())
        for hidden in spec["hidden"]:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
    else:
        width = in_chans
        for channels in spec["channels"]:
            layers += [nn.Conv2d(width, channels, 3, stride=2, padding=1), nn.ReLU()]
            width = channels
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


def _builtin(arch: str, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    spec = dict(ARCHS[arch])
    family = spec.pop("family")
    channels_last = spec.pop("channels_last", False)
    if family in ("mlp", "cnn"):
        model: nn.Module = _chain(family, spec, num_classes, in_chans, img_size)
    elif family == "resnet":
        from timm.models.resnet import BasicBlock, ResNet

        model = ResNet(
            BasicBlock,
            spec["layers"],
            num_classes=num_classes,
            in_chans=in_chans,
            stem_width=spec["stem_width"],
            channels=tuple(spec["channels"]),
        )
    else:
        from timm.models.vision_transformer import VisionTransformer

        model = VisionTransformer(
            img_size=img_size, in_chans=in_chans, num_classes=num_classes, **spec
        )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.nwa_channels_last = channels_last
    return model


def timm_model(arch: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with the image size passed to models that take one (ViTs)."""
    import timm

    if not timm.is_model(arch.split(".", 1)[0]):
        close = timm.list_models(f"*{arch.split('.', 1)[0][:6]}*")[:5]
        hint = f" (timm has e.g. {', '.join(close)})" if close else ""
        raise ConfigError(
            f"unknown architecture {arch!r}: neither a built-in row ({', '.join(ARCHS)}) nor a timm model{hint}"
        )
    img_size = kwargs.pop("img_size")
    try:
        return timm.create_model(arch, img_size=img_size, **kwargs)
    except TypeError as e:  # a model whose constructor has no img_size (ResNets, ConvNeXts)
        if "img_size" not in str(e):
            raise
        return timm.create_model(arch, **kwargs)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _inputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the model's input: on its device, at its size, normalised, in its
    memory format."""
    x = x.to(device_of(model), non_blocking=True)
    size = getattr(model, "nwa_img_size", x.shape[-1])
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    c = x.shape[1]
    mean = torch.tensor(getattr(model, "nwa_mean", (0.5,) * c), device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(getattr(model, "nwa_std", (0.5,) * c), device=x.device).view(1, -1, 1, 1)
    x = (x - mean) / std
    if getattr(model, "nwa_channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and float buffers (BatchNorm running stats) in module order, detached copies."""
    return {
        k: v.detach().cpu().clone() for k, v in model.state_dict().items() if v.is_floating_point()
    }


def load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load :func:`state_tensors` output; integer buffers (batch counters) keep their values."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"root tensors do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from any printable parts, the same in every process."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") >> 1


def augment(x: torch.Tensor, flags: dict[str, bool], g: torch.Generator) -> torch.Tensor:
    if flags.get("hflip"):
        flip = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if flags.get("shift"):
        pad = max(1, x.shape[-1] // 8)
        padded = F.pad(x, (pad, pad, pad, pad))
        dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
        x = padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
    return x


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """One of :data:`OPTIMIZERS` over ``params``."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def train(
    model: nn.Module,
    x: Images,
    y: torch.Tensor,
    steps: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    flags: dict[str, bool] | None = None,
    optimizer: str = "adamw",
) -> float:
    """Plain loop with a cosine schedule over uint8 images on the model's device (AdamW
    unless ``optimizer`` names another of :data:`OPTIMIZERS`); returns the mean loss of the
    last 10 steps."""
    g = torch.Generator().manual_seed(seed)
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    model.train()
    perm, pos, losses = torch.randperm(len(y), generator=g), 0, []
    for _ in range(steps):
        if pos + batch_size > len(perm):
            perm, pos = torch.randperm(len(y), generator=g), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        xb = augment(datasets.to_float(take(x, idx)), flags or {}, g)
        loss = F.cross_entropy(model(_inputs(model, xb)), y[idx].to(device_of(model)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return float(np.mean(losses[-10:]))


@torch.inference_mode()
def accuracy(
    model: nn.Module, x: Images, y: torch.Tensor, classes: Sequence[int], sigma: float = 0.0
) -> float:
    """Top-1 accuracy predicting among ``classes`` only, optionally under the fixed noise corruption."""
    if len(y) == 0:
        return float("nan")
    model.eval()
    keep = torch.as_tensor(list(classes))
    on_device = keep.to(device_of(model))
    correct = 0
    for i in range(0, len(y), 500):
        xb = datasets.to_float(take(x, slice(i, i + 500)))
        if sigma > 0:
            xb = datasets.corrupt(xb, sigma, seed=i)
        pred = keep[model(_inputs(model, xb))[:, on_device].argmax(1).cpu()]
        correct += int((pred == y[i : i + 500]).sum())
    return correct / len(y)


def pick(y: torch.Tensor, classes: Sequence[int], n: int, seed: int) -> torch.Tensor:
    """Indices of up to ``n`` images whose label is in ``classes``, in a seeded order."""
    idx = torch.nonzero(torch.isin(y, torch.as_tensor(list(classes)))).flatten()
    return idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:n]]
