"""The safetensors reader against ``safetensors.safe_open``: every dtype, hostile headers, fuzzing.

nwa reads a file exactly as safe_open does (same dtype, shape and bytes), or refuses it with one
:class:`~nwa.errors.WeightsError` line naming the file (and tensor). It refuses all that safe_open
refuses, plus duplicate keys (which JSON readers resolve silently) and shapes torch cannot hold.
"""

from __future__ import annotations

import json
import random
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nwa.errors import CorruptWeightsError, UnsupportedWeightsError, WeightsError
from nwa.weights.header import DTYPE_BITS, SAFETENSORS_DTYPES
from nwa.weights.io import open_weights

# The dtypes named in the format's specification that every current writer produces.
REQUIRED = {
    "F64",
    "F32",
    "F16",
    "BF16",
    "I64",
    "I32",
    "I16",
    "I8",
    "U64",
    "U32",
    "U16",
    "U8",
    "BOOL",
    "F8_E4M3",
    "F8_E5M2",
}
TIME_BOUND_S = 2.0  # per case; a hang or a quadratic blow-up fails the test


def _bytes_of(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _random_tensor(dtype: torch.dtype, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Random bytes viewed as ``dtype`` (NaN bit patterns included); bools are 0 or 1."""
    n = 1
    for s in shape:
        n *= s
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    raw = torch.randint(0, 256, (n * dtype.itemsize,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


def _writable_dtypes(tmp: Path) -> dict[str, torch.dtype]:
    """Every torch dtype the installed safetensors writes, by the code it writes in the header."""
    out = {}
    g = torch.Generator().manual_seed(0)
    for dtype in sorted({v for v in vars(torch).values() if isinstance(v, torch.dtype)}, key=str):
        try:
            t = _random_tensor(dtype, (2, 4), g)
            save_file({"t": t}, str(tmp / "probe.safetensors"))
        except Exception:  # quantized and other dtypes the writer does not take
            continue
        header = _header(tmp / "probe.safetensors")
        out[header["t"]["dtype"]] = dtype
    return out


def _header(path: Path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    return json.loads(raw[8 : 8 + n])


def _safe_open_reads(path: Path) -> dict[str, torch.Tensor] | None:
    """Every tensor as safe_open reads it, or ``None`` when it refuses the file or a tensor."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118 - no __iter__
    except BaseException as e:  # its Rust panics are BaseExceptions
        if isinstance(e, KeyboardInterrupt):
            raise
        return None


def _nwa_reads(path: Path) -> dict[str, torch.Tensor] | WeightsError:
    try:
        with open_weights(path, lora=False) as src:
            return {k: src.get(k) for k in src.names()}
    except WeightsError as e:
        return e


def _assert_same(theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> None:
    assert sorted(theirs) == sorted(ours)
    for k, t in theirs.items():
        assert ours[k].dtype == t.dtype and ours[k].shape == t.shape, k
        assert _bytes_of(ours[k]) == _bytes_of(t), k


def _assert_one_line(err: WeightsError, path: Path) -> None:
    text = str(err)
    assert "\n" not in text and text.startswith(str(path)), text
    assert isinstance(err, CorruptWeightsError | UnsupportedWeightsError), type(err)


# ------------------------------------------------------------------ every dtype


def test_every_writable_dtype_reads_as_safe_open_reads_it(tmp_path):
    written = _writable_dtypes(tmp_path)
    assert set(written) >= REQUIRED, sorted(REQUIRED - set(written))
    assert set(written) <= set(DTYPE_BITS)  # nwa knows every code the writer uses
    g = torch.Generator().manual_seed(1)
    tensors = {f"t_{code}": _random_tensor(dt, (3, 4), g) for code, dt in written.items()}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 3, dtype=torch.uint16)
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    theirs = _safe_open_reads(path)
    assert theirs is not None
    ours = _nwa_reads(path)
    assert not isinstance(ours, Exception), ours
    _assert_same(theirs, ours)
    # read_into an output of the stored dtype (the batching path) gives the same bytes too
    with open_weights(path) as src:
        for name, t in theirs.items():
            out = torch.empty(t.shape, dtype=t.dtype)
            assert _bytes_of(src.read_into(name, out)) == _bytes_of(t), name


def test_uint16_file_reads(tmp_path):
    """A plain uint16 file (refused as a "malformed header entry" before)."""
    path = tmp_path / "u16.safetensors"
    t = torch.arange(0, 60000, 1000, dtype=torch.int32).to(torch.uint16)
    save_file({"u": t}, str(path))
    with open_weights(path) as src:
        assert src.info("u").dtype == torch.uint16
        assert torch.equal(src.get("u").to(torch.int32), t.to(torch.int32))


def _raw(path: Path, header: bytes | str | dict, data: bytes = b"") -> Path:
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.mark.parametrize(("code", "shape", "nbytes"), [("F6_E2M3", [4], 3), ("F6_E3M2", [8], 6)])
def test_dtype_torch_cannot_hold_is_one_line(tmp_path, code, shape, nbytes):
    path = _raw(
        tmp_path / "f6.safetensors",
        {"w": {"dtype": code, "shape": shape, "data_offsets": [0, nbytes]}},
        bytes(nbytes),
    )
    assert _safe_open_reads(path) is None  # safe_open lists it but cannot read it either
    err = _nwa_reads(path)
    assert isinstance(err, UnsupportedWeightsError)
    _assert_one_line(err, path)
    assert f"dtype {code} has no torch dtype" in str(err) and err.tensor == "w"


def test_packed_float4(tmp_path):
    """F4 packs two values a byte: the header counts values, torch's float4_e2m1fn_x2 pairs."""
    if "F4" not in SAFETENSORS_DTYPES:
        pytest.skip("this torch has no float4_e2m1fn_x2")
    good = _raw(
        tmp_path / "f4.safetensors",
        {"w": {"dtype": "F4", "shape": [2, 4], "data_offsets": [0, 4]}},
        bytes([1, 2, 3, 4]),
    )
    theirs, ours = _safe_open_reads(good), _nwa_reads(good)
    assert theirs is not None and not isinstance(ours, Exception)
    _assert_same(theirs, ours)
    odd = _raw(
        tmp_path / "odd.safetensors",
        {"w": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]}},
        bytes(3),
    )
    assert _safe_open_reads(odd) is None
    err = _nwa_reads(odd)
    assert isinstance(err, UnsupportedWeightsError) and "last dimension must be even" in str(err)
    # torch cannot widen float4 into float32: one line, not a RuntimeError
    with open_weights(good) as src, pytest.raises(UnsupportedWeightsError, match="cannot convert"):
        src.read_into("w", torch.empty(2, 2))


