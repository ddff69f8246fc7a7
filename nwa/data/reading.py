"""Reading the selected layers of zoo members, and turning them into each metanetwork's input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from nwa.errors import LayerNotFoundError
from nwa.weights.spec import ZooSpec, check_finite, select_layers, to_matrix
from nwa.zoo.manifest import Zoo

INPUTS = ("matrix", "flat", "stats", "graph", "chain")


def bias_name(weight: str) -> str | None:
    """``x.weight`` -> ``x.bias``; names not ending in ``weight`` have no bias partner."""
    return weight[: -len("weight")] + "bias" if weight.endswith("weight") else None


def resolve_spec(
    zoo: Zoo, rows: pd.DataFrame, selector: str | int | Sequence[str | int], input: str
) -> tuple[ZooSpec, list[str]]:
    """Resolve the layer selector on the first model and check every model's header against it.

    Only headers are read. For ``chain`` and ``graph`` inputs the biases that pair with the selected
    weights are read too; the returned ``extra`` lists them.

    Raises:
        LayerNotFoundError: A selected layer is absent from some model (the message names its file).
        ShapeMismatchError: A layer's shape differs across models.
    """
    first = rows.iloc[0]
    with zoo.open_model(first) as src:
        available = src.names()
        layout = zoo.meta.layout.get(str(first["arch"]))
        if isinstance(selector, int) or (
            not isinstance(selector, str) and any(isinstance(s, int) for s in selector)
        ):
            available = [n for n in layout if n in src] if layout else available
        names = select_layers(available, selector, zoo.path_of(first))
        extra = []
        if input in ("chain", "graph"):
            extra = [b for b in map(bias_name, names) if b and b in src and b not in names]
        spec = ZooSpec.from_shapes({n: src.info(n).shape for n in names + extra})
    for _, row in rows.iloc[1:].iterrows():
        with zoo.open_model(row) as src:
            for layer in spec.layers:
                if layer.name not in src:
                    raise LayerNotFoundError(
                        zoo.path_of(row),
                        f"layer {layer.name!r} is missing from this model (model {row['id']})",
                        tensor=layer.name,
                    )
                spec.check(layer.name, src.info(layer.name).shape, zoo.path_of(row))
    return spec, extra


def read_layers(
    zoo: Zoo, row: pd.Series, names: Sequence[str], check: bool = True
) -> dict[str, torch.Tensor]:
    """Read only ``names`` from one model, as float32; raise on NaN/Inf when ``check``."""
    out = {}
    with zoo.open_model(row) as src:
        for n in names:
            t = src.get(n).float()
            if check:
                check_finite(t, zoo.path_of(row), n)
            out[n] = t
    return out


@dataclass
class Normalizer:
    """Per-layer scalar mean and std, estimated on training models only."""

    mean: dict[str, float]
    std: dict[str, float]

    @classmethod
    def fit(cls, samples: Sequence[dict[str, torch.Tensor]]) -> Normalizer:
        mean, std = {}, {}
        for name in samples[0]:
            values = torch.cat([s[name].flatten() for s in samples])
            mean[name] = float(values.mean())
            std[name] = float(values.std()) if values.numel() > 1 else 1.0
            if not std[name] > 1e-12:
                std[name] = 1.0
        return cls(mean, std)

    @classmethod
    def identity(cls, names: Sequence[str]) -> Normalizer:
        return cls(dict.fromkeys(names, 0.0), dict.fromkeys(names, 1.0))

    def __call__(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if all(self.mean[n] == 0.0 and self.std[n] == 1.0 for n in tensors):
            return tensors
        return {n: (t - self.mean[n]) / self.std[n] for n, t in tensors.items()}


def make_input(kind: str, tensors: dict[str, torch.Tensor], spec: ZooSpec, weights: Sequence[str]):
    """One model's tensors -> the input of one metanetwork family (see :data:`INPUTS`).

    ``matrix``: ``{name: [d_H, d_W]}``; ``flat``: ``[D]``; ``stats``: ``[7 * n_tensors]``;
    ``chain``: ``{"weights": [[out, in, k], ...], "biases": [[out], ...]}``; ``graph``: a
    ``torch_geometric.data.Data``.
    """
    if kind == "matrix":
        return {n: to_matrix(tensors[n]) for n in weights}
    if kind == "flat":
        return torch.cat([tensors[n].flatten() for n in spec.names])
    if kind == "stats":
        from nwa.weights.stats import statnn_features

        return statnn_features([tensors[n] for n in spec.names])
    from nwa.weights.graph import chain_from_tensors, chain_to_graph

    biases = [tensors.get(b) if (b := bias_name(n)) else None for n in weights]
    ws, bs = chain_from_tensors([tensors[n] for n in weights], biases, names=list(weights))
    if kind == "chain":
        return {"weights": ws, "biases": bs}
    return chain_to_graph(ws, bs)


def collate(kind: str, items: list):
    """Stack the inputs of a batch of models."""
    if kind == "matrix":
        return {n: torch.stack([it[n] for it in items]) for n in items[0]}
    if kind in ("flat", "stats"):
        return torch.stack(items)
    if kind == "chain":
        n = len(items[0]["weights"])
        return {
            "weights": [torch.stack([it["weights"][i] for it in items]) for i in range(n)],
            "biases": [torch.stack([it["biases"][i] for it in items]) for i in range(n)],
        }
    from torch_geometric.data import Batch

    return Batch.from_data_list(items)
