"""Small real networks of every graph family (timm ResNets and ViTs, plain CNN and MLP chains),
shared by the graph, symmetry and encoder tests."""

from __future__ import annotations

import torch
from torch import nn


def _randomize_norm_stats(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Non-trivial BatchNorm statistics and norm affines, so a wrong permutation shows."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        if isinstance(m, nn.BatchNorm2d | nn.LayerNorm) and m.weight is not None:
            with torch.no_grad():
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
    return model.eval()


def resnet_basic() -> nn.Module:
    from timm.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, [1, 2, 1, 1], in_chans=1, num_classes=5, channels=(4, 8, 8, 16))


def resnet_bottleneck() -> nn.Module:
    """Deep stem, average-pool downsample, bottleneck blocks."""
    from timm.models.resnet import Bottleneck, ResNet

    return ResNet(
        Bottleneck,
        [1, 2, 1, 1],
        in_chans=1,
        num_classes=5,
        channels=(2, 4, 4, 4),
        stem_type="deep",
        stem_width=4,
        avg_down=True,
    )


def vit() -> nn.Module:
    """Two blocks, two heads, layer scale."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=16,
        patch_size=8,
        in_chans=1,
        num_classes=5,
        embed_dim=8,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        init_values=0.5,
    )


def cnn() -> nn.Module:
    """conv, BatchNorm, conv, flatten (2x2 positions per channel), linear."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 5),
    )


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 16),
        nn.Tanh(),
        nn.Linear(16, 12),
        nn.LayerNorm(12),
        nn.Tanh(),
        nn.Linear(12, 4),
    )


NETWORKS = {
    "resnet": (resnet_basic, (1, 16, 16), None),
    "resnet_bottleneck": (resnet_bottleneck, (1, 16, 16), None),
    "vit": (vit, (1, 16, 16), 2),
    "cnn": (cnn, (1, 8, 8), None),
    "mlp": (mlp, (6,), None),
}
"""name -> (constructor, input shape, attention heads)."""


def network(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, int | None]:
    """A seeded network of ``NETWORKS`` in eval mode, an input batch for it, and its heads."""
    make, shape, heads = NETWORKS[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = _randomize_norm_stats(make(), gen)
    return model, torch.randn(3, *shape, generator=gen), heads


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The float tensors of a state dict (no batch counters), in module order."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
