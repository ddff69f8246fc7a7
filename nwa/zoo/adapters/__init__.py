"""Adapters: public model-zoo layouts read into the one :class:`~nwa.zoo.manifest.Zoo` API.

:func:`open_zoo` opens an nwa zoo directory, or any layout an adapter knows, named or detected:

* ``model_j``: Model-J discriminative models in Hugging Face cache folders,
  ``[SPLIT/]models--ORG--NAME/`` (:func:`~nwa.zoo.adapters.model_j.open_model_j`).
* ``model_j_lora``: Model-J Stable Diffusion LoRAs,
  ``SPLIT/model_idx_XXXX/pytorch_lora_weights.safetensors``
  (:func:`~nwa.zoo.adapters.model_j_lora.open_model_j_lora`).
* ``small_cnn_zoo``: the Small CNN Zoo, ``weights.npy`` + ``layout.csv`` + ``metrics.csv.gz``
  (:func:`~nwa.zoo.adapters.small_cnn_zoo.open_small_cnn_zoo`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nwa.errors import ZooError
from nwa.weights.io import LORA_FILE_NAMES
from nwa.zoo.manifest import META, SPLITS, Zoo


def _model_j(path: Path, **options: Any) -> Zoo:
    from nwa.zoo.adapters.model_j import open_model_j

    return open_model_j(path, **options)


def _model_j_lora(path: Path, **options: Any) -> Zoo:
    from nwa.zoo.adapters.model_j_lora import open_model_j_lora

    return open_model_j_lora(path, **options)


def _small_cnn_zoo(path: Path, **options: Any) -> Zoo:
    from nwa.zoo.adapters.small_cnn_zoo import open_small_cnn_zoo

    return open_small_cnn_zoo(path, **options)


ADAPTERS: dict[str, Callable[..., Zoo]] = {
    "model_j": _model_j,
    "model_j_lora": _model_j_lora,
    "small_cnn_zoo": _small_cnn_zoo,
}


def detect_adapter(path: str | Path) -> str | None:
    """The adapter whose layout ``path`` has, or ``None``; looks at file names only."""
    path = Path(path)
    if (path / "weights.npy").is_file() and (path / "layout.csv").is_file():
        return "small_cnn_zoo"
    if any(p.is_dir() for p in [*path.glob("models--*"), *path.glob("*/models--*")]):
        return "model_j"
    for split in SPLITS:
        for folder in (path / split).glob("*"):
            if any((folder / name).is_file() for name in LORA_FILE_NAMES):
                return "model_j_lora"
    return None


def open_zoo(path: str | Path, adapter: str | None = None, **options: Any) -> Zoo:
    """Open a zoo: an nwa zoo directory, or a public layout through an adapter.

    Args:
        path: The zoo folder.
        adapter: ``"model_j"``, ``"model_j_lora"`` or ``"small_cnn_zoo"``; default: an nwa zoo
            when ``zoo.json`` is present, else the adapter whose layout the folder has.
        **options: Passed to the adapter's reader (e.g. ``metadata=``, ``seed=``).

    Raises:
        ZooError: No such folder, an unknown adapter name, no recognizable layout, or whatever
            the chosen reader finds wrong.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ZooError(f"{path}: no such zoo folder")
    if adapter is not None and adapter not in ADAPTERS:
        raise ZooError(f"unknown adapter {adapter!r}; choose one of {sorted(ADAPTERS)}")
    if adapter is None and (path / META).is_file():
        if options:
            raise ZooError(f"{path}: options {sorted(options)} apply to adapters, not nwa zoos")
        return Zoo.open(path)
    name = adapter or detect_adapter(path)
    if name is None:
        raise ZooError(
            f"{path}: not a zoo: no {META} (nwa zoo), weights.npy + layout.csv (small_cnn_zoo), "
            f"models--ORG--NAME folders (model_j) or SPLIT/*/{LORA_FILE_NAMES[0]} (model_j_lora)"
        )
    return ADAPTERS[name](path, **options)


__all__ = ["ADAPTERS", "detect_adapter", "open_zoo"]
