"""Text-encoder weights given as Hub ids, read offline from a Hugging Face cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from nwa.errors import ConfigError
from nwa.text import build_text_encoder
from tests.hf_cache import cache_repo
from tests.test_text import _hf_clip_folder, _save_random, _tiny_open_clip

MODEL_FILES = ("config.json", "model.safetensors")  # the rest of a CLIP folder is the tokenizer


def _files(
    folder: Path, prefix: str = "", names: tuple[str, ...] | None = None
) -> dict[str, bytes]:
    return {
        prefix + p.name: p.read_bytes()
        for p in folder.iterdir()
        if p.is_file() and (names is None or p.name in names)
    }


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.slow
def test_hf_clip_from_a_repo_and_a_pipeline_subfolder(tmp_path, offline):
    local = _hf_clip_folder(tmp_path / "clip")
    cache_repo(offline, "org/clip", _files(local))
    tokenizer = tuple(n for n in _files(local) if n not in MODEL_FILES)
    pipeline = _files(local, "text_encoder/", MODEL_FILES) | _files(local, "tokenizer/", tokenizer)
    cache_repo(offline, "org/sd", pipeline | {"model_index.json": b"{}"})
    texts = ["a red sneaker", "a bag"]
    want = build_text_encoder("hf_clip", str(local)).encode(texts)
    for spec in ("hf-hub:org/clip", "org/clip", "hf-hub:org/sd/text_encoder"):
        got = build_text_encoder("hf_clip", spec).encode(texts)
        assert torch.allclose(got, want, atol=1e-6), spec


def test_open_clip_from_a_repo(tmp_path, offline):
    name = _tiny_open_clip(tmp_path)
    path = _save_random(name, tmp_path / "open_clip_model.safetensors")
    cache_repo(offline, "laion/tiny", {"open_clip_model.safetensors": path.read_bytes()})
    want = build_text_encoder(f"open_clip:{name}", str(path)).encode(["a cat"])
    got = build_text_encoder(f"open_clip:{name}", "hf-hub:laion/tiny").encode(["a cat"])
    assert torch.allclose(got, want, atol=1e-6)


def test_uncached_text_weights_offline_is_one_line(offline):
    with pytest.raises(ConfigError, match="hf-hub:org/none: not in the Hugging Face cache") as err:
        build_text_encoder("hf_clip", "hf-hub:org/none")
    assert "\n" not in str(err.value)