# ------------------------------------------------------------------ hand-made hostile headers

U8 = {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}

HOSTILE = {
    "infinite shape": (
        '{"w": {"dtype": "U8", "shape": [Infinity], "data_offsets": [0, 4]}}',
        "shape [Infinity] is not",
    ),
    "nan shape": (
        '{"w": {"dtype": "U8", "shape": [NaN], "data_offsets": [0, 4]}}',
        "shape [NaN] is not",
    ),
    "offset 1e400": (
        '{"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 1e400]}}',
        "data_offsets [0, 1e400] are not",
    ),
    "float offset": (
        '{"w": {"dtype": "U8", "shape": [4], "data_offsets": [0.0, 4]}}',
        "data_offsets [0.0, 4] are not",
    ),
    "negative shape": (
        {"w": {"dtype": "U8", "shape": [-1, -2], "data_offsets": [0, 4]}},
        "shape [-1, -2] is not",
    ),
    "shape 2**70 by 0": (
        {"w": {"dtype": "U8", "shape": [2**70, 0], "data_offsets": [0, 0]}},
        "is not a list of integers",
    ),
    "shape overflows torch": (
        {"w": {"dtype": "U8", "shape": [2**62, 4, 0], "data_offsets": [0, 0]}},
        "too large for torch",
    ),
    "fractional shape": (
        {"w": {"dtype": "U8", "shape": [2.5], "data_offsets": [0, 4]}},
        "shape [2.5] is not",
    ),
    "string shape": (
        {"w": {"dtype": "U8", "shape": ["4"], "data_offsets": [0, 4]}},
        'shape ["4"] is not',
    ),
    "bool shape": (
        {"w": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}},
        "shape [true] is not",
    ),
    "shape not a list": (
        {"w": {"dtype": "U8", "shape": 4, "data_offsets": [0, 4]}},
        "shape 4 is not",
    ),
    "three offsets": (
        {"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4, 4]}},
        "are not two",
    ),
    "end before start": (
        {"w": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}},
        "does not fit",
    ),
    "size mismatch": (
        {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}},
        "does not fit shape [3] of F32",
    ),
    "overlapping offsets": (
        {
            "a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
            "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]},
        },
        "overlaps tensor 'a'",
    ),
    "same offsets twice": (
        {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, "b": U8},
        "overlaps tensor 'a'",
    ),
    "gap between tensors": (
        {
            "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
            "b": {"dtype": "U8", "shape": [1], "data_offsets": [3, 4]},
        },
        "bytes 1..3 before it belong to no tensor",
    ),
    "trailing bytes": (
        {"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}},
        "the rest belongs to no tensor",
    ),
    "beyond the file": ({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}, "truncated"),
    "duplicate tensor key": (
        '{"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, "w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}',
        "duplicate key 'w'",
    ),
    "duplicate field key": (
        '{"w": {"dtype": "U8", "shape": [4], "shape": [4], "data_offsets": [0, 4]}}',
        "duplicate key 'shape'",
    ),
    "duplicate metadata key": (
        '{"__metadata__": {"a": "1", "a": "2"}, "w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}',
        "duplicate key 'a'",
    ),
    "deep nesting": ("[" * 400_000 + "]" * 400_000, "nests JSON arrays or objects too deeply"),
    "deep nesting in a field": (
        '{"w": {"dtype": "U8", "shape": ' + "[" * 200_000 + "]" * 200_000 + "}}",
        "too deeply",
    ),
    "huge integer": (
        '{"w": {"dtype": "U8", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 4]}}',
        "an integer too long to parse",
    ),
    "unknown dtype": (
        {"w": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 4]}},
        "unknown dtype 'Q7'",
    ),
    "missing field": ({"w": {"dtype": "U8", "shape": [4]}}, "lacks data_offsets"),
    "entry not an object": ({"w": [1, 2]}, "header entry is not a JSON object"),
    "metadata not strings": ({"__metadata__": {"a": 1}, "w": U8}, "value of 'a' is not a string"),
    "metadata a list": ({"__metadata__": [1], "w": U8}, "'__metadata__' is not a JSON object"),
    "header a list": ("[1, 2]", "not a JSON object"),
    "not UTF-8": (b"\xff\xfe\x00\x01", "not UTF-8"),
    "byte order mark": ("\ufeff{}", "not valid JSON"),
    "NUL padding": (b"{}\0\0\0\0\0\0", "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_header_is_one_line(tmp_path, case):
    header, fragment = HOSTILE[case]
    path = _raw(tmp_path / "x.safetensors", header, bytes(4))
    start = time.perf_counter()
    err = _nwa_reads(path)
    assert time.perf_counter() - start < TIME_BOUND_S
    assert isinstance(err, WeightsError), f"{case}: read {err}"
    _assert_one_line(err, path)
    assert fragment in str(err), str(err)
    if "duplicate" not in case and case != "shape overflows torch":
        assert _safe_open_reads(path) is None  # refused by safe_open too


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x02",
        struct.pack("<Q", 0),
        struct.pack("<Q", 2**64 - 1) + b"{}",
        struct.pack("<Q", 3) + b"{}",
    ],
)
def test_hostile_length_prefix(tmp_path, data):
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    err = _nwa_reads(path)
    assert isinstance(err, CorruptWeightsError)
    _assert_one_line(err, path)
    assert _safe_open_reads(path) is None


