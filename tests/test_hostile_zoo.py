"""Hostile zoo folders, table-driven: every case is one ZooError line naming the file, the row
(number and id) and the value; paths never lead outside the zoo folder; the CLIs exit non-zero
with that line and no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from nwa.errors import CorruptWeightsError, NwaError, ZooError
from nwa.zoo.manifest import META, TABLE, Zoo, ZooMeta, ZooWriter

REPO = Path(__file__).resolve().parents[1]


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"fc.weight": torch.randn(3, 4, generator=g), "fc.bias": torch.randn(3, generator=g)}


def _zoo(root: Path) -> Path:
    meta = ZooMeta(
        name="hostile",
        classes=["a", "b", "c"],
        trees={"t0": {"root": "r0", "arch": "mlp", "path": "roots/r0.safetensors"}},
        label_schema={"classes": "multilabel"},
    )
    writer = ZooWriter(root, meta)
    (root / "roots").mkdir()
    save_file(_weights(99), str(root / "roots" / "r0.safetensors"))
    for i in range(4):
        path = writer.save_weights(f"m{i}", _weights(i))
        split = ["train", "train", "val", "test"][i]
        writer.add(
            {"id": f"m{i}", "path": path, "tree": "t0", "parent": "r0", "arch": "mlp"}
            | {"split": split, "classes": [i % 3], "test_acc": 0.5 + i / 10}
        )
    writer.finalize()
    return root


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return _zoo(tmp_path_factory.mktemp("pristine") / "zoo")


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A real weight file elsewhere on the machine: what an escaping path would reach."""
    path = tmp_path_factory.mktemp("elsewhere") / "secret.safetensors"
    save_file(_weights(7), str(path))
    return path


def _table(root: Path, edit: Callable[[pd.DataFrame], pd.DataFrame | None]) -> None:
    """Rewrite models.parquet through pandas (JSON columns as stored: text)."""
    frame = pd.read_parquet(root / TABLE)
    out = edit(frame)
    (out if out is not None else frame).to_parquet(root / TABLE, index=False)


def _set(col: str, values: list) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame[col] = pd.Series(values, dtype=object)
        return frame

    return edit


