"""WeightNet: a permutation-invariant transformer over neuron tokens (seed "Permutation-Invariant Transformer")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nwa.errors import ShapeMismatchError
from nwa.weights.spec import WeightShapes, from_shapes

POOLINGS = ("cls", "mean")


def _encoder(d_model: int, heads: int, blocks: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model,
        heads,
        dim_feedforward=2 * d_model,
        dropout=dropout,
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)


class WeightNet(nn.Module):
    r"""Neuron-token transformer, exactly invariant to hidden-neuron permutations.

    The network is a chain of L layers with weights :math:`W_l \in \mathbb{R}^{n_l \times
    n_{l-1} \times k_l}` and biases :math:`b_l`. Neuron :math:`j` of layer :math:`l` is one token.

    **Token embedding.** The first layer's inputs have a fixed order, so its neurons embed their
    incoming weights linearly: :math:`t^0_j = A_0\,\mathrm{vec}(W_0[j]) + b_{0j} a_0`. For
    :math:`l > 0` the incoming-weight vector :math:`W_l[j, :, :]` is indexed by the previous
    layer's neurons, which a permutation reorders, so a linear map of it would not be invariant.
    Instead each incoming weight is paired with the (equivariant) state :math:`h^{l-1}_i` of its
    source neuron and the pairs are averaged, a DeepSets sum over incoming connections:

    .. math::
        m^l_j = \frac{1}{n_{l-1}} \sum_i W_l[j, i, :] \otimes h^{l-1}_i \in \mathbb{R}^{k_l d},
        \qquad t^l_j = \mathrm{MLP}_l(m^l_j) + b_{lj} a_l

    Permuting layer :math:`l-1`'s neurons permutes both :math:`i`-indexed factors, so
    :math:`m^l_j` is unchanged. Every token also gets a layer embedding and a type (conv if
    :math:`k_l > 1`, else linear) embedding; only the last layer's output neurons, whose order is
    fixed, get a positional embedding.

    **Intra-layer attention.** :math:`h^l = \mathrm{Enc}_\text{intra}(t^l)` is self-attention over
    the neurons of layer :math:`l` with no positions (equivariant; shared weights across layers;
    each layer is processed on its own, so there is no padding to mask). The layer token is the
    mean :math:`s_l = \frac{1}{n_l}\sum_j h^l_j` (invariant), and :math:`h^l` feeds layer
    :math:`l + 1`'s tokens.

    **Cross-layer attention.** :math:`[\mathrm{CLS}, s_0 + p_0, \dots, s_{L-1} + p_{L-1}]` (layer
    order is fixed, so layer positions :math:`p_l` are allowed) through
    :math:`\mathrm{Enc}_\text{cross}`, then the CLS output or the mean of the layer outputs.

    Args:
        chain_shapes: ``(out_l, in_l, k_l)`` per layer, from the data (``in_l == out_{l-1}``).
        d_model: Token width; also the output size.
        heads: Attention heads in both encoders.
        intra_blocks: Transformer blocks of the intra-layer encoder.
        cross_blocks: Transformer blocks of the cross-layer encoder.
        pooling: ``"cls"`` or ``"mean"`` over the cross-layer outputs.
        dropout: Dropout inside the transformer blocks.

    Shapes:
        - input: ``{"weights": [[B, out_l, in_l, k_l]] * L, "biases": [[B, out_l]] * L}``
        - output: [B, out_dim] with ``out_dim = d_model``
    """

    def __init__(
        self,
        chain_shapes: Sequence[Sequence[int]] | WeightShapes,
        d_model: int = 64,
        heads: int = 2,
        intra_blocks: int = 1,
        cross_blocks: int = 1,
        pooling: str = "cls",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        chain_shapes = from_shapes(chain_shapes, "chain")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.chain_shapes = [tuple(int(s) for s in shp) for shp in chain_shapes]
        if not self.chain_shapes or any(len(s) != 3 for s in self.chain_shapes):
            raise ValueError(
                f"chain_shapes must be a non-empty list of (out, in, k), got {chain_shapes}"
            )
        for li in range(1, len(self.chain_shapes)):
            if self.chain_shapes[li][1] != self.chain_shapes[li - 1][0]:
                raise ShapeMismatchError(
                    "<chain>",
                    f"layer {li} takes {self.chain_shapes[li][1]} inputs but layer {li - 1} has {self.chain_shapes[li - 1][0]} outputs",
                )
        n_layers, d = len(self.chain_shapes), d_model
        out0, in0, k0 = self.chain_shapes[0]
        self.first = nn.Linear(in0 * k0, d)
        self.incoming = nn.ModuleList(
            nn.Sequential(nn.Linear(k * d, d), nn.GELU(), nn.Linear(d, d))
            for _, _, k in self.chain_shapes[1:]
        )
        self.bias_proj = nn.Parameter(torch.randn(n_layers, d) * 0.02)
        self.layer_emb = nn.Parameter(torch.randn(n_layers, d) * 0.02)
        self.type_emb = nn.Parameter(torch.randn(2, d) * 0.02)
        self.out_pos = nn.Parameter(torch.randn(self.chain_shapes[-1][0], d) * 0.02)
        self.token_norm = nn.LayerNorm(d)
        self.intra = _encoder(d, heads, intra_blocks, dropout)
        self.layer_pos = nn.Parameter(torch.randn(n_layers, d) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.cross = _encoder(d, heads, cross_blocks, dropout)
        self.out_norm = nn.LayerNorm(d)
        self.pooling = pooling
        self.out_dim = d

    def _check(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> None:
        if len(weights) != len(self.chain_shapes) or len(biases) != len(self.chain_shapes):
            raise ShapeMismatchError(
                "<batch>",
                f"WeightNet expects {len(self.chain_shapes)} layers, got {len(weights)} weights and {len(biases)} biases",
            )
        for li, (w, b, shp) in enumerate(zip(weights, biases, self.chain_shapes)):
            if w.dim() != 4 or tuple(w.shape[1:]) != shp or tuple(b.shape) != (w.shape[0], shp[0]):
                raise ShapeMismatchError(
                    "<batch>",
                    f"WeightNet expects weight [B, {shp[0]}, {shp[1]}, {shp[2]}] and bias [B, {shp[0]}], got {list(w.shape)} and {list(b.shape)}",
                    tensor=f"layer {li}",
                )

    def _tokens(
        self, li: int, w: torch.Tensor, b: torch.Tensor, prev: torch.Tensor | None
    ) -> torch.Tensor:
        bsz, out, inp, k = w.shape
        if prev is None:
            t = self.first(w.reshape(bsz, out, inp * k))
        else:
            m = torch.einsum("boik,bid->bokd", w, prev) / inp  # mean over incoming connections
            t = self.incoming[li - 1](m.reshape(bsz, out, k * prev.shape[-1]))
        t = (
            t
            + b.unsqueeze(-1) * self.bias_proj[li]
            + self.layer_emb[li]
            + self.type_emb[int(k > 1)]
        )
        if li == len(self.chain_shapes) - 1:
            t = t + self.out_pos
        return self.token_norm(t)

    def forward(self, chain: Mapping[str, Sequence[torch.Tensor]]) -> torch.Tensor:
        weights, biases = list(chain["weights"]), list(chain["biases"])
        self._check(weights, biases)
        prev, layer_tokens = None, []
        for li, (w, b) in enumerate(zip(weights, biases)):
            h = self.intra(self._tokens(li, w, b, prev))  # [B, out_l, d], equivariant
            layer_tokens.append(h.mean(dim=1))
            prev = h
        z = torch.stack(layer_tokens, dim=1) + self.layer_pos
        if self.pooling == "cls":
            z = torch.cat([self.cls.expand(z.shape[0], -1, -1), z], dim=1)
        z = self.cross(z)
        return self.out_norm(z[:, 0] if self.pooling == "cls" else z.mean(dim=1))
