"""PCA baseline: principal components of the flattened weights, then a linear or MLP map."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from nwa.metanets.mlp import mlp_layers
from nwa.weights.spec import WeightShapes, from_shapes


class PCAEncoder(nn.Module):
    r"""PCA of the flattened weights (fitted once, non-gradient), then an optional learned map.

    :meth:`fit` computes, on the training models :math:`X \in \mathbb{R}^{N \times D}`, the mean
    :math:`\mu` and the top ``n_components`` right singular vectors
    :math:`C \in \mathbb{R}^{D \times k}` of :math:`X - \mu` by an exact SVD in float64 (no
    randomness: the same data gives the same buffers; each component's sign is fixed so that its
    largest-magnitude entry is positive, as scikit-learn does). Then

    .. math:: z = (x - \mu)\, C \;[\,\oslash \sqrt{\mathrm{var}}\,],\qquad
              h = \mathrm{head}(z)

    with ``head`` the identity (``"none"``), one linear layer (``"linear"``) or an MLP (``"mlp"``).
    ``mu``, ``C`` and the explained variances are buffers: saved in checkpoints, never trained.
    When fewer than ``n_components`` directions exist (``min(N, D)``), the rest are zero columns.

    Args:
        in_dim: Length D of the flattened weight vector, from the data.
        n_components: Number of principal components k.
        head: ``"none"``, ``"linear"`` or ``"mlp"``.
        dim: Output size of the linear or MLP head.
        hidden: Hidden widths of the MLP head.
        whiten: Divide scores by the components' standard deviations.
        dropout: Dropout in the MLP head.

    Shapes:
        - input: [B, D] (any [B, ...] is flattened)
        - output: [B, out_dim] with ``out_dim = n_components`` for ``head="none"``, else ``dim``
    """

    inputs = ("flat",)
    """The ``data.input`` families this encoder reads."""

    def __init__(
        self,
        in_dim: int | WeightShapes,
        n_components: int = 32,
        head: str = "linear",
        dim: int = 64,
        hidden: Sequence[int] = (64,),
        whiten: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_dim = from_shapes(in_dim, "flat_dim")
        if head not in ("none", "linear", "mlp"):
            raise ValueError(f"head must be 'none', 'linear' or 'mlp', got {head!r}")
        self.in_dim, self.n_components, self.whiten = int(in_dim), int(n_components), whiten
        self.register_buffer("mean", torch.zeros(self.in_dim))
        self.register_buffer("components", torch.zeros(self.in_dim, self.n_components))
        self.register_buffer("explained_variance", torch.ones(self.n_components))
        self.register_buffer("fitted", torch.tensor(False))
        k = self.n_components
        if head == "none":
            self.head: nn.Module = nn.Identity()
            self.out_dim = k
        elif head == "linear":
            self.head = nn.Linear(k, dim)
            self.out_dim = dim
        else:
            self.head = nn.Sequential(
                mlp_layers(k, hidden, dropout), nn.Linear(int(hidden[-1]) if hidden else k, dim)
            )
            self.out_dim = dim

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> PCAEncoder:
        """Fit mean and components on the training weights [N, D] (deterministic)."""
        x = x.detach().flatten(1).to("cpu", torch.float64)
        if x.shape[1] != self.in_dim:
            raise ValueError(f"PCAEncoder expects {self.in_dim} features, got {x.shape[1]}")
        n = x.shape[0]
        if n < 2:
            raise ValueError("PCA needs at least 2 training models")
        mean = x.mean(dim=0)
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        k = min(self.n_components, vh.shape[0])
        if k < self.n_components:
            warnings.warn(
                f"only {k} principal directions exist (N={n}, D={self.in_dim}); "
                f"the other {self.n_components - k} components are zero",
                stacklevel=2,
            )
        vh, s = vh[:k], s[:k]
        top = vh.abs().argmax(dim=1)
        vh = vh * torch.sign(vh.gather(1, top[:, None]))
        comps = torch.zeros(self.in_dim, self.n_components, dtype=torch.float64)
        comps[:, :k] = vh.T
        var = torch.ones(self.n_components, dtype=torch.float64)
        var[:k] = (s**2 / (n - 1)).clamp_min(1e-12)
        for buf, val in (
            (self.mean, mean),
            (self.components, comps),
            (self.explained_variance, var),
        ):
            buf.copy_(val.to(buf.dtype))
        self.fitted.fill_(True)
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """PCA scores [B, n_components] of weights [B, D] (no head)."""
        if not bool(self.fitted):
            raise RuntimeError(
                "PCAEncoder.fit(X) must be called on the training weights before use"
            )
        x = x.flatten(1)
        if x.shape[1] != self.in_dim:
            raise ValueError(f"PCAEncoder expects {self.in_dim} features, got {x.shape[1]}")
        z = (x - self.mean) @ self.components
        return z / self.explained_variance.sqrt() if self.whiten else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.transform(x))