def test_accepted_edge_cases_match_safe_open(tmp_path):
    """What safe_open accepts nwa reads the same: unpadded headers, scalars, empty tensors,
    tensors listed out of storage order, null metadata, unknown extra fields, 70 dimensions."""
    cases = {
        "unpadded": ({"w": U8}, bytes(range(4))),
        "scalar": ({"w": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}, bytes(range(4))),
        "empty": ({"z": {"dtype": "U8", "shape": [0, 3], "data_offsets": [0, 0]}}, b""),
        "empty between": (
            {
                "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]},
                "z": {"dtype": "I16", "shape": [5, 0], "data_offsets": [2, 2]},
                "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
            },
            bytes(range(4)),
        ),
        "null metadata": ({"__metadata__": None, "w": U8}, bytes(4)),
        "extra field": ({"w": dict(U8, extra=[1])}, bytes(4)),
        "70 dims": ({"w": {"dtype": "U8", "shape": [1] * 70, "data_offsets": [0, 1]}}, b"\x07"),
        "huge empty": ({"w": {"dtype": "U8", "shape": [2**40, 0], "data_offsets": [0, 0]}}, b""),
        "no tensors": ({}, b""),
    }
    for name, (header, data) in cases.items():
        path = _raw(tmp_path / f"{name}.safetensors", header, data)
        theirs, ours = _safe_open_reads(path), _nwa_reads(path)
        assert theirs is not None, name
        assert not isinstance(ours, Exception), f"{name}: {ours}"
        _assert_same(theirs, ours)


# ------------------------------------------------------------------ fuzzing

