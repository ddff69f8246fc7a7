"""Checkpoints nwa loads (``python -m nwa.test --ckpt_path``, ``open_weights``): a pickle that
would run code, garbage, or a FIFO is one nwa line, with nothing executed and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nwa.errors import CorruptWeightsError, UnsafeCheckpointError
from nwa.test import run
from nwa.weights.formats import load_checkpoint
from nwa.weights.io import open_weights

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates ``marker``: the shape of a real attack."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """A Lightning-shaped checkpoint (state dict, saved config) with a code-running object."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    ckpt = {"state_dict": {"w": torch.ones(2)}, "nwa_config": "seed_everything: 0\n"}
    torch.save(ckpt | {"hparams": _Payload(marker)}, path)
    return path, marker


def test_load_checkpoint_refuses_code(evil):
    path, marker = evil
    for load in (load_checkpoint, open_weights):
        with pytest.raises(UnsafeCheckpointError, match="refused to unpickle") as err:
            load(path)
        assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("with_config", [False, True])
def test_nwa_test_refuses_a_code_running_checkpoint(evil, tmp_path, capsys, with_config):
    path, marker = evil
    args = ["--ckpt_path", str(path)]
    if with_config:
        args = ["--config", str(REPO / "configs/probex_vision.yaml"), *args]
    with pytest.raises(SystemExit) as exc:
        run(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"nwa: {path}: refused to unpickle"), err
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["fifo", "garbage", "missing", "not a dict"])
def test_nwa_test_bad_checkpoint_files(tmp_path, capsys, kind):
    path = tmp_path / "x.ckpt"
    fragment = {
        "fifo": "is a FIFO (named pipe), not a regular file",
        "garbage": "not a readable torch checkpoint",
        "missing": "no such checkpoint",
        "not a dict": "not a Lightning checkpoint (holds Tensor)",
    }[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "garbage":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    elif kind == "not a dict":
        torch.save(torch.ones(2), path)
    with pytest.raises(SystemExit):
        run(["--ckpt_path", str(path)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "x.pt"
    os.mkfifo(fifo)
    with pytest.raises(CorruptWeightsError, match="is a FIFO"):
        load_checkpoint(fifo)
    with pytest.raises(CorruptWeightsError, match="is a FIFO"):
        open_weights(fifo)


@pytest.mark.slow
def test_nwa_test_cli_subprocess(evil):
    path, marker = evil
    r = subprocess.run(
        [sys.executable, "-m", "nwa.test", "--ckpt_path", str(path)],
        cwd=path.parent,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    nwa_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("nwa: ")]
    assert len(nwa_lines) == 1 and "refused to unpickle" in nwa_lines[0], r.stderr
    assert "Traceback" not in r.stderr and not marker.exists()
