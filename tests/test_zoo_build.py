"""The zoo builder on the tiny vision config: build, info, determinism, resume, shards, bad configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from nwa.errors import ConfigError, ZooError
from nwa.zoo.__main__ import main
from nwa.zoo.build import BuildStopped, build, merge, missing, parse_shard, zoo_dir
from nwa.zoo.cache import ensure_zoo
from nwa.zoo.claims import Claims, create_exclusive
from nwa.zoo.info import describe, root_distances
from nwa.zoo.manifest import Zoo
from nwa.zoo.plan import load_config, make_plan
from nwa.zoo.report import file_hashes

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


def _cli(config: Path | str, out: Path, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "nwa.zoo", "build", "--config", str(config), "--out", str(out)]
    return [*cmd, "--quiet", *args]


def _run_killed(cmd: list[str], kill_after: int) -> None:
    """Run a build CLI that SIGKILLs itself after ``kill_after`` models; wait for its workers too."""
    env = dict(os.environ, NWA_ZOO_KILL_AFTER=str(kill_after))
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -9, err
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # pool workers leave within seconds of their builder
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    pytest.fail("the killed build's workers outlived it")


def _trainings(out: Path) -> Counter:
    """How often each model was trained, from ``build/log.jsonl``."""
    lines = (out / "build" / "log.jsonl").read_text().splitlines()
    return Counter(r["id"] for r in map(json.loads, lines) if "id" in r)


@pytest.mark.slow
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
    assert describe(zoo, distances=False)["build"]["timings"]["per_model"]
    assert zoo.meta.build["deterministic"] is True and zoo.meta.build["device"] == "cpu"
    assert "timings" not in zoo.meta.build  # kept in build/log.jsonl: builds give equal zoo.json
    assert set(zoo.meta.layout) == {"resnet_micro", "vit_micro"}
    assert zoo.meta.label_schema["classes"] == "multilabel"


@pytest.mark.slow
def test_members_sit_closer_to_their_own_root(tiny_vision_zoo: Path) -> None:
    dist = root_distances(Zoo.open(tiny_vision_zoo))
    assert set(dist) == {"vision/resnet_micro", "vision/vit_micro", "forest/resnet_micro"}
    for group in dist.values():
        assert group["own"] < group["other"]
        assert group["closer_to_own"] == 1.0


@pytest.mark.slow
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


@pytest.mark.slow
def test_ensure_zoo_reuses_the_cache(tiny_vision_zoo: Path, tiny_vision_config: dict) -> None:
    home = tiny_vision_zoo.parents[1]
    assert tiny_vision_zoo == zoo_dir(load_config(tiny_vision_config), home)
    before = (tiny_vision_zoo / "models.parquet").stat().st_mtime_ns
    config = home.parent / "tiny_vision.yaml"
    assert ensure_zoo(config, home=home) == tiny_vision_zoo
    assert (tiny_vision_zoo / "models.parquet").stat().st_mtime_ns == before


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_files(
    tiny_vision_zoo: Path, tiny_vision_config: dict, tmp_path: Path
) -> None:
    """A real SIGKILL of a 2-worker CLI build; the 1-worker rerun trains only the rest, and every
    file (weights, rows, zoo.json, models.parquet) equals the uninterrupted 1-worker build's."""
    config = tmp_path / "tiny_vision.yaml"
    config.write_text(yaml.safe_dump(tiny_vision_config))
    out = tmp_path / "zoo"
    _run_killed(_cli(config, out, "--workers", "2"), kill_after=9)
    assert not (out / "zoo.json").exists()
    left = missing(out, make_plan(config))
    assert 0 < len(left) < 22
    assert not list(out.glob("*/*.tmp")) and not list(out.glob("*/.*.tmp"))
    # a builder killed between a model's last file and its log line: the line is recovered
    log = out / "build" / "log.jsonl"
    lines = log.read_text().splitlines()
    lost = next(json.loads(x)["id"] for x in lines if "id" in json.loads(x))
    log.write_text("".join(x + "\n" for x in lines if f'"id": "{lost}"' not in x))
    before = _mtimes(out)
    result = build(config, out, threads=1)
    assert sorted(result.trained) == sorted(left)
    assert {k: v for k, v in _mtimes(out).items() if k in before} == before
    assert file_hashes(out) == file_hashes(tiny_vision_zoo)
    trainings = _trainings(out)
    plan = make_plan(config)
    assert max(trainings.values()) == 1 and len(trainings) == len(plan.roots) + len(plan.members)
    recovered = [json.loads(x) for x in log.read_text().splitlines() if "recovered" in x]
    assert [r["id"] for r in recovered] == [lost]
    assert not list((out / "build" / "claims").iterdir())


