"""Weight I/O: round trips per format, laziness, LoRA deltas, bad inputs, layer selection."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

import nwa.weights.formats as wfmt
from nwa.errors import (
    CorruptWeightsError,
    LayerNotFoundError,
    NonFiniteWeightsError,
    ShapeMismatchError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)
from nwa.weights.io import LoraDelta, ShardedFolder, TorchFile, open_weights
from nwa.weights.spec import check_finite, matrix_shape, select_layers, to_matrix


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "fc.weight": torch.randn(5, 4, generator=g).to(torch.float16),
        "fc.bias": torch.randn(5, generator=g).to(torch.bfloat16),
        "step": torch.tensor([7], dtype=torch.int64),
    }


@pytest.fixture
def st_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path), metadata={"note": "hi"})
    return path


class _Recorder:
    """Wraps the one place safetensors data is read: which files and tensors are read."""

    def __init__(self, monkeypatch):
        self.opened: list[str] = []
        self.read: list[str] = []
        real = wfmt.SafetensorsFile._read_bytes
        recorder = self

        def read_bytes(src, name, out):
            if src.path.name not in recorder.opened:
                recorder.opened.append(src.path.name)
            recorder.read.append(name)
            return real(src, name, out)

        monkeypatch.setattr(wfmt.SafetensorsFile, "_read_bytes", read_bytes)


def test_safetensors_round_trip(st_file):
    want = _tensors()
    with open_weights(st_file) as src:
        assert sorted(src.names()) == sorted(want)
        assert src.metadata() == {"note": "hi"}
        for name, t in want.items():
            info = src.info(name)
            assert info.shape == tuple(t.shape) and info.dtype == t.dtype
            assert torch.equal(src.get(name), t)
        assert "conv.bias" in src and "nope" not in src


def test_layout_metadata_orders_names(tmp_path):
    path = tmp_path / "m.safetensors"
    order = ["fc.weight", "conv.weight", "conv.bias"]
    t = {k: torch.ones(2) for k in order}
    save_file(t, str(path), metadata={"nwa.layout": json.dumps(order)})
    assert open_weights(path).names() == order


def test_listing_reads_no_tensor_data(st_file, monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("tensor data was opened")

    monkeypatch.setattr(wfmt.SafetensorsFile, "_read_bytes", refuse)
    src = open_weights(st_file)
    assert len(src.names()) == 5
    assert src.info("conv.weight").shape == (4, 3, 3, 3)
    assert src.info("conv.weight").numel == 108
    assert src.metadata() == {"note": "hi"}
    assert calls == []
    with pytest.raises(Exception, match="tensor data was opened"):
        src.get("conv.weight")
    assert len(calls) == 1  # the patch is live: reading does go through it


def test_get_reads_only_that_tensor(st_file, monkeypatch):
    rec = _Recorder(monkeypatch)
    src = open_weights(st_file)
    src.get("fc.weight")
    assert rec.read == ["fc.weight"]


def test_read_into_fills_the_given_tensor(st_file, monkeypatch, tmp_path):
    want = _tensors()
    rec = _Recorder(monkeypatch)
    with open_weights(st_file) as src:
        out = torch.empty(4, 3, 3, 3)
        assert src.read_into("conv.weight", out) is out and torch.equal(out, want["conv.weight"])
        batch = torch.zeros(3, 2, 5, 4)  # into a slot of a bigger tensor, cast f16 -> f32
        src.read_into("fc.weight", batch[1, 1])
        assert torch.equal(batch[1, 1], want["fc.weight"].float()) and batch[1, 0].eq(0).all()
        strided = torch.empty(4, 5).t()  # not contiguous
        assert torch.equal(src.read_into("fc.weight", strided), want["fc.weight"].float())
        src.read_into("fc.bias", bias := torch.empty(5, dtype=torch.bfloat16))
        assert torch.equal(bias, want["fc.bias"])
        with pytest.raises(ShapeMismatchError, match=r"\[5, 4\]"):
            src.read_into("fc.weight", torch.empty(4, 5))
        with pytest.raises(LayerNotFoundError):
            src.read_into("nope", torch.empty(1))
    assert rec.read == ["conv.weight", "fc.weight", "fc.weight", "fc.bias"]
    folder = tmp_path / "sharded"
    folder.mkdir()
    _write_sharded(folder)
    with open_weights(folder) as src:
        assert torch.equal(src.read_into("step", torch.empty(1)), torch.tensor([7.0]))


def test_reads_after_close_and_handle_released(st_file):
    src = open_weights(st_file)
    first = src.get("conv.bias")
    src.close()
    assert torch.equal(src.get("conv.bias"), first)  # reopens on demand
    handle = src._file
    assert handle is not None and not handle.closed
    del src  # dropped without close(): the handle is closed anyway
    assert handle.closed


def test_file_truncated_after_opening(st_file):
    src = open_weights(st_file)
    assert len(src.names()) == 5  # header read while the file was whole
    data = st_file.read_bytes()
    st_file.write_bytes(data[: 8 + struct.unpack("<Q", data[:8])[0] + 2])  # header, 2 data bytes
    with pytest.raises(CorruptWeightsError, match="file ended after [02] of the tensor's"):
        src.get("conv.weight")


def _write_sharded(folder):
    t = _tensors()
    names = list(t)
    shards = {
        "model-00001-of-00002.safetensors": names[:2],
        "model-00002-of-00002.safetensors": names[2:],
    }
    for fname, keys in shards.items():
        save_file({k: t[k] for k in keys}, str(folder / fname))
    weight_map = {k: f for f, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return t


def test_sharded_folder_opens_only_the_needed_shard(tmp_path, monkeypatch):
    want = _write_sharded(tmp_path)
    rec = _Recorder(monkeypatch)
    src = open_weights(tmp_path)
    assert isinstance(src, ShardedFolder)
    assert sorted(src.names()) == sorted(want)
    assert rec.opened == []
    assert torch.equal(src.get("fc.weight"), want["fc.weight"])
    assert rec.opened == ["model-00002-of-00002.safetensors"]


def test_sharded_folder_errors(tmp_path):
    _write_sharded(tmp_path)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="shard listed"):
        open_weights(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CorruptWeightsError, match="weight_map"):
        open_weights(tmp_path)


def _hf_cache_entry(root, tensors, sha="0123abcd"):
    """``models--org--name`` with refs/main, a blob, and a snapshot symlink, as the hub writes."""
    entry = root / "models--org--name"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(sha)
    (entry / "blobs").mkdir()
    save_file(tensors, str(entry / "blobs" / "deadbeef"))
    (entry / "snapshots" / sha).mkdir(parents=True)
    os.symlink("../../blobs/deadbeef", entry / "snapshots" / sha / "model.safetensors")
    return entry


def test_hf_cache_layout(tmp_path):
    want = _tensors()
    entry = _hf_cache_entry(tmp_path, want)
    src = open_weights(entry)
    assert torch.equal(src.get("conv.weight"), want["conv.weight"])
    (entry / "refs" / "main").write_text("missing-sha")
    with pytest.raises(WeightsNotFoundError, match="missing snapshot"):
        open_weights(entry)


def _lora_pair(g, out_dim, in_dim, r):
    return torch.randn(r, in_dim, generator=g), torch.randn(out_dim, r, generator=g)


@pytest.mark.parametrize("adapter_name", [None, "default"])
def test_peft_lora_delta_with_alpha(tmp_path, adapter_name):
    g = torch.Generator().manual_seed(1)
    a, b = _lora_pair(g, 6, 5, 2)
    mid = f".{adapter_name}" if adapter_name else ""
    layer = "base_model.model.blocks.0.attn.q_proj"
    tensors = {f"{layer}.lora_A{mid}.weight": a, f"{layer}.lora_B{mid}.weight": b}
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 8}))
    src = open_weights(tmp_path)
    assert isinstance(src, LoraDelta)
    assert src.names() == [layer]
    assert src.info(layer).shape == (6, 5)
    assert torch.allclose(src.get(layer), (8 / 2) * (b @ a))
    raw = open_weights(tmp_path, lora=False)
    assert sorted(raw.names()) == sorted(tensors)


def test_diffusers_lora_delta(tmp_path):
    g = torch.Generator().manual_seed(2)
    layer = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    a, b = _lora_pair(g, 8, 8, 4)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file({f"{layer}.lora.down.weight": a, f"{layer}.lora.up.weight": b}, str(path))
    src = open_weights(path)
    assert src.names() == [layer]
    assert torch.allclose(src.get(layer), b @ a)
    assert src.factors(layer)[0].shape == (4, 8) and src.rank(layer) == 4


def test_half_precision_lora_delta_dtype_matches_info(tmp_path):
    a, b = _lora_pair(torch.Generator().manual_seed(3), 4, 3, 2)
    path = tmp_path / "l.safetensors"
    save_file({"x.lora_A.weight": a.half(), "x.lora_B.weight": b.half()}, str(path))
    src = open_weights(path)
    assert src.get("x").dtype == src.info("x").dtype == torch.float32


def test_conv_lora_delta_is_2d(tmp_path):
    g = torch.Generator().manual_seed(4)
    a = torch.randn(2, 3, 3, 3, generator=g)  # peft conv LoRA: A is a conv [r, in, kh, kw]
    b = torch.randn(5, 2, 1, 1, generator=g)  # B is a 1x1 conv [out, r, 1, 1]
    path = tmp_path / "adapter_model.safetensors"
    save_file({"conv.lora_A.weight": a, "conv.lora_B.weight": b}, str(path))
    delta = open_weights(path).get("conv")
    assert delta.shape == (5, 27)
    assert torch.allclose(delta, b.reshape(5, 2) @ a.reshape(2, 27))


def test_kohya_alpha_scales_delta(tmp_path):
    a, b = _lora_pair(torch.Generator().manual_seed(5), 4, 3, 2)
    path = tmp_path / "k.safetensors"
    t = {"lora_unet_x.lora_down.weight": a, "lora_unet_x.lora_up.weight": b}
    save_file(t | {"lora_unet_x.alpha": torch.tensor(1.0)}, str(path))
    assert torch.allclose(open_weights(path).get("lora_unet_x"), 0.5 * (b @ a))


def test_lora_rank_mismatch_is_corrupt(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file({"x.lora_A.weight": torch.ones(2, 3), "x.lora_B.weight": torch.ones(4, 3)}, str(path))
    with pytest.raises(CorruptWeightsError, match="rank"):
        open_weights(path)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_files_load_weights_only(tmp_path, suffix, zip_format):
    want = {k: v for k, v in _tensors().items()}
    path = tmp_path / f"model{suffix}"
    torch.save({"state_dict": want, "epoch": 3}, path, _use_new_zipfile_serialization=zip_format)
    src = open_weights(path)
    assert isinstance(src, TorchFile)
    assert sorted(src.names()) == sorted(want)
    for k, v in want.items():
        assert torch.equal(src.get(k), v)


class _Payload:
    """A pickle whose loading would create ``marker``: the shape of a real attack."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_unexecuted(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"w": torch.ones(1), "x": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UnsafeCheckpointError, match="refused") as err:
        open_weights(path)
    assert "makedirs" in str(err.value)
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it (so the check above can fail).
    if writer == "pickle.dump":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_paths(tmp_path):
    for path in (tmp_path / "nope.safetensors", tmp_path / "nope.pt", tmp_path / "nodir"):
        with pytest.raises(WeightsNotFoundError, match="no such") as err:
            open_weights(path)
        assert isinstance(err.value, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="no weight file"):
        open_weights(tmp_path / "empty")


