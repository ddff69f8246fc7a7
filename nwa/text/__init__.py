"""Text encoders for UNet conditioning and weight-to-text alignment, with an embedding cache."""

from __future__ import annotations

from pathlib import Path

from nwa.errors import ConfigError
from nwa.text.cache import EmbeddingCache, default_cache_dir
from nwa.text.clip import HFCLIPEncoder, OpenCLIPEncoder, open_clip_names
from nwa.text.encoders import MiniLMEncoder, TextEncoder

ENCODERS = ("minilm", "open_clip:<model name>", "hf_clip")


def build_text_encoder(
    name: str = "minilm",
    weights: str | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 1,
    device: str = "cpu",
) -> TextEncoder:
    """Build a text encoder by name.

    Args:
        name: ``minilm`` (default, offline); ``open_clip:<model>`` such as ``open_clip:ViT-B-32``
            (or a bare open_clip model name); ``hf_clip`` for a transformers CLIP folder.
        weights: A file for open_clip, a folder for ``hf_clip`` (either may be a Hub id
            ``hf-hub:ORG/NAME[/SUBFOLDER][@REVISION]``); unused by minilm.
        cache_dir: Folder of the on-disk embedding cache; ``None`` caches in memory only.
        batch_size: Texts per forward pass on a cache miss.
        device: Torch device.

    Raises:
        ConfigError: Unknown name, or weights missing or not fitting the model.
    """
    key = name.strip()
    if key.lower() == "minilm":
        if weights is not None:
            raise ConfigError(
                f"text encoder 'minilm' is bundled and takes no weights (got {weights!r})"
            )
        return MiniLMEncoder(cache_dir, batch_size, device)
    if key.lower() in ("hf_clip", "hf-clip"):
        return HFCLIPEncoder(weights, cache_dir, batch_size, device)
    for prefix in ("open_clip:", "openclip:", "open-clip:"):
        if key.lower().startswith(prefix):
            return OpenCLIPEncoder(key[len(prefix) :], weights, cache_dir, batch_size, device)
    if key in open_clip_names():
        return OpenCLIPEncoder(key, weights, cache_dir, batch_size, device)
    raise ConfigError(f"unknown text encoder {name!r}; use one of {', '.join(ENCODERS)}")


__all__ = [
    "ENCODERS",
    "EmbeddingCache",
    "HFCLIPEncoder",
    "MiniLMEncoder",
    "OpenCLIPEncoder",
    "TextEncoder",
    "build_text_encoder",
    "default_cache_dir",
]
