"""The Dense expert: one linear map on the flattened weights of each selected layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nwa.metanets.probex import check_matrices, matrix_layer_shapes
from nwa.weights.spec import WeightShapes, from_shapes


class Dense(nn.Module):
    r"""Dense expert (the ProbeX paper's baseline): a linear layer on each flattened matrix.

    .. math:: h = \big[\, A_1 \mathrm{vec}(X_1) + a_1 \;\|\; \dots \;\|\;
              A_n \mathrm{vec}(X_n) + a_n \,\big],\qquad A_i \in \mathbb{R}^{dim \times d_H d_W}

    In the paper the linear layer maps straight to the outputs: set ``dim`` to the number of
    outputs and pair the encoder with an identity-like head (a 768 x 768 layer with 100 outputs
    then has about 59.0 M parameters, against about 2.3 M for ProbeX). With the default
    ``dim=128`` followed by a linear task head the model stays linear (a low-rank factorization of
    the same map) and has ``128 * d_H * d_W`` parameters per layer.

    Args:
        layer_shapes: ``{layer name: (d_H, d_W)}`` of the selected layers, from the data.
        dim: Output size per layer (the number of outputs for the paper's Dense expert).
        bias: Learn the offsets ``a_i``.

    Shapes:
        - input: ``{layer: [B, d_H, d_W]}`` (a bare [B, d_H, d_W] tensor if one layer)
        - output: [B, out_dim] with ``out_dim = dim * len(layer_shapes)``
    """

    inputs = ("matrix",)
    """The ``data.input`` families this encoder reads."""

    def __init__(
        self,
        layer_shapes: Mapping[str, Sequence[int]] | WeightShapes,
        dim: int = 128,
        bias: bool = True,
    ) -> None:
        super().__init__()
        layer_shapes = from_shapes(layer_shapes, "layers")
        self.layer_shapes = matrix_layer_shapes(layer_shapes)
        self.layers = nn.ModuleList(
            nn.Linear(d_h * d_w, dim, bias=bias) for d_h, d_w in self.layer_shapes.values()
        )
        self.out_dim = dim * len(self.layer_shapes)

    def forward(self, x: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        xs = check_matrices(x, self.layer_shapes, "Dense")
        return torch.cat(
            [m(xs[name].flatten(1)) for name, m in zip(self.layer_shapes, self.layers)], dim=1
        )
