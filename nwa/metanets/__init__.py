"""Metanetwork encoders: pure ``torch.nn`` modules mapping weights to representations [B, out_dim].

Families by input (what the DataModule yields):

- matrix ``{layer: [B, d_H, d_W]}``: :class:`ProbeX`, :class:`Dense`;
- flat ``[B, D]``: :class:`FlatMLP`, :class:`PCAEncoder`;
- stats ``[B, F]``: :class:`StatNNMLP` (and the non-gradient :class:`StatNNBoosted`);
- graph: a ``Batch`` of neural graphs of whole networks, any architectures and sizes mixed
  (:mod:`nwa.weights.graph`), or a chain ``{"weights": [[B, out, in, k]], "biases": [[B, out]]}``:
  :class:`NWPA`, :class:`WeightNet` (both invariant to hidden-neuron permutations).

Every encoder declares the inputs it reads (``inputs``; ``python -m nwa.fit`` checks
``data.input`` against it before opening the zoo, :mod:`nwa.metanets.inputs`) and exposes
``out_dim``; heads and losses live in :mod:`nwa.tasks`.
"""

from __future__ import annotations

from torch import nn

from nwa.metanets.dense import Dense
from nwa.metanets.mlp import FlatMLP
from nwa.metanets.nwpa import NWPA
from nwa.metanets.pca import PCAEncoder
from nwa.metanets.probex import ProbeX
from nwa.metanets.statnn import StatNNBoosted, StatNNMLP
from nwa.metanets.weightnet import WeightNet


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters of ``module`` (only those with ``requires_grad`` by default).

    Works on modules built on the ``meta`` device, so large models can be counted without
    allocating them.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "NWPA",
    "Dense",
    "FlatMLP",
    "PCAEncoder",
    "ProbeX",
    "StatNNBoosted",
    "StatNNMLP",
    "WeightNet",
    "count_parameters",
]