def test_truncated_safetensors(st_file):
    data = st_file.read_bytes()
    st_file.write_bytes(data[:-10])
    with pytest.raises(CorruptWeightsError, match="truncated"):
        open_weights(st_file)


def _raw_header(path, header: bytes, data: bytes = b"\0" * 16) -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"\xff\xfe not json", "not UTF-8"),
        (b"{not json}", "not valid JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'{"__metadata__": [1]}', "__metadata__"),
        (b'{"t": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}', "unknown dtype 'F99'"),
        (b'{"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}', "does not fit"),
        (b'{"t": "garbage"}', "entry is not a JSON object"),
    ],
)
def test_garbage_headers(tmp_path, header, match):
    path = tmp_path / "g.safetensors"
    _raw_header(path, header)
    with pytest.raises(CorruptWeightsError, match=match):
        open_weights(path)


def test_short_and_oversized_headers(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CorruptWeightsError, match="too short"):
        open_weights(path)
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CorruptWeightsError, match="exceeds the file"):
        open_weights(path)


@pytest.mark.parametrize("content", [b"hello world, not a checkpoint", b"\x00garbage"])
def test_garbage_torch_file_is_corrupt(tmp_path, content):
    path = tmp_path / "g.bin"
    path.write_bytes(content)
    with pytest.raises(CorruptWeightsError):
        open_weights(path)


