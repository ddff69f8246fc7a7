"""Text encoders for UNet conditioning and weight-to-text alignment, with an embedding cache."""

from nwa.text.cache import EmbeddingCache, default_cache_dir
from nwa.text.clip import HFCLIPEncoder, OpenCLIPEncoder
from nwa.text.encoders import MiniLMEncoder, TextEncoder, build_text_encoder

__all__ = [
    "EmbeddingCache",
    "HFCLIPEncoder",
    "MiniLMEncoder",
    "OpenCLIPEncoder",
    "TextEncoder",
    "build_text_encoder",
    "default_cache_dir",
]