@pytest.mark.slow
def test_killed_shard_of_tiny_matches_the_two_worker_build(tiny_zoo: Path, tmp_path: Path) -> None:
    """Both recipe kinds (timm classifiers and LoRA UNets): a shard of tiny built by 1 worker,
    killed and resumed, holds the same bytes as the session's 2-worker build of all of tiny."""
    out = tmp_path / "zoo"
    _run_killed(_cli("tiny", out, "--workers", "1", "--shard", "6/8"), kill_after=4)
    result = build("tiny", out, shard="6/8", threads=1)
    assert result.trained and result.zoo is None
    mine = file_hashes(out)
    assert {p.split("/")[0] for p in mine} == {"roots", "weights", "rows"}
    assert any("lora" in p for p in mine) and any("vit" in p for p in mine)
    assert mine == {k: v for k, v in file_hashes(tiny_zoo).items() if k in mine}


@pytest.mark.slow
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
    assert file_hashes(out) == file_hashes(tiny_vision_zoo)  # every file, bit for bit
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_datamodule_opens_the_built_zoo(tiny_vision_zoo: Path) -> None:
    from nwa.data.module import ModelZooDataModule

    for arch, layer in (("resnet_micro", "fc.weight"), ("vit_micro", "head.weight")):
        dm = ModelZooDataModule(str(tiny_vision_zoo), layers=[layer], arch=arch, batch_size=4)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert batch["y"].shape[1] == 10 and batch["y"].sum(1).eq(5).all()


