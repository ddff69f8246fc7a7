"""``python -m nwa.weights inspect``: listings, layer statistics, and one-line errors."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import nwa.weights.formats as wfmt
import nwa.weights.io as wio
from nwa.weights.__main__ import main
from nwa.weights.inspection import parse_selector, tensor_stats

REPO = Path(__file__).resolve().parents[1]
LORA_LAYER = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "features.0.weight": torch.randn(4, 3, 3, 3, generator=g),
        "features.0.bias": torch.randn(4, generator=g),
        "classifier.weight": torch.randn(10, 4, generator=g),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inspect")
    out = {"good": d / "model.safetensors", "lora": d / "pytorch_lora_weights.safetensors"}
    save_file(_tensors(), str(out["good"]), metadata={"framework": "pt"})
    g = torch.Generator().manual_seed(1)
    lora = {
        f"{LORA_LAYER}.lora.down.weight": torch.randn(2, 8, generator=g),
        f"{LORA_LAYER}.lora.up.weight": torch.randn(6, 2, generator=g),
    }
    save_file(lora, str(out["lora"]))
    out["truncated"] = d / "truncated.safetensors"
    out["truncated"].write_bytes(out["good"].read_bytes()[:-20])
    out["evil"] = d / "evil.pt"
    out["marker"] = d / "pwned"
    out["evil"].write_bytes(pickle.dumps({"w": _Payload(out["marker"])}))
    out["missing"] = d / "missing.safetensors"
    return out


CASES = {
    "list": lambda f: [str(f["good"])],
    "layer_name": lambda f: [str(f["good"]), "--layer", "features.0.weight"],
    "evil": lambda f: [str(f["evil"])],
}


@pytest.fixture(scope="module")
def runs(files) -> dict[str, subprocess.CompletedProcess]:
    """The end-to-end cases as real subprocesses, all at once: each pays torch's import time,
    so the other cases call :func:`main` in-process."""
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "nwa.weights", "inspect", *argv(files)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, argv in CASES.items()
    }
    done = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=120)
        done[name] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return done


def test_listing(runs):
    r = runs["list"]
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    for name, shape in [("features.0.weight", "[4, 3, 3, 3]"), ("classifier.weight", "[10, 4]")]:
        line = next(ln for ln in r.stdout.splitlines() if name in ln)
        assert shape in line and "float32" in line
    assert "total params: 152" in r.stdout  # 108 + 4 + 40
    assert "framework" in r.stdout


def test_layer_statistics(runs):
    r = runs["layer_name"]
    assert r.returncode == 0, r.stderr
    w = _tensors()["features.0.weight"].reshape(4, -1).double().numpy()
    assert "4 x 27" in r.stdout
    for key, value in [
        ("mean", w.mean()),
        ("std", w.std()),
        ("q50", np.median(w)),
        ("max", w.max()),
        ("fro_norm", np.linalg.norm(w)),
    ]:
        line = next(ln for ln in r.stdout.splitlines() if f" {key} " in ln)
        assert f"{value:.6g}" in line, (key, line)


def test_bad_input_gives_one_line(runs, files):
    r = runs["evil"]
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("nwa: ") and "refused to unpickle" in lines[0]
    assert "Traceback" not in r.stderr
    assert not files["marker"].exists()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["missing"], "no such file"),
        (["truncated"], "truncated"),
        (["good", "--layer", "features.0.wieght"], "close names: features.0.weight"),
        (["good", "--layer", "7"], "out of range"),
        (["good", "--layer", "re:("], "bad regex"),
    ],
)
def test_bad_input_in_process(files, capsys, argv, fragment):
    assert main(["inspect", str(files[argv[0]]), *argv[1:]]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("nwa: ") and fragment in err


def test_layer_by_negative_index_and_lora_delta(files, capsys):
    last = wio.open_weights(files["good"]).names()[-1]
    assert main(["inspect", str(files["good"]), "--layer", "-1"]) == 0
    assert f"[{last}]" in capsys.readouterr().out
    assert main(["inspect", str(files["lora"]), "--layer", "0"]) == 0
    out = capsys.readouterr().out
    assert LORA_LAYER in out and "6 x 8" in out


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    assert "--layer" in capsys.readouterr().out


def test_listing_reads_no_tensor_data(files, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("tensor data was opened")

    monkeypatch.setattr(wfmt.SafetensorsFile, "_read_bytes", refuse)
    assert main(["inspect", str(files["good"])]) == 0
    assert "classifier.weight" in capsys.readouterr().out


def test_glob_and_regex(files, capsys):
    assert main(["inspect", str(files["good"]), "--layer", "features.*"]) == 0
    out = capsys.readouterr().out
    assert "[features.0.weight]" in out and "[features.0.bias]" in out
    assert main(["inspect", str(files["good"]), "--layer", "re:class.*"]) == 0
    assert "10 x 4" in capsys.readouterr().out


def test_raw_lists_lora_factors(files, capsys):
    assert main(["inspect", str(files["lora"]), "--raw"]) == 0
    out = capsys.readouterr().out
    assert "lora.down.weight" in out and "total params: 28" in out


def test_tensor_stats_ignores_nonfinite():
    t = torch.tensor([1.0, 2.0, float("nan"), 3.0, float("inf")])
    s = tensor_stats(t)
    assert s["nonfinite"] == pytest.approx(0.4)
    assert s["mean"] == pytest.approx(2.0) and s["q50"] == pytest.approx(2.0)
    assert s["min"] == 1.0 and s["max"] == 3.0
    assert s["fro_norm"] == pytest.approx(14**0.5)
    assert np.isnan(tensor_stats(torch.tensor([float("nan")]))["mean"])


def test_parse_selector():
    assert parse_selector("3") == 3 and parse_selector("-2") == -2
    assert parse_selector("blocks.3") == "blocks.3" and parse_selector("re:\\d+") == "re:\\d+"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_fifo_or_device_is_refused_without_hanging(tmp_path, capsys, kind):
    """``open()`` on a FIFO waits for a writer forever; a device never ends."""
    path = tmp_path / "x.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    assert main(["inspect", str(path)]) == 1
    out, err = capsys.readouterr()
    what = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
    assert out == "" and err == f"nwa: {path}: is {what}, not a regular file\n"
