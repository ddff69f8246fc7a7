"""Tree routing: which model tree a model belongs to, from its weights alone.

Models fine-tuned from one root stay close to it, while roots (pretrained or randomly initialized)
lie far apart, so a hierarchical (Ward) clustering of one layer's weights recovers the model trees
(Horwitz et al., "Learning on Model Weights using Tree Experts", CVPR 2025). :class:`TreeRouter`
fits that clustering on training models and sends a new model to the nearest cluster centre;
:class:`~nwa.lit.experts.MixtureOfTreeExperts` trains one expert per cluster.

This module is pure torch/scipy/numpy, so using the router does not import Lightning; the
LightningModule is ``class_path: nwa.lit.experts.MixtureOfTreeExperts``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nwa.errors import ConfigError


def ward_linkage(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Ward linkage of models from their pairwise Euclidean distances.

    Shapes:
        - x: [N, D], one flattened weight matrix per model
        - returns: [N - 1, 4], scipy's linkage matrix (merge heights in column 2)
    """
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist

    x = torch.as_tensor(x).detach().flatten(1).to("cpu", torch.float64).numpy()
    return linkage(pdist(x), method="ward")


def count_trees(heights: Sequence[float] | np.ndarray, gap_ratio: float = 3.0) -> int:
    """Number of trees read from the dendrogram's merge heights.

    The rule: sort the ``N - 1`` merge heights; the lower half are merges of models of one tree
    (a tree has on average more than two models, so most merges are within a tree). Among the
    merges from the median up, find the largest ratio between consecutive heights; if it is at
    least ``gap_ratio``, cut the dendrogram in that gap (the number of trees is the number of
    merges above it plus one), else everything is one tree. Ratios rather than differences make
    the rule independent of the weights' scale; ignoring the lower half keeps near-duplicate
    models (heights near 0, huge ratios) from splitting a tree.

    Args:
        heights: Merge heights of a linkage (column 2 of :func:`ward_linkage`'s result).
        gap_ratio: Smallest height ratio that separates trees.
    """
    h = np.sort(np.asarray(heights, dtype=np.float64))
    best, best_ratio = None, gap_ratio
    for j in range(len(h) // 2, len(h) - 1):
        ratio = h[j + 1] / max(h[j], 1e-12)
        if ratio >= best_ratio:
            best, best_ratio = j, ratio
    return 1 if best is None else len(h) - best


def cluster_purity(clusters: Sequence[Any], trees: Sequence[Any]) -> float:
    """Standard cluster purity: each cluster counts its most common true tree.

    ``purity = (1/N) * sum_k max_t |cluster_k ∩ tree_t|``; 1.0 when no cluster mixes trees.
    """
    clusters, trees = [_plain(c) for c in clusters], [_plain(t) for t in trees]
    if len(clusters) != len(trees):
        raise ValueError(f"{len(clusters)} cluster ids but {len(trees)} trees")
    if not clusters:
        return float("nan")
    by_cluster: dict[Any, Counter] = {}
    for c, t in zip(clusters, trees):
        by_cluster.setdefault(c, Counter())[t] += 1
    return sum(max(cnt.values()) for cnt in by_cluster.values()) / len(clusters)


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, torch.Tensor | np.generic) else v


class TreeRouter(nn.Module):
    """Finds model trees by Ward clustering of one layer and routes models to them.

    :meth:`fit` clusters the training models (Ward linkage of pairwise Euclidean distances),
    chooses the number of trees with :func:`count_trees` unless ``n_trees`` is given, and keeps
    each cluster's mean as its centre. :meth:`route` sends a model to the nearest centre. Cluster
    ids follow the order in which clusters first appear among the training models. The centres
    and the training purity are buffers, so a state dict (or Lightning checkpoint) holds the whole
    router and loads with ``torch.load(weights_only=True)``.

    Args:
        n_trees: Number of trees; ``None`` reads it from the dendrogram.
        gap_ratio: See :func:`count_trees`.

    Shapes:
        - fit: [N, D] flattened weights of one layer (any [N, ...] is flattened)
        - route: [B, D] -> [B] cluster ids in ``0 .. n_trees - 1``
    """

    def __init__(self, n_trees: int | None = None, gap_ratio: float = 3.0) -> None:
        super().__init__()
        if n_trees is not None and n_trees < 1:
            raise ConfigError(f"n_trees must be at least 1, got {n_trees}")
        if gap_ratio <= 1.0:
            raise ConfigError(f"gap_ratio must be above 1, got {gap_ratio}")
        self.requested_trees, self.gap_ratio = n_trees, gap_ratio
        self.register_buffer("centres", torch.zeros(0, 0))
        self.register_buffer("train_purity", torch.tensor(float("nan")))
        self.linkage_: np.ndarray | None = None
        self.tree_names: list[str] = []  # each cluster's most common training tree

    @property
    def n_trees(self) -> int:
        """Number of clusters found (0 before :meth:`fit`)."""
        return int(self.centres.shape[0])

    @property
    def fitted(self) -> bool:
        return self.n_trees > 0

    @torch.no_grad()
    def fit(self, x: torch.Tensor, trees: Sequence[Any] | None = None) -> torch.Tensor:
        """Cluster training models; with their true ``trees``, also set :attr:`train_purity`.

        Returns:
            The cluster id of each training model, [N].
        """
        from scipy.cluster.hierarchy import fcluster

        x = torch.as_tensor(x).detach().flatten(1).float().cpu()
        n = x.shape[0]
        if n < 2:
            raise ConfigError(f"the tree router needs at least 2 training models, got {n}")
        if self.requested_trees is not None and self.requested_trees > n:
            raise ConfigError(f"n_trees={self.requested_trees} exceeds the {n} training models")
        self.linkage_ = ward_linkage(x)
        k = self.requested_trees or count_trees(self.linkage_[:, 2], self.gap_ratio)
        raw = fcluster(self.linkage_, k, criterion="maxclust")
        order = {c: i for i, c in enumerate(dict.fromkeys(raw.tolist()))}  # first appearance
        labels = torch.tensor([order[c] for c in raw.tolist()])
        centres = torch.stack([x[labels == i].mean(0) for i in range(len(order))])
        self.centres = centres.to(self.centres.device)
        if trees is not None:
            self.train_purity.fill_(cluster_purity(labels.tolist(), list(trees)))
            counts: dict[int, Counter] = {}
            for tree, c in zip(trees, labels.tolist()):
                counts.setdefault(c, Counter())[tree] += 1
            self.tree_names = [str(counts[k].most_common(1)[0][0]) for k in range(len(order))]
        return labels

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """The nearest centre's id for each model, [B]."""
        return self.nearest(x)[0]

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest centre's id and the Euclidean distance to it, each [B]."""
        if not self.fitted:
            raise RuntimeError("TreeRouter.fit must be called on training models before route")
        x = x.flatten(1).to(self.centres)
        if x.shape[1] != self.centres.shape[1]:
            raise ValueError(
                f"the router was fitted on {self.centres.shape[1]} weights, got {x.shape[1]}"
            )
        dist, ids = torch.cdist(x, self.centres).min(dim=1)
        return ids, dist

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.route(x)

    purity = staticmethod(cluster_purity)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # The number of trees is only known once fitted: take the saved centres' shape.
        saved = state_dict.get(prefix + "centres")
        if saved is not None and saved.shape != self.centres.shape:
            self.centres = torch.empty_like(saved, device=self.centres.device)
        super()._load_from_state_dict(state_dict, prefix, *args)
