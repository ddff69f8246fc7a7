"""ProbeX: probing a weight matrix with learned inputs (Horwitz et al., CVPR 2025)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nwa.errors import ShapeMismatchError
from nwa.weights.spec import WeightShapes, from_shapes, matrix_shape


def matrix_layer_shapes(layer_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, int]]:
    """Normalize ``{layer: shape}`` to 2-D ``(d_H, d_W)`` shapes (raw shapes go through
    :func:`nwa.weights.spec.matrix_shape`, so conv kernels and biases are accepted too)."""
    if not layer_shapes:
        raise ValueError("layer_shapes is empty: select at least one layer")
    return {str(k): matrix_shape(tuple(int(s) for s in v)) for k, v in layer_shapes.items()}


def check_matrices(
    x: Mapping[str, torch.Tensor] | torch.Tensor, shapes: Mapping[str, tuple[int, int]], owner: str
) -> dict[str, torch.Tensor]:
    """The batch as ``{layer: [B, d_H, d_W]}``, checked against the expected shapes.

    A bare tensor is accepted when the encoder has exactly one layer.
    """
    if isinstance(x, torch.Tensor):
        if len(shapes) != 1:
            raise ValueError(f"{owner} has {len(shapes)} layers; pass a dict of matrices")
        x = {next(iter(shapes)): x}
    out = {}
    for name, (d_h, d_w) in shapes.items():
        if name not in x:
            raise KeyError(f"{owner} expects layer {name!r}; the batch has {sorted(x)}")
        t = x[name]
        if t.dim() != 3 or tuple(t.shape[1:]) != (d_h, d_w):
            raise ShapeMismatchError(
                "<batch>", f"{owner} expects [B, {d_h}, {d_w}], got {list(t.shape)}", tensor=name
            )
        out[name] = t
    return out


class ProbeXLayer(nn.Module):
    """ProbeX on one weight matrix (see :class:`ProbeX`).

    Args:
        d_h: Rows of the matrix (output units).
        d_w: Columns of the matrix (input units).
        rank_u: Number of probes r_U.
        rank_v: Width r_V of the shared projection of each probe response.
        dim: Representation size r_T.
        relu: Apply ReLU after the projection (ablation switch).
    """

    def __init__(
        self,
        d_h: int,
        d_w: int,
        rank_u: int = 128,
        rank_v: int = 128,
        dim: int = 128,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.probes = nn.Parameter(torch.randn(d_w, rank_u) * d_w**-0.5)
        self.proj = nn.Linear(d_h, rank_v)
        self.act = nn.ReLU() if relu else nn.Identity()
        self.encode = nn.Linear(rank_u * rank_v, dim)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, d_H, d_W] -> [B, dim]."""
        r = torch.matmul(x, self.probes)  # [B, d_H, r_U]: each probe through the layer
        z = self.act(self.proj(r.transpose(1, 2)))  # [B, r_U, r_V]
        return self.encode(z.flatten(1))


class ProbeX(nn.Module):
    r"""ProbeX encoder: one probing expert per selected layer, representations concatenated.

    For a weight matrix :math:`X \in \mathbb{R}^{d_H \times d_W}` (out x in; conv kernels
    reshaped to out x in*kh*kw, 1-D tensors as a column):

    .. math::
        R = X U,\quad Z = \mathrm{ReLU}(R^\top V + c),\quad
        h = T\,\mathrm{vec}(Z) + t

    with learned probes :math:`U \in \mathbb{R}^{d_W \times r_U}`, a projection
    :math:`V \in \mathbb{R}^{d_H \times r_V}` shared by all probes, and
    :math:`T \in \mathbb{R}^{r_T \times r_U r_V}`. Each layer has its own (U, V, T); the
    representations of the layers are concatenated in the order of ``layer_shapes``.
    Parameters per layer: :math:`d_W r_U + (d_H + 1) r_V + (r_U r_V + 1) r_T`
    (about 2.3 M for a 768 x 768 layer at r_U = r_V = r_T = 128, against 59 M for the
    :class:`~nwa.metanets.dense.Dense` expert mapping straight to 100 outputs).

    Args:
        layer_shapes: ``{layer name: (d_H, d_W)}`` of the selected layers, from the data
            (raw tensor shapes are also accepted and viewed as matrices).
        rank_u: Number of probes r_U (official default 128).
        rank_v: Width r_V of the projection shared by the probes (official default 128).
        dim: Representation size r_T per layer (official 512; 128 in some runs).
        relu: Apply the ReLU after the projection; ``False`` for the linear ablation.

    Shapes:
        - input: ``{layer: [B, d_H, d_W]}`` (a bare [B, d_H, d_W] tensor if one layer)
        - output: [B, out_dim] with ``out_dim = dim * len(layer_shapes)``
    """

    inputs = ("matrix",)
    """The ``data.input`` families this encoder reads."""

    def __init__(
        self,
        layer_shapes: Mapping[str, Sequence[int]] | WeightShapes,
        rank_u: int = 128,
        rank_v: int = 128,
        dim: int = 128,
        relu: bool = True,
    ) -> None:
        super().__init__()
        layer_shapes = from_shapes(layer_shapes, "layers")
        self.layer_shapes = matrix_layer_shapes(layer_shapes)
        self.layers = nn.ModuleList(
            ProbeXLayer(d_h, d_w, rank_u, rank_v, dim, relu)
            for d_h, d_w in self.layer_shapes.values()
        )
        self.out_dim = dim * len(self.layer_shapes)

    def forward(self, x: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        xs = check_matrices(x, self.layer_shapes, "ProbeX")
        return torch.cat([m(xs[name]) for name, m in zip(self.layer_shapes, self.layers)], dim=1)