@pytest.mark.slow
def test_two_concurrent_builders_train_each_model_once(
    tiny_vision_zoo: Path, tiny_vision_config: dict, tmp_path: Path
) -> None:
    """A CLI build and an ``ensure_zoo`` caller, two real processes started together on one zoo."""
    config = tmp_path / "tiny_vision.yaml"
    config.write_text(yaml.safe_dump(tiny_vision_config))
    home = tmp_path / "home"
    out = zoo_dir(load_config(config), home)
    opener = f"from nwa.zoo.cache import ensure_zoo; ensure_zoo({str(config)!r}, workers=1, home={str(home)!r})"
    procs = [
        subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
        for cmd in (_cli(config, out, "--workers", "1"), [sys.executable, "-c", opener])
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    counts = _trainings(out)
    assert len(counts) == len(make_plan(config).roots) + 18 and set(counts.values()) == {1}
    lines = [json.loads(x) for x in (out / "build" / "log.jsonl").read_text().splitlines()]
    assert len({r["pid"] for r in lines if "id" in r}) == 2, "one builder did everything"
    assert file_hashes(out) == file_hashes(tiny_vision_zoo)


def _forest(config: dict, steps: int) -> dict:
    """The random-init forest of tiny (roots are instant), members of ``steps`` steps."""
    config["name"] = "forest"
    config["recipes"] = config["recipes"][1:]
    config["recipes"][0]["init_args"].update(roots_per_arch=3, steps=[steps, steps])
    return config


def _start_until_claimed(cmd: list[str], out: Path) -> tuple[subprocess.Popen, Path]:
    """Start a build CLI in its own process group; return once it holds a member's claim."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    old = set((out / "build" / "claims").glob("*.claim"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        new = set((out / "build" / "claims").glob("*-m000.*.claim")) - old
        if new:
            return proc, new.pop()
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no member was claimed: {proc.communicate()[1][-2000:]}")


@pytest.mark.slow
def test_sigterm_releases_claims_and_killed_holders_claims_are_taken_over(
    tiny_vision_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    config = tmp_path / "forest.yaml"
    config.write_text(yaml.safe_dump(_forest(tiny_vision_config, 100)))
    out = tmp_path / "zoo"
    claims_dir = out / "build" / "claims"
    # SIGTERM to the process group, as Slurm sends it: the job unwinds, its claim goes
    proc, _ = _start_until_claimed(_cli(config, out, "--workers", "1"), out)
    os.killpg(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    assert "nwa: interrupted (SIGTERM); run the same command again to resume" in err
    assert "Traceback" not in err
    assert not list(claims_dir.iterdir()) and not list(out.glob("*/.*.tmp"))
    # SIGKILL: the claim stays, stale at once (its holder's pid is gone)
    proc, claim = _start_until_claimed(_cli(config, out, "--workers", "1"), out)
    proc.kill()
    proc.communicate()
    assert claim.is_file()
    model = claim.name.split(".")[0]
    assert Claims(out).holder(model) is None
    # SIGKILL of a builder on "another host" of a shared filesystem (to which the claim above
    # looks alive: a pid of another host cannot be checked): its claim expires only when its
    # heartbeat is older than the timeout (3 s here)
    elsewhere = "import sys, nwa.zoo.claims as c; c.HOST = 'other-host'; from nwa.zoo.__main__ import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", elsewhere, *_cli(config, out, "--workers", "1")[3:]]
    proc, claim = _start_until_claimed(cmd, out)
    proc.kill()
    proc.communicate()
    other = claim.name.split(".")[0]
    assert other != model and Claims(out).holder(other).host == "other-host"
    monkeypatch.setenv("NWA_ZOO_CLAIM_TIMEOUT", "3")

    def beat_until_the_rest_is_done() -> None:  # as if it still ran meanwhile, then died
        while len(list((out / "rows").glob("*.json"))) < 2:
            os.utime(claim)
            time.sleep(0.2)

    beating = threading.Thread(target=beat_until_the_rest_is_done)
    beating.start()
    with caplog.at_level("INFO", logger="nwa.zoo"):
        result = build(config, out, threads=1)
    beating.join()
    assert f"{other} (other-host:{proc.pid} since" in caplog.text  # waited, then took it over
    assert result.trained[-1] == other
    assert {model, other} <= set(result.trained) and result.zoo is not None
    assert set(_trainings(out).values()) == {1}
    assert not list(claims_dir.iterdir())


def test_claims_of_other_hosts_expire_by_heartbeat(tmp_path: Path) -> None:
    claims = Claims(tmp_path, timeout=60)
    body = {"host": "elsewhere", "pid": 1, "since": time.time(), "boot": "x"}
    path = claims.dir / "m.1.claim"
    assert create_exclusive(path, json.dumps(body)) and not create_exclusive(path, "{}")
    holder = claims.claim("m")
    assert holder is not None and holder.host == "elsewhere"  # a live heartbeat: not ours
    old = time.time() - 61
    os.utime(path, (old, old))
    assert claims.holder("m") is None
    assert claims.claim("m") is None and "m" in claims.held  # taken over: generation 2
    assert (claims.dir / "m.2.claim").is_file()
    claims.release("m")
    assert not list(claims.dir.iterdir())


def test_a_waiting_builder_trains_the_rest_then_waits_without_spinning(
    tiny_vision_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """Another builder (here a thread of this process) holds one member until 3 s after the
    others are done, then gives up without finishing it."""
    config = _forest(tiny_vision_config, 8)
    out = tmp_path / "zoo"
    other = Claims(out)
    held = "forest-resnet_micro-0-m000"
    assert other.claim(held) is None
    looks = []
    real_holder = Claims.holder
    monkeypatch.setattr(Claims, "holder", lambda self, m: looks.append(m) or real_holder(self, m))
    released = []

    def give_up() -> None:
        while len(list((out / "rows").glob("*.json"))) < 2:
            time.sleep(0.05)
        time.sleep(3)
        released.append(time.monotonic())
        other.release(held)

    thread = threading.Thread(target=give_up)
    thread.start()
    with caplog.at_level("INFO", logger="nwa.zoo"):
        result = build(config, out, threads=1)
    thread.join()
    assert released and result.zoo is not None
    assert result.trained[-1] == held and len(result.trained) == 6  # 3 roots, 3 members
    assert "waiting for 1 models claimed by other builders" in caplog.text
    assert len(looks) < 20  # polled with back-off (0.5 s .. 5 s), not in a hot loop


def test_default_vision_is_in_probex_regime() -> None:
    """The default vision trees: 140 training models in every tree, and the layers ProbeX reads
    (nwa.suite.plan.FAMILIES) 256 wide or more in both dimensions of the matrix it probes."""
    from collections import Counter

    from nwa.suite.plan import FAMILIES
    from nwa.weights.spec import select_layers
    from nwa.zoo.classifiers import build_model
    from nwa.zoo.plan import make_plan

    plan = make_plan("default_vision")
    jobs = [j for _, j in plan.members if j.tree.startswith("vision-")]
    train = Counter(j.tree for j in jobs if j.split == "train")
    assert len(train) == 4 and set(train.values()) == {140}, train
    for arch in sorted({j.params["arch"] for j in jobs}):
        tensors = build_model(arch, 10, 3, 28).state_dict()
        family = next(f for name, f in FAMILIES.items() if arch.startswith(name))
        names = select_layers(list(tensors), list(family.layers))
        assert names, (arch, family.layers)
        for name in names:
            w = tensors[name]
            assert min(w.shape[0], w[0].numel()) >= 256, (arch, name, tuple(w.shape))
