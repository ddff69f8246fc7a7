"""The zoo builder on the tiny vision config: build, info, determinism, resume, shards, bad configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from nwa.errors import ConfigError, ZooError
from nwa.zoo.__main__ import main
from nwa.zoo.build import BuildStopped, build, merge, missing, parse_shard, zoo_dir
from nwa.zoo.cache import ensure_zoo
from nwa.zoo.info import describe, root_distances
from nwa.zoo.manifest import Zoo
from nwa.zoo.plan import load_config, make_plan

REPO = Path(__file__).resolve().parents[1]
COMPARE = [
    "id",
    "path",
    "tree",
    "parent",
    "arch",
    "split",
    "classes",
    "hparams",
    "train_acc",
    "val_acc",
    "test_acc",
    "robustness",
]


def _table(path: Path) -> pd.DataFrame:
    t = Zoo.open(path).table[COMPARE].copy()
    for col in ("classes", "hparams"):
        t[col] = [json.dumps(v, sort_keys=True) for v in t[col]]
    return t


def _mtimes(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.glob("*/*.safetensors")}


def test_tiny_zoo_opens_with_labels_and_roots(
    tiny_vision_zoo: Path, tiny_vision_config: dict
) -> None:
    zoo = Zoo.open(tiny_vision_zoo)
    plan = make_plan(tiny_vision_config)
    assert len(zoo) == len(plan.members) == 18  # 2 archs x 2 roots x 3 + a forest of 6
    assert len(zoo.meta.trees) == 10 and len(zoo.meta.classes) == 10
    assert zoo.meta.classes[7] == "cross"
    assert set(zoo.table["split"]) == {"train", "val", "test"}
    for _, row in zoo.table.iterrows():
        assert len(row["classes"]) == 5 and row["parent"] == zoo.meta.trees[row["tree"]]["root"]
        assert 0 <= row["test_acc"] <= 1 and 0 <= row["robustness"] <= 1
        assert row["gen_gap"] == pytest.approx(row["train_acc"] - row["test_acc"])
        assert {"lr", "steps", "weight_decay", "batch_size", "seed", "hflip"} <= set(row["hparams"])
    for tree in zoo.meta.trees.values():
        assert tree["path"] == f"roots/{tree['root']}.safetensors"
        assert (tiny_vision_zoo / tree["path"]).is_file()
    init = {t["init"] for name, t in zoo.meta.trees.items() if name.startswith("forest")}
    assert init == {"random"}
    assert zoo.meta.build["config_hash"] == load_config(tiny_vision_config).digest()
    assert zoo.meta.build["timings"]["per_model"]
    assert set(zoo.meta.layout) == {"resnet_micro", "vit_micro"}
    assert zoo.meta.label_schema["classes"] == "multilabel"


def test_members_sit_closer_to_their_own_root(tiny_vision_zoo: Path) -> None:
    dist = root_distances(Zoo.open(tiny_vision_zoo))
    assert set(dist) == {"vision/resnet_micro", "vision/vit_micro", "forest/resnet_micro"}
    for group in dist.values():
        assert group["own"] < group["other"]
        assert group["closer_to_own"] == 1.0


def test_info_cli(tiny_vision_zoo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tiny_vision_zoo)]) == 0
    out = capsys.readouterr().out
    for text in (
        "18 models",
        "splits:",
        "label balance",
        "test_acc",
        "lr ",
        "own root vs other roots",
        "closer to own: 100%",
    ):
        assert text in out
    assert main(["info", str(tiny_vision_zoo), "--json", "--no-distances"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["models"] == 18 and sum(info["splits"].values()) == 18
    assert describe(Zoo.open(tiny_vision_zoo), distances=False)["accuracy"]["test_acc"]["max"] <= 1


def test_ensure_zoo_reuses_the_cache(tiny_vision_zoo: Path, tiny_vision_config: dict) -> None:
    home = tiny_vision_zoo.parents[1]
    assert tiny_vision_zoo == zoo_dir(load_config(tiny_vision_config), home)
    before = (tiny_vision_zoo / "models.parquet").stat().st_mtime_ns
    config = home.parent / "tiny_vision.yaml"
    assert ensure_zoo(config, home=home) == tiny_vision_zoo
    assert (tiny_vision_zoo / "models.parquet").stat().st_mtime_ns == before


def test_killed_build_resumes_to_the_same_manifest(
    tiny_vision_zoo: Path, tiny_vision_config: dict, tmp_path: Path
) -> None:
    """A real SIGKILL of the CLI mid-build; the rerun trains only the rest and matches an uninterrupted build."""
    config = tmp_path / "tiny_vision.yaml"
    config.write_text(yaml.safe_dump(tiny_vision_config))
    out = tmp_path / "zoo"
    env = dict(os.environ, NWA_ZOO_KILL_AFTER="9")
    cmd = [
        sys.executable,
        "-m",
        "nwa.zoo",
        "build",
        "--config",
        str(config),
        "--out",
        str(out),
        "--workers",
        "1",
        "--quiet",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert not (out / "zoo.json").exists()
    left = missing(out, make_plan(config))
    assert 0 < len(left) < 22
    assert not list(out.glob("*/*.tmp"))
    before = _mtimes(out)
    result = build(config, out, threads=1)
    assert sorted(result.trained) == sorted(left)
    assert {k: v for k, v in _mtimes(out).items() if k in before} == before
    pd.testing.assert_frame_equal(_table(out), _table(tiny_vision_zoo))


def test_shards_then_merge_equal_the_full_build(
    tiny_vision_zoo: Path, tiny_vision_config: dict, tmp_path: Path
) -> None:
    out = tmp_path / "zoo"
    first = build(tiny_vision_config, out, shard="0/2", threads=1)
    assert first.zoo is None and not (out / "zoo.json").exists()
    with pytest.raises(ZooError, match="not finished"):
        merge(out)
    with pytest.raises(BuildStopped):
        build(tiny_vision_config, out, shard=(1, 2), threads=1, stop_after=1)
    last = build(tiny_vision_config, out, shard=(1, 2), threads=1)
    assert last.zoo is not None and not set(first.trained) & set(last.trained)
    assert main(["merge", str(out)]) == 0
    pd.testing.assert_frame_equal(_table(out), _table(tiny_vision_zoo))
    assert build(tiny_vision_config, out, threads=1).trained == []


def _bad(config: dict, **changes: object) -> dict:
    config["recipes"][0]["init_args"].update(changes)
    return config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"archs": ["resnet_micro", "convnext_gargantuan"]},
            "unknown architecture 'convnext_gargantuan'",
        ),
        ({"n_classes": 11}, "n_classes=11, but source 'shapes' has 10"),
        ({"classes_per_member": 10}, "classes_per_member=10"),
        ({"members_per_tree": 0}, "zero models"),
        ({"source": "imagenet"}, "unknown image source 'imagenet'"),
        ({"member_per_tree": 3}, "did you mean 'members_per_tree'"),
        ({"steps": [10]}, "steps must be a range"),
        ({"split_within": "root"}, "split_within must be 'arch' or 'tree'"),
    ],
)
def test_bad_config_fails_before_training(
    tiny_vision_config: dict, tmp_path: Path, changes: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build(_bad(tiny_vision_config, **changes), tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()


def test_bad_config_files_give_one_line_cli_errors(
    tiny_vision_config: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {
        "arch.yaml": yaml.safe_dump(_bad(tiny_vision_config, archs=["nope"])),
        "key.yaml": "name: x\nrecipes: []\nsead: 1\n",
        "class.yaml": "name: x\nrecipes:\n  - class_path: nwa.zoo.vision.NoSuchRecipe\n",
        "yaml.yaml": "name: [x\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert (
            main(["build", "--config", str(tmp_path / name), "--out", str(tmp_path / "zoo")]) == 2
        )
        err = capsys.readouterr().err.strip()
        assert err.startswith("nwa: ") and str(tmp_path / name) in err, err
    assert main(["build", "--config", "tiny", "--shard", "2/2"]) == 2
    assert "need 0 <= I < N" in capsys.readouterr().err
    assert not (tmp_path / "zoo").exists()


def test_folder_of_another_config_is_refused(
    tiny_vision_zoo: Path, tiny_vision_config: dict
) -> None:
    with pytest.raises(ZooError, match="another config"):
        build(_bad(tiny_vision_config, lr=[0.001, 0.002]), tiny_vision_zoo)


def test_parse_shard_from_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert parse_shard("slurm") == (1, 3)
    assert parse_shard("0/4") == (0, 4)
    with pytest.raises(ConfigError):
        parse_shard("1-4")


def test_every_zoo_config_plans(offline_hub: Path) -> None:
    """Every shipped config plans offline; the real-scale ones at their full size (their pipeline
    from a Hugging Face cache, their datasets and pretrained roots only needed to train)."""
    sizes = {"modelj_resnet": 1000, "modelj_vit": 900, "sd_lora": 1000}
    for path in sorted((REPO / "configs" / "zoo").glob("*.yaml")):
        plan = make_plan(path)
        assert plan.members, path
        assert len(plan.members) == sizes.get(path.stem, len(plan.members)), path
    vit = make_plan(REPO / "configs" / "zoo" / "modelj_vit.yaml")
    assert len(vit.roots) == 3 and len(vit.classes) == 100 and vit.classes[1] == "aquarium fish"


def test_splits_within_each_tree() -> None:
    from collections import Counter

    from nwa.zoo.vision import VisionRecipe

    kw = {"archs": ["resnet_micro"], "roots_per_arch": 3, "members_per_tree": 10}
    kw["splits"] = [0.6, 0.2, 0.2]
    by_tree = VisionRecipe(**kw, split_within="tree").plan(seed=0)
    counts = Counter((j.tree, j.split) for j in by_tree if j.kind == "member")
    for t in {j.tree for j in by_tree}:
        assert (counts[t, "train"], counts[t, "val"], counts[t, "test"]) == (6, 2, 2)
    by_arch = [j for j in VisionRecipe(**kw).plan(seed=0) if j.kind == "member"]
    assert Counter(j.split for j in by_arch) == {"train": 18, "val": 6, "test": 6}


def test_datamodule_opens_the_built_zoo(tiny_vision_zoo: Path) -> None:
    from nwa.data.module import ModelZooDataModule

    for arch, layer in (("resnet_micro", "fc.weight"), ("vit_micro", "head.weight")):
        dm = ModelZooDataModule(str(tiny_vision_zoo), layers=[layer], arch=arch, batch_size=4)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert batch["y"].shape[1] == 10 and batch["y"].sum(1).eq(5).all()
