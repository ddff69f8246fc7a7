"""Small real networks (conv and MLP chains) shared by the symmetry and encoder tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def conv_chain(gen: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """conv 1->8 3x3, conv 8->8 3x3, global average pool, linear 8->10 (raw layouts)."""
    shapes = [(8, 1, 3, 3), (8, 8, 3, 3), (10, 8)]
    return [torch.randn(s, generator=gen) * 0.5 for s in shapes], [
        torch.randn(s[0], generator=gen) * 0.1 for s in shapes
    ]


def conv_forward(ws: list[torch.Tensor], bs: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = F.relu(F.conv2d(x, ws[0], bs[0], padding=1))
    h = F.relu(F.conv2d(h, ws[1], bs[1], padding=1))
    return F.linear(h.mean(dim=(2, 3)), ws[2], bs[2])


def mlp_chain(gen: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """MLP 6 -> 16 -> 12 -> 4."""
    shapes = [(16, 6), (12, 16), (4, 12)]
    return [torch.randn(s, generator=gen) * 0.5 for s in shapes], [
        torch.randn(s[0], generator=gen) * 0.1 for s in shapes
    ]


def mlp_forward(ws: list[torch.Tensor], bs: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    for i, (w, b) in enumerate(zip(ws, bs)):
        x = F.linear(x, w, b)
        if i < len(ws) - 1:
            x = torch.tanh(x)
    return x