def test_unknown_format(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("hi")
    with pytest.raises(CorruptWeightsError, match="unknown weight format"):
        open_weights(path)


def test_check_finite_names_file_and_tensor(tmp_path):
    path = tmp_path / "nan.safetensors"
    bad = torch.tensor([1.0, float("nan"), float("inf"), 2.0])
    save_file({"ok": torch.ones(3), "bad": bad, "ints": torch.arange(3)}, str(path))
    src = open_weights(path)
    check_finite(src.get("ok"), path, "ok")
    check_finite(src.get("ints"), path, "ints")
    with pytest.raises(NonFiniteWeightsError, match="2 of 4") as err:
        check_finite(src.get("bad"), path, "bad")
    assert err.value.tensor == "bad" and err.value.path == path


NAMES = [
    "embed.weight",
    "blocks.0.attn.weight",
    "blocks.0.attn.bias",
    "blocks.1.attn.weight",
    "head.weight",
]


@pytest.mark.parametrize(
    ("selector", "want"),
    [
        ("head.weight", ["head.weight"]),
        ("blocks.*.attn.weight", ["blocks.0.attn.weight", "blocks.1.attn.weight"]),
        ("re:blocks\\.\\d\\.attn\\.bias", ["blocks.0.attn.bias"]),
        (0, ["embed.weight"]),
        (-1, ["head.weight"]),
        (["head.weight", 0, "head.*"], ["head.weight", "embed.weight"]),
    ],
)
def test_select_layers(selector, want):
    assert select_layers(NAMES, selector) == want


def test_select_layers_errors():
    with pytest.raises(LayerNotFoundError, match="close names: head.weight"):
        select_layers(NAMES, "head.weigth", path="m.safetensors")
    with pytest.raises(LayerNotFoundError, match="out of range"):
        select_layers(NAMES, 5)
    with pytest.raises(LayerNotFoundError, match="matches no tensor"):
        select_layers(NAMES, "re:attn")  # full match only


def test_get_unknown_tensor_suggests_names(st_file):
    with pytest.raises(LayerNotFoundError, match="did you mean conv.weight"):
        open_weights(st_file).get("conv.wieght")


def test_to_matrix_puts_output_channels_first():
    conv = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    m = to_matrix(conv)
    assert m.shape == (2, 12) and torch.equal(m[1], conv[1].flatten())
    assert to_matrix(torch.ones(4)).shape == (4, 1)
    assert to_matrix(torch.tensor(3.0)).shape == (1, 1)
    assert matrix_shape((16, 1, 3, 3)) == (16, 9)
