"""``python -m nwa.diagnose``: tables, skipped tensors with reasons, outputs, plots, bad input,
LoRA files and zoos, and no torch import for a safetensors file."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nwa.diagnose import main, run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "conv1.weight": torch.randn(16, 3, 3, 3, generator=gen),
        "bn1.weight": torch.ones(16),
        "bn1.running_mean": torch.zeros(16),
        "layer1.conv.weight": torch.randn(16, 16, 3, 3, generator=gen),
        "pos_embed": torch.randn(1, 10, 16, generator=gen),
        "head.weight": torch.randn(40, 64, generator=gen),
        "head.bias": torch.randn(40, generator=gen),
        "tiny.weight": torch.randn(5, 3, generator=gen),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, path)
    return path


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {r["layer"]: r for r in csv.DictReader(f)}


def test_layers_summary_and_skipped_reasons(model_file, tmp_path, capsys):
    out, summary = tmp_path / "layers.csv", tmp_path / "models.json"
    (s,) = run([str(model_file), "--out", str(out), "--summary_out", str(summary)])
    printed = capsys.readouterr().out
    assert "Per-model summary" in printed and "skipped" in printed
    rows = _rows(out)
    analyzed = {k for k, r in rows.items() if not r["skipped"]}
    assert analyzed == {"conv1.weight", "layer1.conv.weight", "head.weight"}
    assert "fewer than min_evals" in rows["tiny.weight"]["skipped"]
    assert "not a layer weight" in rows["pos_embed"]["skipped"]
    assert (
        "no spectrum" in rows["bn1.weight"]["skipped"]
        and "no spectrum" in rows["head.bias"]["skipped"]
    )
    conv = rows["layer1.conv.weight"]
    assert (conv["kind"], conv["rf"], conv["num_evals"]) == ("conv2d", "9", "144")
    assert float(conv["alpha"]) > 1 and int(conv["num_pl_spikes"]) > 0
    assert s["layers"] == 3 and s["skipped"] == 5
    saved = json.loads(summary.read_text())
    assert saved[0]["alpha"] == pytest.approx(s["alpha"])


def test_layer_selection_parquet_and_plots(model_file, tmp_path):
    import pandas as pd

    out, plots = tmp_path / "l.parquet", tmp_path / "esd"
    run(
        [str(model_file), "--layers", "head.*", "tiny.weight", "--min_evals", "0"]
        + ["--out", str(out), "--plots", str(plots), "--quiet"]
    )
    table = pd.read_parquet(out)
    assert sorted(table["layer"]) == ["head.bias", "head.weight", "tiny.weight"]
    assert table.set_index("layer").loc["head.bias", "skipped"].startswith("1-D")
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert len(pngs) == 2 and pngs[0].endswith("head.weight.png")


def test_bad_inputs_end_with_one_line(model_file, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    for argv in (
        [str(bad)],
        [str(tmp_path / "missing.safetensors")],
        [str(model_file), "--out", str(tmp_path / "x.xlsx")],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("nwa: ") and "\n" not in err
    assert not (tmp_path / "x.xlsx").exists()


def test_lora_file_and_zoo_members(tmp_path):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 32, generator=gen), torch.randn(24, 4, generator=gen)
    lora = tmp_path / "adapter_model.safetensors"
    save_file({"base.q.lora_A.weight": a, "base.q.lora_B.weight": b}, lora)
    out = tmp_path / "lora.csv"
    run([str(lora), "--out", str(out), "--quiet"])
    rows = _rows(out)
    assert list(rows) == ["base.q"]  # the dense delta B @ A, not the factors
    assert rows["base.q"]["num_evals"] == "24"  # rank 4: the others are (near) zero
    assert int(rows["base.q"]["num_pl_spikes"]) <= 4


@pytest.mark.slow
def test_a_zoo_directory_is_all_its_members(tiny_zoo, tmp_path):
    out = tmp_path / "zoo.csv"
    summaries = run([str(tiny_zoo), "--summary_out", str(out), "--quiet"])
    from nwa.zoo.manifest import Zoo

    assert len(summaries) == len(Zoo.open(tiny_zoo))


def test_no_torch_import_for_a_safetensors_file(model_file, tmp_path):
    code = (
        "import sys; from nwa.diagnose import run; "
        f"run([{str(model_file)!r}, '--quiet']); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"},
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_numpy_reader_matches_safetensors_and_declines_what_it_cannot_read(tmp_path):
    from safetensors.torch import load_file

    from nwa.weights.arrays import open_arrays

    tensors = {
        "b.weight": torch.randn(6, 4, dtype=torch.float16),
        "a.weight": torch.randn(3, 5, 2, 2),
        "steps": torch.arange(7),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    with open_arrays(tmp_path) as arrays:  # a folder with model.safetensors
        assert sorted(arrays.names()) == sorted(tensors)
        for name, t in load_file(tmp_path / "model.safetensors").items():
            assert (arrays.get(name) == t.numpy()).all() and arrays.get(
                name
            ).dtype == t.numpy().dtype
    # shards with an index
    shards = tmp_path / "sharded"
    shards.mkdir()
    save_file({"x.weight": torch.randn(9, 9)}, shards / "model-1.safetensors")
    save_file({"y.weight": torch.randn(4, 9)}, shards / "model-2.safetensors")
    index = {"weight_map": {"x.weight": "model-1.safetensors", "y.weight": "model-2.safetensors"}}
    (shards / "model.safetensors.index.json").write_text(json.dumps(index))
    with open_arrays(shards) as arrays:
        assert arrays.get("y.weight").shape == (4, 9)
    # declined: bfloat16, a truncated file, a torch pickle, a missing path
    save_file({"w.weight": torch.randn(8, 8).bfloat16()}, tmp_path / "bf16.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    torch.save({"w": torch.randn(2)}, tmp_path / "w.pt")
    for name in ("bf16.safetensors", "cut.safetensors", "w.pt", "missing.safetensors"):
        assert open_arrays(tmp_path / name) is None, name
    # ... and the full reader takes over: a bfloat16 model is diagnosed all the same
    out = tmp_path / "bf16.csv"
    run([str(tmp_path / "bf16.safetensors"), "--out", str(out), "--quiet"])
    assert float(_rows(out)["w.weight"]["alpha"]) > 0


def test_a_layer_with_nan_is_listed_not_fatal(tmp_path):
    path, out = tmp_path / "nan.safetensors", tmp_path / "nan.csv"
    bad = torch.randn(16, 12)
    bad[3, 4] = float("nan")
    save_file({"good.weight": torch.randn(16, 12), "bad.weight": bad}, path)
    run([str(path), "--out", str(out), "--quiet"])
    rows = _rows(out)
    assert rows["bad.weight"]["skipped"] == "1 of 192 values are NaN or Inf"
    assert not rows["good.weight"]["skipped"] and float(rows["good.weight"]["alpha"]) > 0
