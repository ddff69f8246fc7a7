"""Multilayer perceptrons on flat inputs: the flattened-weights baseline and a shared builder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nwa.weights.spec import WeightShapes, from_shapes


def mlp_layers(in_dim: int, hidden: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """``[Linear -> ReLU -> Dropout] * len(hidden)``; the identity when ``hidden`` is empty."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, int(h)), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = int(h)
    return nn.Sequential(*layers)


class FlatMLP(nn.Module):
    r"""MLP on the flattened, naively ordered weights (WeightNet paper baseline).

    .. math:: h = \phi_K \circ \dots \circ \phi_1(\mathrm{vec}(\theta)),\qquad
              \phi_k(z) = \mathrm{Dropout}(\mathrm{ReLU}(A_k z + a_k))

    Not invariant to hidden-neuron permutations: a permuted copy of the same network is a
    different input vector.

    Args:
        in_dim: Length D of the flattened weight vector, from the data.
        hidden: Widths of the hidden layers; the last one is the representation size.
        dropout: Dropout probability after each hidden layer.

    Shapes:
        - input: [B, D] (any [B, ...] is flattened)
        - output: [B, out_dim] with ``out_dim = hidden[-1]``
    """

    inputs = ("flat",)
    """The ``data.input`` families this encoder reads."""

    def __init__(
        self,
        in_dim: int | WeightShapes,
        hidden: Sequence[int] = (128, 64, 32),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        in_dim = from_shapes(in_dim, "flat_dim")
        if len(hidden) == 0:
            raise ValueError("FlatMLP needs at least one hidden layer")
        self.in_dim = int(in_dim)
        self.net = mlp_layers(self.in_dim, hidden, dropout)
        self.out_dim = int(hidden[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_dim:
            raise ValueError(f"FlatMLP expects {self.in_dim} features, got {x.shape[1]}")
        return self.net(x)
