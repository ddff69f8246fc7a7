"""The zoo manifest: ZooWriter -> Zoo round trip, validation errors, atomic writes."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from nwa.atomic import atomic_path, atomic_write_text
from nwa.errors import ZooError
from nwa.zoo.manifest import (
    META,
    TABLE,
    Zoo,
    ZooMeta,
    ZooWriter,
    normalize_row,
    read_table,
    write_table,
)


def _meta() -> ZooMeta:
    return ZooMeta(
        name="tiny",
        classes=["cat", "dog", "fish"],
        trees={"t0": {"root": "root0", "arch": "mlp"}},
        label_schema={"classes": "multilabel"},
    )


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Deliberately not alphabetical: the saved layout order must survive the round trip.
    return {
        "fc2.weight": torch.randn(3, 4, generator=g),
        "fc1.weight": torch.randn(4, 2, generator=g),
    }


def _build(root, n: int = 3) -> ZooWriter:
    writer = ZooWriter(root, _meta())
    for i in range(n):
        mid = f"m{i}"
        path = writer.save_weights(mid, _weights(i))
        writer.add(
            {
                "id": mid,
                "path": path,
                "tree": "t0",
                "parent": "root0",
                "arch": "mlp",
                "split": ["train", "val", "test"][i % 3],
                "classes": [i % 3],
                "hparams": {"lr": 0.1 * (i + 1)},
                "train_acc": 0.9,
                "test_acc": 0.5 + 0.1 * i,
                "labels": {"seed": i},
            }
        )
    return writer


def test_round_trip(tmp_path):
    writer = _build(tmp_path)
    assert writer.has("m1") and not writer.has("m9")
    zoo = writer.finalize(expected=3)
    again = Zoo.open(tmp_path)
    assert len(again) == 3 and again.meta == zoo.meta
    row = again.row("m2")
    assert (
        row["split"] == "test"
        and row["classes"] == [2]
        and row["hparams"] == {"lr": pytest.approx(0.3)}
    )
    assert row["labels"] == {"seed": 2}
    assert row["gen_gap"] == pytest.approx(0.9 - 0.7)
    assert math.isnan(row["val_acc"])
    assert list(again.split("train")["id"]) == ["m0"]
    assert list(again.label("seed")) == [0, 1, 2]
    assert "test_acc" in again.available_labels() and "seed" in again.available_labels()
    with again.open_model("m1") as src:
        assert src.names() == ["fc2.weight", "fc1.weight"]
        assert torch.equal(src.get("fc1.weight"), _weights(1)["fc1.weight"])


def test_finalize_refuses_unfinished_build(tmp_path):
    writer = _build(tmp_path, n=2)
    with pytest.raises(ZooError, match="only 2 of 5"):
        writer.finalize(expected=5)


def test_row_needs_weights_first(tmp_path):
    writer = ZooWriter(tmp_path, _meta())
    row = {"id": "x", "path": "weights/x.safetensors", "arch": "mlp", "split": "train"}
    with pytest.raises(ZooError, match="weights must be written before"):
        writer.add(row)


def test_missing_metadata(tmp_path):
    _build(tmp_path)  # rows exist, but no finalize: a build still running
    with pytest.raises(ZooError, match="zoo metadata is missing.*build may still be running"):
        Zoo.open(tmp_path)
    with pytest.raises(ZooError, match="no such zoo directory"):
        Zoo.open(tmp_path / "nope")


def _edit_table(root, changes: dict[tuple[str, int], object]) -> None:
    """Rewrite the finalized table with some cells changed, as a hand edit would."""
    frame = read_table(root / TABLE)
    for (col, i), value in changes.items():
        frame.at[i, col] = value
    write_table(frame, root / TABLE)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({("split", 0): "holdout"}, "unknown splits"),
        ({("id", 1): "m0"}, "duplicate model ids"),
        ({("tree", 0): "t9"}, "trees .*t9.* are not in"),
        ({("parent", 0): "ghost"}, "parents .*ghost"),
    ],
)
def test_validation_errors(tmp_path, change, match):
    _build(tmp_path).finalize()
    Zoo.open(tmp_path)  # valid before the edit
    _edit_table(tmp_path, change)
    with pytest.raises(ZooError, match=match):
        Zoo.open(tmp_path)


def test_class_index_out_of_range(tmp_path):
    _build(tmp_path).finalize()
    _edit_table(tmp_path, {("classes", 0): [7]})
    with pytest.raises(ZooError, match="class indices outside 0..2"):
        Zoo.open(tmp_path)


def test_missing_weight_file(tmp_path):
    _build(tmp_path).finalize()
    (tmp_path / "weights" / "m1.safetensors").unlink()
    with pytest.raises(ZooError, match="1 weight files are missing"):
        Zoo.open(tmp_path)
    assert len(Zoo.open(tmp_path, check_files=False)) == 3


def test_bad_metadata_and_table(tmp_path):
    _build(tmp_path).finalize()
    meta = json.loads((tmp_path / META).read_text())
    (tmp_path / META).write_text(json.dumps(meta | {"colour": "red"}))
    with pytest.raises(ZooError, match="unknown metadata keys"):
        Zoo.open(tmp_path)
    (tmp_path / META).write_text(json.dumps(meta | {"format": "other/9"}))
    with pytest.raises(ZooError, match="format"):
        Zoo.open(tmp_path)
    (tmp_path / META).write_text("{broken")
    with pytest.raises(ZooError, match="invalid JSON"):
        Zoo.open(tmp_path)
    (tmp_path / META).write_text(json.dumps(meta))
    pd.DataFrame({"id": ["a"]}).to_parquet(tmp_path / TABLE)
    with pytest.raises(ZooError, match="manifest lacks columns"):
        Zoo.open(tmp_path)
    (tmp_path / TABLE).write_bytes(b"not parquet")
    with pytest.raises(ZooError, match="not a readable Parquet"):
        Zoo.open(tmp_path)


def test_normalize_row_rejects_bad_rows():
    base = {"id": "a", "path": "p", "arch": "mlp", "split": "train"}
    assert normalize_row(base)["classes"] == []
    with pytest.raises(ValueError, match="split 'holdout'"):
        normalize_row(base | {"split": "holdout"})
    with pytest.raises(ValueError, match="unknown columns"):
        normalize_row(base | {"accuracy": 0.5})
    with pytest.raises(ValueError, match="non-empty 'arch'"):
        normalize_row(base | {"arch": ""})


def test_unknown_model_id(tmp_path):
    zoo = _build(tmp_path).finalize()
    with pytest.raises(ZooError, match="no model with id 'nope'"):
        zoo.row("nope")
    with pytest.raises(ZooError, match="no label 'colour'"):
        zoo.label("colour")


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_old_content_on_error(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