HOSTILE_VALUES = [
    -1, 0, 1, 3, 2**31, 2**63 - 1, 2**63, 2**64, 2**70, 1.5, -0.0, "3", None, True, [], {}, [1, [2]],
    "Infinity", "NaN", "1e400",
]  # fmt: skip


def _real_file(path: Path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "conv.weight": torch.randn(2, 3, 2, 2, generator=g),
        "conv.bias": torch.randn(2, generator=g).to(torch.float16),
        "ids": torch.arange(5, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "codes": torch.arange(6, dtype=torch.int32).to(torch.uint16),
        "q": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
    }
    save_file(tensors, str(path), metadata={"format": "pt", "note": "fuzz"})


def _field_mutation(header: dict, rng: random.Random) -> str:
    """The header as JSON text with one field of one tensor set to a hostile value (or a key
    duplicated, or offsets swapped between two tensors)."""
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    kind = rng.randrange(6)
    if kind == 0:  # swap two tensors' offsets
        other = rng.choice(names)
        header[name]["data_offsets"], header[other]["data_offsets"] = (
            header[other]["data_offsets"],
            header[name]["data_offsets"],
        )
    elif kind == 1:
        same_width = [c for c, b in DTYPE_BITS.items() if b == DTYPE_BITS[header[name]["dtype"]]]
        header[name]["dtype"] = rng.choice([*same_width, *same_width, *DTYPE_BITS, "F99", "u8", 7])
    elif kind == 2:
        text = json.dumps(header)
        entry = json.dumps({name: header[name]})[1:-1]
        return text.replace(entry, f"{entry}, {entry}", 1)  # a duplicate key
    else:
        field = rng.choice(["shape", "data_offsets", "data_offsets", "dtype"])
        value = rng.choice(HOSTILE_VALUES)
        old = header[name][field]
        if isinstance(old, list) and old and rng.random() < 0.7:
            old = list(old)
            old[rng.randrange(len(old))] = value
            header[name][field] = old
        else:
            header[name][field] = value
    text = json.dumps(header)
    for literal in ("Infinity", "NaN", "1e400"):
        text = text.replace(f'"{literal}"', literal)  # as bare JSON literals
    return text


def _byte_mutation(raw: bytes, rng: random.Random) -> bytes:
    out = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(out))
        op = rng.randrange(3)
        if op == 0:
            out[i] = rng.randrange(256)
        elif op == 1:
            out.insert(i, rng.choice(b'{}[],:"0123456789-.eE '))
        else:
            del out[i]
    return bytes(out)


def _mutant(base: bytes, rng: random.Random) -> bytes:
    (n,) = struct.unpack_from("<Q", base)
    header, data = base[8 : 8 + n], base[8 + n :]
    kind = rng.randrange(12)
    if kind >= 10:  # valid rewrites: entries reordered, whitespace added
        entries = list(json.loads(header).items())
        rng.shuffle(entries)
        header = json.dumps(dict(entries), indent=rng.choice([None, 0, 2])).encode()
        header += b" " * rng.randrange(9)
    elif kind < 5:
        header = _field_mutation(json.loads(header), rng).encode()
    elif kind < 9:
        header = _byte_mutation(header, rng)
    else:  # a wrong length prefix, the rest unchanged
        return (
            struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, 2**63, rng.randrange(2**64)]))
            + base[8:]
        )
    if rng.random() < 0.15:
        data = data[: rng.randrange(len(data) + 1)]
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize("seed", range(6))
def test_fuzzed_headers_read_as_safe_open_or_fail_in_one_line(tmp_path, seed):
    base_path = tmp_path / "base.safetensors"
    _real_file(base_path, seed)
    base = base_path.read_bytes()
    rng = random.Random(seed)
    outcomes = {"same": 0, "both refuse": 0, "nwa stricter": 0}
    for i in range(200):
        path = tmp_path / f"m{i}.safetensors"
        path.write_bytes(_mutant(base, rng))
        start = time.perf_counter()
        ours = _nwa_reads(path)
        assert time.perf_counter() - start < TIME_BOUND_S, path
        theirs = _safe_open_reads(path)
        if isinstance(ours, WeightsError):
            _assert_one_line(ours, path)
            if theirs is None:
                outcomes["both refuse"] += 1
            else:  # nwa refuses more than safe_open only where it says why
                assert "duplicate key" in str(ours), f"{path}: {ours}"
                outcomes["nwa stricter"] += 1
        else:
            assert theirs is not None, f"{path}: nwa read what safe_open refuses"
            _assert_same(theirs, ours)
            outcomes["same"] += 1
    # the mutations reach both outcomes, so neither branch above is vacuous
    assert outcomes["same"] > 10 and outcomes["both refuse"] > 50, outcomes