def _cell(col: str, row: int, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        values = frame[col].astype(object).tolist()
        values[row] = value
        frame[col] = pd.Series(values, dtype=object)
        return frame

    return edit


def _meta(root: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads((root / META).read_text())
    change(meta)
    (root / META).write_text(json.dumps(meta))


def _link_member_out(root: Path, outside: Path) -> None:
    (root / "weights" / "m1.safetensors").unlink()
    (root / "weights" / "m1.safetensors").symlink_to(outside)


def _link_weights_folder_out(root: Path, outside: Path) -> None:
    shutil.move(root / "weights", outside.parent / "moved_weights")
    (root / "weights").symlink_to(outside.parent / "moved_weights")


def _fifo(root: Path, name: str) -> None:
    (root / name).unlink()
    os.mkfifo(root / name)


T = TABLE
# name -> (how to break the zoo, file the message names, fragment of the message)
CASES: dict[str, tuple[Callable[[Path, Path], None], str, str]] = {
    "absolute path": (lambda r, o: _table(r, _cell("path", 1, "/etc/passwd")), T, "row 1 (id 'm1'): path '/etc/passwd' is absolute"),
    "absolute path to a real file": (lambda r, o: _table(r, _cell("path", 2, str(o))), T, "row 2 (id 'm2'): path"),
    "dot-dot escape": (lambda r, o: _table(r, _cell("path", 0, "../../../../etc/passwd")), T, "row 0 (id 'm0'): path '../../../../etc/passwd' climbs out"),
    "symlink out": (_link_member_out, T, "row 1 (id 'm1'): path 'weights/m1.safetensors' resolves to"),
    "weights folder linked out": (_link_weights_folder_out, T, "row 0 (id 'm0'): path 'weights/m0.safetensors' resolves to"),
    "root path absolute": (lambda r, o: _meta(r, lambda m: m["trees"]["t0"].update(path=str(o))), META, "tree 't0' root: path"),
    "root path escapes": (lambda r, o: _meta(r, lambda m: m["trees"]["t0"].update(path="../x.safetensors")), META, "tree 't0' root: path '../x.safetensors' climbs out"),
    "path null": (lambda r, o: _table(r, _cell("path", 3, None)), T, "row 3 (id 'm3'): 'path' is null, not a string"),
    "classes a string": (lambda r, o: _table(r, _set("classes", ["0,1", "1", "2", "0"])), T, "row 0 (id 'm0'): 'classes' is '0,1', not a list of class indices"),
    "classes null": (lambda r, o: _table(r, _set("classes", [None] * 4)), T, "row 0 (id 'm0'): 'classes' is null, not a list"),
    "classes fractional": (lambda r, o: _table(r, _set("classes", [[0.5], [1.0], [2.0], [0.0]])), T, "'classes' holds 0.5, not an integer"),
    "test_acc strings": (lambda r, o: _table(r, lambda f: f.assign(test_acc=f["test_acc"].astype(str))), T, "row 0 (id 'm0'): 'test_acc' is '0.5', not a number"),
    "train_acc booleans": (lambda r, o: _table(r, _set("train_acc", [True, False, True, True])), T, "'train_acc' is True, not a number"),
    "id an integer": (lambda r, o: _table(r, _set("id", [0, 1, 2, 3])), T, "row 0 (id 0): 'id' is 0, not a string"),
    "split null": (lambda r, o: _table(r, _cell("split", 2, None)), T, "row 2 (id 'm2'): 'split' is null, not a string"),
    "hparams a JSON list": (lambda r, o: _table(r, _cell("hparams", 1, "[1, 2]")), T, "row 1 (id 'm1'): 'hparams' is [1, 2], not a JSON object"),
    "labels deeply nested": (lambda r, o: _table(r, _cell("labels", 0, "[" * 100_000)), T, "row 0 (id 'm0'): 'labels' nests JSON too deeply"),
    "labels invalid JSON": (lambda r, o: _table(r, _cell("labels", 0, "{oops")), T, "'labels' holds invalid JSON"),
    "empty table": (lambda r, o: _table(r, lambda f: f.iloc[:0]), T, "manifest has no models"),
    "empty file": (lambda r, o: (r / TABLE).write_bytes(b""), T, "not a readable Parquet table"),
    "missing column": (lambda r, o: _table(r, lambda f: f.drop(columns=["arch"])), T, "manifest lacks columns ['arch']"),
    "table is a FIFO": (lambda r, o: _fifo(r, TABLE), T, "is a FIFO (named pipe), not a regular file"),
    "meta is a FIFO": (lambda r, o: _fifo(r, META), META, "is a FIFO (named pipe), not a regular file"),
    "meta classes a string": (lambda r, o: _meta(r, lambda m: m.update(classes="abc")), META, "'classes' must be a list of strings, not 'abc'"),
    "meta trees a list": (lambda r, o: _meta(r, lambda m: m.update(trees=["t0"])), META, "'trees' must be an object"),
    "meta deeply nested": (lambda r, o: (r / META).write_text('{"name": ' + "[" * 100_000), META, "JSON nested too deeply"),
    "duplicate ids": (lambda r, o: _table(r, _cell("id", 1, "m0")), T, "duplicate model ids ['m0']"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_zoo_is_one_line(pristine, outside, tmp_path, case):
    root = tmp_path / "zoo"
    shutil.copytree(pristine, root)
    Zoo.open(root)  # valid before the edit
    breaker, file, fragment = CASES[case]
    breaker(root, outside)
    with pytest.raises(ZooError) as err:
        Zoo.open(root)
    text = str(err.value)
    assert "\n" not in text and fragment in text, text
    assert text.startswith(str(root / file)) or text.startswith(str(root)), text


def test_folder_member_linking_out_is_refused_on_open(pristine, outside, tmp_path):
    """A member stored as a folder is inside the zoo, but a file in it links out."""
    root = tmp_path / "zoo"
    shutil.copytree(pristine, root)
    folder = root / "weights" / "m1"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(outside)
    _table(root, _cell("path", 1, "weights/m1"))
    zoo = Zoo.open(root)
    with pytest.raises(CorruptWeightsError, match="outside") as err:
        zoo.open_model("m1")
    assert "\n" not in str(err.value)
    zoo.open_model("m0").close()  # the others still open


def test_symlinks_inside_the_zoo_are_fine(pristine, tmp_path):
    root = tmp_path / "zoo"
    shutil.copytree(pristine, root)
    (root / "store").mkdir()
    shutil.move(root / "weights" / "m2.safetensors", root / "store" / "m2.safetensors")
    (root / "weights" / "m2.safetensors").symlink_to("../store/m2.safetensors")
    zoo = Zoo.open(root)
    with zoo.open_model("m2") as src:
        assert torch.equal(src.get("fc.weight"), _weights(2)["fc.weight"])


def test_a_zoo_opened_through_a_symlink(pristine, tmp_path):
    (tmp_path / "alias").symlink_to(pristine)
    zoo = Zoo.open(tmp_path / "alias")
    assert zoo.path_of("m0") == tmp_path / "alias" / "weights" / "m0.safetensors"
    zoo.open_model("m0").close()


@pytest.mark.parametrize(
    "case", ["dot-dot escape", "classes a string", "empty table", "table is a FIFO"]
)
def test_zoo_info_exits_with_one_line(pristine, outside, tmp_path, capsys, case):
    from nwa.zoo.__main__ import main

    root = tmp_path / "zoo"
    shutil.copytree(pristine, root)
    CASES[case][0](root, outside)
    assert main(["info", str(root)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("nwa: ") and CASES[case][2] in err


@pytest.mark.slow
def test_fit_on_a_hostile_zoo_exits_with_one_line(pristine, outside, tmp_path):
    """``python -m nwa.fit`` on a zoo whose row climbs out: exit 2, one nwa line, no run."""
    root = tmp_path / "zoo"
    shutil.copytree(pristine, root)
    CASES["dot-dot escape"][0](root, outside)
    args = ["--config", str(REPO / "configs/probex_vision.yaml"), "--data.init_args.zoo", str(root)]
    args += ["--trainer.default_root_dir", str(tmp_path / "runs")]
    r = subprocess.run(
        [sys.executable, "-m", "nwa.fit", *args],
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(REPO), "WANDB_MODE": "offline"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    nwa_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("nwa: ")]
    assert len(nwa_lines) == 1 and CASES["dot-dot escape"][2] in nwa_lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "wandb").exists()


def test_errors_are_nwa_errors():
    assert issubclass(ZooError, NwaError) and issubclass(CorruptWeightsError, NwaError)
