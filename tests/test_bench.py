"""python -m nwa.bench: the plan, the report's numbers and figures, skipping finished runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from nwa.suite.execute import OUTPUTS, RESULT, log_dir, needs_run, recipe_digest
from nwa.suite.plan import FAMILIES, METHODS, SUITES, RunSpec, plan
from nwa.suite.report import load_results, mean_std, tree_accuracy, write_report

ROOT = Path(__file__).resolve().parents[1]
TREES = ["vision-resnet_micro-0", "vision-resnet_micro-1", "vision-vit_micro-0"]
LAYERS = {
    "resnet": ["conv1.weight", "layer4.0.conv2.weight", "fc.weight"],
    "vit": ["blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "head.weight"],
}


def test_plan_covers_every_method_seed_and_section_once():
    runs = plan(SUITES["quick"], "Z", "L", TREES, LAYERS)
    keys = [r.key for r in runs]
    assert len(keys) == len(set(keys)), "a run is planned twice"
    for seed in (0, 1, 2):
        for task in ("classes", "properties"):
            got = {
                r.method
                for r in runs
                if r.seed == seed and r.task == task and r.subset == "resnet trees"
            }
            assert set(METHODS) <= got
        per_tree = [
            (r.task, r.subset, r.method) for r in runs if r.seed == seed and r.subset in TREES
        ]
        assert sorted(per_tree) == sorted(
            (task, t, m)
            for task in ("classes", "properties")
            for t in TREES
            for m in ("ProbeX", "Dense", "StatNN-GBT")
        )
        assert any(r.subset == "forest" and r.seed == seed for r in runs)
        assert {r.method for r in runs if r.subset == "vit trees" and r.seed == seed} == {
            "ProbeX",
            "ProbeX experts",
        }
        assert {r.method for r in runs if r.task == "concept" and r.seed == seed} == {
            "ProbeX",
            "Dense",
            "ProbeX self-attn",
            "Dense self-attn",
        }
    # the ViT runs read the family's first candidate that matches a layer of the zoo
    vit = next(r for r in runs if r.subset == "vision-vit_micro-0" and r.method == "ProbeX")
    assert vit.args[vit.args.index("--data.init_args.layers") + 1] == FAMILIES["vit"].layers[0]
    # the seed comes after every --config, which would otherwise reset it to the recipe's
    args = list(vit.args)
    last_config = max(i for i, a in enumerate(args) if a == "--config")
    assert args.index("--seed_everything") > last_config and args[-1] == "0"


def test_plan_rejects_a_zoo_without_the_family_layer():
    with pytest.raises(ValueError, match="none of the vit_"):
        plan(SUITES["quick"], "Z", "L", TREES, {**LAYERS, "vit": ["head.weight"]})
    assert FAMILIES["resnet"].layers[0] in LAYERS["resnet"]


def test_mean_std_formatting():
    assert mean_std([0.5, 0.7, 0.6]) == "0.600 ± 0.100"
    assert mean_std([0.25]) == "0.250"
    assert mean_std([None, float("nan")]) == "-"


def _fake_run(out: Path, spec, metrics: dict, z: bool = True, error: str | None = None) -> None:
    folder = out / "runs" / spec.key
    folder.mkdir(parents=True)
    res = spec.to_dict() | {
        "metrics": metrics,
        "params": 1000,
        "encoder_params": 900,
        "wall_s": 1.0,
    }
    if error:
        res["error"] = error
    rng = np.random.default_rng(spec.seed)
    n = 12
    outputs = {
        "pred": rng.random((n, 3)).astype(np.float32),
        "target": rng.random((n, 3)).astype(np.float32),
        "split": np.array(["train"] * 6 + ["val"] * 2 + ["test"] * 4),
        "tree": np.array(["a", "b"] * 6),
    }
    if z:
        outputs["z"] = rng.random((n, 5)).astype(np.float32)
    np.savez(folder / OUTPUTS, **outputs)
    (folder / RESULT).write_text(json.dumps(res))


@pytest.mark.slow
def test_report_tables_are_mean_and_std_of_the_runs(tmp_path):
    suite = SUITES["quick"]
    runs = plan(suite, "Z", "L", TREES, LAYERS)
    accs = {0: 0.8, 1: 0.9, 2: 0.7}
    for spec in runs:
        if spec.task == "classes":
            m = {"test/acc": accs[spec.seed], "test/f1": 0.5, "test/precision": 0.4}
            if spec.method == "ProbeX experts":
                m |= {"test/router_purity": 1.0, "router/n_trees": 2.0}
        elif spec.task == "properties":
            m = {
                "test/r2": 0.1 * spec.seed,
                "test/mae_test_acc": 0.01 * (spec.seed + 1),
                "test/r2_test_acc": 0.2 * spec.seed,
                "test/kendall_test_acc": 0.5,
            }
        else:
            continue  # aligner runs missing: their tables must say so, not invent numbers
        _fake_run(tmp_path, spec, m, error="RuntimeError: boom" if spec.method == "NWPA" else None)
    path, df = write_report(tmp_path, runs, {"suite": "quick"})
    text = re.sub(r" +", " ", path.read_text())  # column padding aside
    probex_row = next(line for line in text.splitlines() if line.startswith("| ProbeX |"))
    assert "0.800 ± 0.100" in probex_row  # mean and std of 0.8, 0.9, 0.7
    assert "| vision-resnet_micro-0 | 0.800 ± 0.100 |" in text
    # per-tree regression: R² of test accuracy 0.0, 0.2, 0.4 over seeds, tau 0.5 in each
    assert "| vision-vit_micro-0 | 0.200 ± 0.200 / 0.500 ± 0.000 |" in text
    assert "0.100 ± 0.100" in text  # R² of WeightNet etc.: 0.0, 0.1, 0.2
    # the ProbeX claims: every method scored 0.8 on average, so ProbeX ties Dense and is not
    # StatNN + 0.10; the experts tie the joint model; equal parameter counts fail the 1/20 claim
    claims = text.split("### The ProbeX claims")[1].split("###")[0]
    assert (
        "- vision-resnet_micro-0: ProbeX 0.800; >= Dense 0.800: met; "
        ">= StatNN-GBT + 0.10 (0.900): NOT met." in claims
    )
    assert "- resnet trees: tree experts 0.800 >= one joint model 0.800: met." in claims
    assert "- resnet trees: router purity (lowest seed) 1.000 = 1: met." in claims
    assert "vision-resnet_micro-0 900 against 900 (1/1): NOT met;" in claims
    assert "0.0200 ± 0.0100" in text  # MAE of test_acc in the WeightNet table
    nwpa = next(line for line in text.splitlines() if line.startswith("| NWPA |"))
    assert {c.strip() for c in nwpa.strip("| ").split("|")[1:]} <= {"-", "900", "1,000"}
    assert "boom" in text and "failed" in text and "missing" in text
    for fig in (
        "nwa_embeddings_trees",
        "nwa_embeddings_test_acc",
        "weightnet_scatter",
        "weightnet_errors",
        "weightnet_mae",
        "weightnet_r2_radar",
        "probex_per_tree",
    ):
        png = tmp_path / "figures" / f"{fig}.png"
        assert png.stat().st_size > 5000, fig
        assert f"figures/{fig}.png" in text
    assert (df["status"] == "done").sum() == sum(
        1 for r in runs if r.task != "concept" and r.method != "NWPA"
    )


def test_a_run_finished_with_another_command_is_redone_and_not_reported(tmp_path):
    runs = plan(SUITES["quick"], "Z", "L", TREES, LAYERS)
    spec = next(r for r in runs if r.method == "ProbeX" and r.subset == "vision-vit_micro-0")
    assert needs_run(spec, None)
    assert needs_run(spec, spec.to_dict() | {"error": "RuntimeError: boom"})
    assert not needs_run(spec, spec.to_dict())
    # the same recipe from another clone of the project still counts as the same command
    moved = [a.replace(str(ROOT), "/elsewhere/nwa") for a in spec.args]
    assert moved != list(spec.args) and not needs_run(spec, spec.to_dict() | {"args": moved})
    i = spec.args.index("--data.init_args.layers") + 1
    changed = [*spec.args[:i], "blocks.0.mlp.fc1.weight", *spec.args[i + 1 :]]
    stale = spec.to_dict() | {"args": changed}
    assert needs_run(spec, stale)
    _fake_run(tmp_path, spec, {"test/acc": 0.9})
    (tmp_path / "runs" / spec.key / RESULT).write_text(
        json.dumps(stale | {"metrics": {"test/acc": 0.9}})
    )
    row = load_results(tmp_path, [spec]).iloc[0]
    assert row["status"] == "outdated" and "acc" not in row
    # a recipe edited after the run: same command, other contents
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("trainer: {max_epochs: 3}\n")
    edited = RunSpec(spec.task, spec.method, spec.subset, spec.seed, ("--config", str(recipe)))
    ran = edited.to_dict() | {"recipes": recipe_digest(edited.args)}
    assert not needs_run(edited, ran)
    recipe.write_text("trainer: {max_epochs: 4}\n")
    assert needs_run(edited, ran)
    # a report with no usable run at all (every run outdated or missing) still gets written
    path, df = write_report(tmp_path, runs, {"suite": "quick"})
    assert set(df["status"]) == {"outdated", "missing"}
    assert "| vision-vit_micro-0 | - |" in re.sub(r" +", " ", path.read_text())


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nwa.bench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_tree_accuracy_scores_one_trees_test_models():
    outputs = {
        "split": np.array(["test", "test", "val", "test"]),
        "tree": np.array(["a", "b", "a", "a"]),
        "pred": np.array([[0.9, 0.2], [0.6, 0.7], [0.9, 0.9], [0.4, 0.5]]),
        "target": np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]),
    }
    # tree a's test rows: 1 of 2 right, then 1 of 2 (0.5 is not above the threshold); val ignored
    assert tree_accuracy(outputs, "a") == 0.5
    assert tree_accuracy(outputs, "b") == 1.0
    assert tree_accuracy(outputs, "c") is None
    multiclass = dict(outputs, target=np.array([0.0, 1.0, 0.0, 1.0]))
    assert tree_accuracy(multiclass, "a") is None


@pytest.fixture(scope="module")
def tiny_tree_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/zoo/tiny.yaml with a train, a val and a test member in every pretrained tree, so
    the per-tree and tree-expert runs have something to evaluate."""
    import yaml

    from nwa.zoo.cache import ensure_zoo
    from nwa.zoo.plan import CONFIG_DIR

    raw = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    vision = next(r for r in raw["recipes"] if r["init_args"]["name"] == "vision")
    vision["init_args"] |= {"split_within": "tree", "splits": [0.34, 0.33, 0.33]}
    raw["name"] = "tiny_trees"
    folder = tmp_path_factory.mktemp("tiny_trees")
    (folder / "tiny_trees.yaml").write_text(yaml.safe_dump(raw))
    return ensure_zoo(folder / "tiny_trees.yaml", workers=2, home=folder / "home")


