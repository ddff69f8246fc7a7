"""Text encoders: MiniLM embeddings and caching, CLIP encoders from real local weight files."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nwa.errors import ConfigError
from nwa.text import (
    HFCLIPEncoder,
    MiniLMEncoder,
    OpenCLIPEncoder,
    build_text_encoder,
)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    enc = MiniLMEncoder()
    enc._load()
    return enc


def _sharing(loaded: MiniLMEncoder, **kwargs: object) -> MiniLMEncoder:
    """A new encoder (own cache) reusing already loaded weights: loading costs seconds."""
    enc = MiniLMEncoder(**kwargs)
    enc._model, enc._tokenizer = loaded._model, loaded._tokenizer
    return enc


def test_minilm_shapes_and_similarity(minilm: MiniLMEncoder) -> None:
    texts = ["a photo of a red sneaker", "a photo of a red running shoe", "a quarterly tax report"]
    emb = minilm.encode(texts)
    assert minilm.dim == 384 and emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    states = minilm.token_states(texts[:2], max_length=12)
    assert states.shape == (2, 12, 384) and torch.isfinite(states).all()
    # one string is one text; truncation to a shorter length keeps the leading tokens' shape
    assert minilm.encode("a photo of a red sneaker").shape == (1, 384)
    assert minilm.token_states("a photo", max_length=3).shape == (1, 3, 384)


def test_minilm_is_deterministic_regardless_of_batch(minilm: MiniLMEncoder) -> None:
    a = _sharing(minilm).encode(["a blue bag", "a green coat", "a white sandal"])
    b = torch.cat([_sharing(minilm).encode(t) for t in ["a green coat", "a white sandal"]])
    assert torch.equal(a[1:], b)  # bit-identical, whatever else was in the batch


def test_cache_returns_identical_tensors_and_avoids_recomputation(
    tmp_path: Path, minilm: MiniLMEncoder
) -> None:
    enc = _sharing(minilm, cache_dir=tmp_path)
    texts = ["a photo of a red sneaker", "a photo of a blue bag"]
    first = enc.encode(texts)
    tokens = enc.token_states(texts, max_length=8)
    assert enc.n_computed == 4  # two texts x two kinds
    again = enc.encode(list(reversed(texts)))
    assert enc.n_computed == 4
    assert torch.equal(again, first.flip(0))
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 4 and not list(tmp_path.rglob("*.tmp"))

    # a new process-like instance reads the disk cache and never loads the model
    other = MiniLMEncoder(cache_dir=tmp_path)
    assert torch.equal(other.encode(texts), first)
    assert torch.equal(other.token_states(texts, max_length=8), tokens)
    assert other.n_computed == 0 and other._model is None
    other.encode(["a photo of a green coat"])
    assert other.n_computed == 1


def test_factory_rejects_unknown_names_and_stray_weights() -> None:
    with pytest.raises(ConfigError, match="unknown text encoder"):
        build_text_encoder("word2vec")
    with pytest.raises(ConfigError, match="takes no weights"):
        build_text_encoder("minilm", weights="x.bin")
    assert isinstance(build_text_encoder(), MiniLMEncoder)


# -- open_clip -------------------------------------------------------------------------------


def _tiny_open_clip(tmp_path: Path, width: int = 32) -> str:
    """Register a tiny open_clip architecture from a real config file; return its name."""
    import open_clip

    name = f"nwa-tiny-{width}-{uuid.uuid4().hex[:6]}"
    cfg = {
        "embed_dim": 24,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": width,
            "heads": 2,
            "layers": 2,
        },
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name


def _save_random(name: str, path: Path) -> Path:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def test_open_clip_missing_weights_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "open_clip_model.safetensors"
    with pytest.raises(ConfigError, match=r"nope/open_clip_model.safetensors: .*not found"):
        OpenCLIPEncoder("ViT-B-32", missing)
    with pytest.raises(ConfigError, match="needs a local weights file"):
        build_text_encoder("open_clip:ViT-B-32")
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        OpenCLIPEncoder("ViT-B-33", missing)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_open_clip_loads_local_weights_and_encodes(tmp_path: Path, suffix: str) -> None:
    name = _tiny_open_clip(tmp_path)
    path = _save_random(name, tmp_path / f"weights{suffix}")
    enc = build_text_encoder(f"open_clip:{name}", str(path), cache_dir=tmp_path / "cache")
    assert isinstance(enc, OpenCLIPEncoder) and enc.dim == 24 and enc.token_dim == 32
    emb = enc.encode(["a red sneaker", "a blue bag"], normalize=False)
    assert emb.shape == (2, 24) and torch.isfinite(emb).all()
    assert enc.token_states(["a red sneaker"], max_length=8).shape == (1, 8, 32)
    # the loaded weights are the file's, not a fresh random init
    import open_clip

    torch.manual_seed(0)
    ref = open_clip.create_model(name, pretrained=None).eval()
    tokens = open_clip.get_tokenizer(name)(["a red sneaker", "a blue bag"])
    with torch.no_grad():
        assert torch.allclose(emb, ref.encode_text(tokens), atol=1e-5)
    assert enc.model_id.startswith(f"open_clip:{name}:")


def test_open_clip_mismatched_weights_fail_clearly(tmp_path: Path) -> None:
    small, other = _tiny_open_clip(tmp_path, 32), _tiny_open_clip(tmp_path, 48)
    path = _save_random(other, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match=r"other.safetensors: weights do not fit .*wrong shape"):
        OpenCLIPEncoder(small, path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ConfigError, match="garbage.safetensors"):
        OpenCLIPEncoder(small, garbage)


@pytest.mark.slow
def test_open_clip_builtin_architecture(tmp_path: Path) -> None:
    path = _save_random("ViT-S-32", tmp_path / "vit_s_32.safetensors")
    enc = OpenCLIPEncoder("ViT-S-32", path)
    assert enc.encode(["a red sneaker"]).shape == (1, 384)


# -- transformers CLIP -----------------------------------------------------------------------


def _hf_clip_folder(folder: Path, hidden: int = 32, projection: bool = True) -> Path:
    """A real transformers CLIP text model folder (random weights) with a real CLIP tokenizer,
    whose vocabulary and merges come from open_clip's bundled BPE files."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    folder.mkdir(parents=True)
    simple = SimpleTokenizer()
    # the same ids under the special-token names transformers' CLIP tokenizer uses
    special = {simple.sot_token_id: "<|startoftext|>", simple.eot_token_id: "<|endoftext|>"}
    vocab = {special.get(i, tok): i for tok, i in simple.encoder.items()}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    cfg = CLIPTextConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("projection", [True, False])
def test_hf_clip_loads_local_folder(tmp_path: Path, projection: bool) -> None:
    folder = _hf_clip_folder(tmp_path / "clip", projection=projection)
    enc = build_text_encoder("hf_clip", str(folder))
    assert isinstance(enc, HFCLIPEncoder) and enc.token_dim == 32
    assert enc.dim == (16 if projection else 32)
    assert enc.encode(["a red sneaker", "a bag"]).shape == (2, enc.dim)
    assert enc.token_states(["a red sneaker"], max_length=10).shape == (1, 10, 32)


def test_hf_clip_bad_folders_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing_clip: CLIP model folder not found"):
        HFCLIPEncoder(tmp_path / "missing_clip")
    good = _hf_clip_folder(tmp_path / "good", hidden=32)
    wrong = _hf_clip_folder(tmp_path / "wrong", hidden=48)
    # the config of one model with the weights of another
    (wrong / "config.json").write_text((good / "config.json").read_text())
    with pytest.raises(
        ConfigError, match=r"wrong/model.safetensors: weights do not fit .*wrong shape"
    ):
        HFCLIPEncoder(wrong)