@pytest.mark.slow
def test_bench_runs_reports_and_skips_finished_runs(tiny_tree_zoo, tmp_path):
    tiny_zoo = tiny_tree_zoo
    out = tmp_path / "bench"
    common = (
        *("--quick", "--vision-zoo", str(tiny_zoo), "--lora-zoo", str(tiny_zoo)),
        *("--out", str(out), "--seeds", "2", "--epochs", "3"),
        *("--property-zoo", "none", "--mixed-zoo", "none"),
        *("--methods", "ProbeX", "FlatMLP", "--tree-methods", "ProbeX"),
        *("--aligners", "ProbeX", "Dense self-attn"),
    )
    first = _bench(*common, cwd=tmp_path)
    assert "nwa bench (quick)" in first.stdout, first.stderr[-3000:]
    report = re.sub(r" +", " ", (out / "report.md").read_text())  # column padding aside
    planned = int(re.search(r"\((quick)\): (\d+) runs", first.stdout).group(2))
    finished = sorted(p.parent.name for p in out.glob("runs/*/result.json"))
    assert (
        len(finished) == planned == 2 * (4 + 4 * 2 + 1 + 3 + 2)
    )  # per seed: NWA (2 methods x 2 tasks), trees x 2 tasks, forest, experts, aligners
    ok = [json.loads((out / "runs" / k / RESULT).read_text()) for k in finished]
    assert [r.get("error") for r in ok if "error" in r] == []
    # numbers in the report are those of the runs made in this call
    probex = [
        r
        for r in ok
        if r["method"] == "ProbeX" and r["subset"] == "resnet trees" and r["task"] == "classes"
    ]
    assert len(probex) == 2
    assert probex[0]["best_val"] != probex[1]["best_val"], "seeds 0 and 1 trained the same model"
    expected = mean_std([r["metrics"]["test/acc"] for r in probex])
    row = next(line for line in report.splitlines() if line.startswith("| ProbeX |"))
    assert expected in row
    for fig in (
        "nwa_embeddings_trees",
        "weightnet_scatter",
        "weightnet_r2_radar",
        "probex_per_tree",
    ):
        assert (out / "figures" / f"{fig}.png").is_file()
    assert "zero-shot" in report
    # the aligners' results come from their evaluation callbacks
    aligners = [r for r in ok if r["task"] == "concept"]
    assert aligners and all(r["alignment"]["n_models"]["held_out"] > 0 for r in aligners)
    assert all(0.0 <= r["alignment"]["zero_shot_top1"] <= 1.0 for r in aligners)
    assert {r["method"] for r in aligners} == {"ProbeX", "Dense self-attn"}
    # each aligner read its own layers: cross-attention values, or self-attention values
    for r in aligners:
        layers = r["alignment"]["settings"]["layers"]
        want = ".attn1.to_v" if r["method"].endswith("self-attn") else ".attn2.to_v"
        assert layers and all(want in name for name in layers), (r["method"], layers)
    assert "| Dense self-attn | self-attention values |" in report
    assert "| ProbeX | cross-attention values |" in report
    assert "| tree | ProbeX on this tree alone | joint | this tree's expert |" in report
    # a rerun skips every finished run
    again = _bench(*common, cwd=tmp_path)
    assert f"{planned} runs over seeds [0, 1], {planned} already finished" in again.stdout
    assert "acc " not in again.stdout  # no run line printed
    # the runs are CSV logs that nwa.compare reads
    a, b = (out / "runs" / p["key"] for p in probex)  # folders holding one CSV log each
    assert log_dir(a).joinpath("metrics.csv").is_file()
    cmp = subprocess.run(
        [sys.executable, "-m", "nwa.compare", str(a), str(b), "--out", str(tmp_path / "cmp")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert cmp.returncode == 0, cmp.stderr[-2000:]
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "test/acc" in table and probex[0]["key"] in table and probex[1]["key"] in table


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_bench_workers_stop_when_the_bench_is_killed(tmp_path):
    parent = tmp_path / "parent.py"
    parent.write_text(
        textwrap.dedent(
            """
            import multiprocessing, os, signal, time
            from concurrent.futures import ProcessPoolExecutor
            from nwa.suite.execute import _worker_init

            def pid_after(seconds):
                # as in a training run, whose SIGTERM handlers (Lightning's) let it go on
                signal.signal(signal.SIGTERM, lambda *args: None)
                time.sleep(seconds)
                return os.getpid()

            if __name__ == "__main__":
                ctx = multiprocessing.get_context("spawn")
                pool = ProcessPoolExecutor(2, mp_context=ctx, initializer=_worker_init, initargs=(1,))
                pids = {f.result() for f in [pool.submit(pid_after, 2) for _ in range(2)]}
                print(" ".join(map(str, sorted(pids))), flush=True)
                time.sleep(600)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(parent)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    pids: list[int] = []
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        proc.terminate()  # SIGTERM to the parent alone, as `kill PID` sends it
        proc.wait(timeout=30)
        end = time.monotonic() + 30
        while any(_alive(p) for p in pids) and time.monotonic() < end:
            time.sleep(0.2)
        assert not any(_alive(p) for p in pids), "workers outlived the bench"
    finally:
        proc.kill()
        for pid in filter(_alive, pids):  # a failed run must not leave them behind either
            os.kill(pid, signal.SIGKILL)


def test_property_ceiling_tells_class_set_from_hyperparameters():
    """A property made by the class set alone is explained by the class-set oracle, not by the
    hyperparameters (benchmarks/property_ceiling.py's partial oracles)."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location(
        "property_ceiling", ROOT / "benchmarks" / "property_ceiling.py"
    )
    ceiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceiling)
    rng = np.random.default_rng(0)
    n, n_classes = 300, 10
    classes = [sorted(rng.choice(n_classes, 5, replace=False).tolist()) for _ in range(n)]
    hparams = [
        json.dumps(
            {"lr": float(10 ** rng.uniform(-4, -2)), "steps": int(rng.integers(50, 151)), "seed": i}
        )
        for i in range(n)
    ]
    df = pd.DataFrame({"classes": classes, "hparams": hparams})
    hard = rng.normal(0, 0.05, n_classes)
    y = np.array([0.9 - hard[c].sum() for c in classes]) + rng.normal(0, 0.005, n)
    by_classes, by_hparams = ceiling.recipe_features(df, n_classes)
    assert by_classes.shape == (n, n_classes + n_classes * (n_classes - 1) // 2)
    assert by_hparams.shape == (n, 2)  # the seed is no recipe choice
    fit = np.arange(n) < 240
    assert ceiling.ridge_r2(by_classes, y, fit, ~fit)[0] > 0.9
    assert ceiling.ridge_r2(by_hparams, y, fit, ~fit)[0] < 0.1
    both = np.column_stack([by_classes, by_hparams])
    r2, tau = ceiling.ridge_r2(both, y, fit, ~fit)
    assert r2 > 0.9 and tau > 0.7


def test_a_report_with_no_run_of_the_main_plan_is_written(tmp_path):
    # python -m nwa.bench --tasks archeology plans only the archeology section's runs
    path, df = write_report(tmp_path, [], {"suite": "full"})
    assert df.empty and "status" in df and "task" in df
    assert path.read_text().startswith("# nwa benchmark report")


def test_the_archeology_section_alone_builds_no_other_zoo(
    tiny_mixed_zoo, tmp_path, monkeypatch, capsys
):
    # before: --tasks archeology built default_vision and default_lora (an hour on 2 cores)
    # before planning the mixed zoo's runs
    from nwa.bench import main

    monkeypatch.setenv("NWA_HOME", str(tmp_path / "home"))
    args = ["--tasks", "archeology", "--mixed-zoo", str(tiny_mixed_zoo), "--seeds", "2"]
    assert main([*args, "--property-zoo", "none", "--out", str(tmp_path / "b"), "--dry-run"]) == 0
    keys = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert sorted(keys) == sorted(
        f"archeology-{m}-mixed-s{s}"
        for m in ("NWPA", "WeightNet", "StatNN-GBT", "PCA")
        for s in (0, 1)
    )
    assert not (tmp_path / "home" / "zoos").exists()


def test_unknown_aligners_and_methods_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from nwa.bench import main

    monkeypatch.setenv("NWA_HOME", str(tmp_path / "home"))
    for option, name in (("--aligners", "CLIP"), ("--methods", "Oracle")):
        assert main([option, name, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
        assert f"unknown {option[2:]} ['{name}']" in capsys.readouterr().err
    assert not (tmp_path / "home").exists() and not (tmp_path / "out").exists()


def test_each_task_builds_only_the_zoo_it_reads(tiny_zoo, tmp_path, monkeypatch, capsys):
    # before: --tasks classes also built default_lora (5 minutes) and --tasks concept built
    # default_vision (25 minutes)
    from nwa.bench import main

    monkeypatch.setenv("NWA_HOME", str(tmp_path / "home"))
    common = ["--seeds", "1", "--property-zoo", "none", "--mixed-zoo", "none", "--dry-run"]
    for task, zoo_option in (("classes", "--vision-zoo"), ("concept", "--lora-zoo")):
        assert main(["--tasks", task, zoo_option, str(tiny_zoo), *common]) == 0
        out = capsys.readouterr().out.splitlines()
        keys = [line.split()[0] for line in out if line.strip() and not line.startswith("nwa:")]
        assert keys and all(k.startswith(f"{task}-") for k in keys), keys
    assert not (tmp_path / "home" / "zoos").exists()


def test_the_full_suite_is_sized_to_two_hours(tiny_zoo, tmp_path, monkeypatch, capsys):
    # before: every method on the 256-wide ResNet trees (NWPA alone more than 8 min for 2
    # epochs there), property regression on the trees and per tree, and the archeology section
    # (80 min): well over 2 hours on 2 cores
    from nwa.bench import main

    full = SUITES["full"]
    runs = plan(full, "Z", "L", TREES, LAYERS)
    nwa = {r.method for r in runs if r.subset == "resnet trees" and r.method != "ProbeX experts"}
    assert nwa == {"ProbeX", "StatNN-GBT", "StatNN-MLP", "PCA"}
    assert {r.task for r in runs} == {"classes", "concept"}
    per_tree = {(r.method, r.subset) for r in runs if r.subset in TREES}
    assert per_tree == {(m, t) for m in ("ProbeX", "Dense", "StatNN-GBT") for t in TREES}

    # by default the property section runs (before: skipped unless --property-zoo was given) and
    # the archeology section only when asked for
    import nwa.suite.archeology
    import nwa.suite.properties

    monkeypatch.setenv("NWA_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(nwa.suite.archeology.ZOOS, "full", str(tiny_zoo))
    asked = []

    def property_runs(suite, zoo, methods):
        asked.append(zoo)
        return [RunSpec("properties", "StatNN-GBT", "property zoo", 0, ("--zoo", "P"))], tiny_zoo

    monkeypatch.setattr(nwa.suite.properties, "plan_runs", property_runs)
    zoos = ["--vision-zoo", str(tiny_zoo), "--lora-zoo", str(tiny_zoo)]
    assert main([*zoos, "--seeds", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert asked == [None] and "properties-StatNN-GBT-property_zoo-s0" in out
    assert "nwpa_mixed" not in out
    assert main(["--tasks", "archeology", "--seeds", "1", "--dry-run"]) == 0
    assert "nwpa_mixed" in capsys.readouterr().out


def test_an_interrupted_bench_says_how_to_resume_in_one_line(tmp_path, monkeypatch, capsys):
    import nwa.zoo.cache
    from nwa.bench import main
    from nwa.zoo.build import Terminated

    def stopped(*args, **kwargs):
        raise Terminated(signal.SIGTERM)  # as the zoo builder raises it on SIGTERM

    monkeypatch.setattr(nwa.zoo.cache, "zoo_path", stopped)
    assert main(["--tasks", "classes", "--out", str(tmp_path / "b")]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted (SIGTERM)" in err[0] and "resume" in err[0], err


@pytest.mark.slow
def test_a_worker_killed_for_memory_fails_its_run_and_the_bench_goes_on(tiny_zoo, tmp_path):
    # before: the broken process pool ended the bench with a traceback, the other runs not run
    from nwa.suite.execute import run_all

    args = [
        *("--config", str(ROOT / "configs" / "probex_vision.yaml")),
        *("--data.init_args.zoo", str(tiny_zoo), "--trainer.max_epochs", "1"),
    ]
    killed = RunSpec(
        "classes", "ProbeX", "killed", 0, (*args, "--trainer.callbacks+=tests.pacing.Killed")
    )
    after = [RunSpec("classes", "ProbeX", f"after-{i}", i, tuple(args)) for i in range(2)]
    results = {r["subset"]: r for r in run_all([killed, *after], tmp_path, jobs=2)}
    assert set(results) == {"killed", "after-0", "after-1"}
    assert "worker died" in results["killed"]["error"]
    # the runs that died with the pool ran again in a new one
    for key in ("after-0", "after-1"):
        assert "error" not in results[key], results[key].get("error")
        assert 0 <= results[key]["metrics"]["test/acc"] <= 1


def test_probex_runs_on_vit_trees_take_the_familys_ranks():
    # ProbeX on 256 x 256 ViT matrices: ranks 32 keep it under 1/20 of Dense's parameters
    runs = plan(SUITES["quick"], "Z", "L", TREES, LAYERS)
    for r in runs:
        on_vit = "vit_*" in r.args
        ranked = "--model.init_args.encoder.init_args.rank_u" in r.args
        probex = r.method in ("ProbeX", "ProbeX experts")
        assert ranked == (on_vit and probex), (r.key, r.args)
    assert any("vit_*" in r.args and r.method == "ProbeX experts" for r in runs)


def test_weightnet_section_reads_the_property_zoo_when_the_trees_have_no_property_runs(tmp_path):
    # the full suite runs no property regression on the ResNet trees: before, section 2 was
    # then a table of dashes
    import pandas as pd

    from nwa.suite.properties import SUBSET
    from nwa.suite.report_weightnet import weightnet_section

    rows = [
        {"task": "properties", "method": m, "subset": SUBSET, "seed": s, "status": "done"}
        | {"key": f"{m}-{s}", "mae_test_acc": mae + s / 100, "rmse_test_acc": 0.1}
        | {"r2_test_acc": 0.7, "mae": mae, "rmse": 0.1, "r2": 0.7}
        for m, mae in (("WeightNet", 0.05), ("FlatMLP", 0.2))
        for s in (0, 1)
    ]
    rows.append({"task": "classes", "method": "WeightNet", "subset": "resnet trees"})
    lines = weightnet_section(tmp_path, pd.DataFrame(rows), tmp_path)
    text = "\n".join(lines)
    assert "(property regression, property zoo)" in lines[0]
    assert "| test_acc | WeightNet | 0.0550 ± 0.0071 |" in re.sub(" +", " ", text)
    assert "gen_gap" not in text  # only the property the zoo's runs predict
