"""python -m nwa.fit / nwa.test end to end: configs, overrides, loggers, checkpoints, DDP, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from nwa.fit import run as fit
from tests.zoo_factory import write_chain_zoo, write_mixed_zoo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chain_zoo(tmp_path_factory):
    return write_chain_zoo(tmp_path_factory.mktemp("cli-chains"))


def write_config(
    path: Path, zoo: Path, encoder: str = "nwa.metanets.ProbeX", init: dict | None = None, **data
) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 2, "enable_progress_bar": False, "log_every_n_steps": 1},
        "model": {
            "class_path": "nwa.lit.WeightModule",
            "init_args": {
                "encoder": {
                    "class_path": encoder,
                    "init_args": init or {"rank_u": 4, "rank_v": 4, "dim": 8},
                }
            },
        },
        "data": {
            "class_path": "nwa.data.ModelZooDataModule",
            "init_args": {"zoo": str(zoo), "layers": "fc.weight", "batch_size": 8, **data},
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def csv(tmp: Path) -> list[str]:
    return [
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(tmp),
    ]


def test_fit_with_csv_logger_saves_best_checkpoint_with_config(chain_zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "probex.yaml", chain_zoo.root)
    fit(["--config", str(cfg), *csv(tmp_path), "--trainer.default_root_dir", str(tmp_path)])
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    for key in (
        "train/loss",
        "val/acc",
        "val/exact",
        "val/f1",
        "test/acc",
        "test/precision",
        "test/recall",
    ):
        assert key in metrics
    best = next(tmp_path.rglob("best-*.ckpt"))
    ckpt = torch.load(best, weights_only=True)  # plain containers only: no unpickling of code
    assert "nwa.metanets.ProbeX" in ckpt["nwa_config"]
    assert ckpt["hyper_parameters"]["targets"]["kind"] == "multilabel"
    assert next(tmp_path.rglob("config.yaml")).is_file()


def test_configs_compose_and_cli_overrides(chain_zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = write_config(tmp_path / "base.yaml", chain_zoo.root)
    (tmp_path / "regression.yaml").write_text(
        yaml.safe_dump(
            {"data": {"init_args": {"target": "properties", "properties": ["test_acc", "gen_gap"]}}}
        )
    )
    fit(
        [
            "--config",
            str(base),
            "--config",
            str(tmp_path / "regression.yaml"),
            "--trainer.max_epochs",
            "1",
            *csv(tmp_path),
        ]
    )
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    assert (
        "test/r2_test_acc" in metrics
        and "test/kendall_gen_gap" in metrics
        and "test/rmse" in metrics
    )


@pytest.mark.parametrize(
    ("encoder", "init", "data"),
    [
        ("nwa.metanets.Dense", {"dim": 8}, {}),
        ("nwa.metanets.FlatMLP", {"hidden": [16, 8]}, {"input": "flat", "layers": "*"}),
        (
            "nwa.metanets.PCAEncoder",
            {"n_components": 4, "dim": 8},
            {"input": "flat", "layers": "*"},
        ),
        ("nwa.metanets.StatNNMLP", {"hidden": [16]}, {"input": "stats", "layers": "*"}),
        (
            "nwa.metanets.NWPA",
            {
                "hidden": 8,
                "layers": 1,
                "layer": {
                    "class_path": "nwa.metanets.graph_layers.WeightAttention",
                    "init_args": {"heads": 2, "edge_channels": 1},
                },
            },
            {"input": "graph", "layers": "*.weight"},
        ),
        (
            "nwa.metanets.NWPA",
            {
                "hidden": 8,
                "layers": 1,
                "layer": {
                    "class_path": "nwa.metanets.graph_layers.PyGConv",
                    "init_args": {"conv": "gine"},
                },
            },
            {"input": "graph", "layers": "*", "permute_augment": True},
        ),
        (
            "nwa.metanets.WeightNet",
            {"d_model": 8, "heads": 2},
            {"input": "chain", "layers": "*.weight", "permute_augment": True},
        ),
    ],
)
def test_every_encoder_trains_through_the_cli(
    chain_zoo, tmp_path, monkeypatch, encoder, init, data
):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "c.yaml", chain_zoo.root, encoder, init, **data)
    fit(["--config", str(cfg), "--trainer.fast_dev_run", "true", *csv(tmp_path)])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("encoder", "init", "target"),
    [
        ("nwa.metanets.NWPA", {"hidden": 8, "layers": 1}, "labels"),
        ("nwa.metanets.WeightNet", {"d_model": 8}, "properties"),
    ],
)
def test_graph_encoders_train_on_a_mixed_zoo(tmp_path, monkeypatch, encoder, init, target):
    """MLPs, CNNs, ResNets and ViTs in one zoo, batched together; with ``target: labels`` one
    head per label (the family as classes, the accuracy as a value)."""
    monkeypatch.chdir(tmp_path)
    zoo = write_mixed_zoo(tmp_path / "zoo")
    props = ["family", "test_acc"] if target == "labels" else ["test_acc"]
    data = {"input": "graph", "layers": "*", "target": target, "properties": props}
    cfg = write_config(tmp_path / "c.yaml", zoo.root, encoder, init, **data)
    _, results = fit(["--config", str(cfg), "--trainer.max_epochs", "1", *csv(tmp_path)])
    want = ["test/family_acc", "test/test_acc_r2"] if target == "labels" else ["test/r2"]
    assert all(k in results[0] for k in want), sorted(results[0])


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_wandb_offline_by_default_and_test_command(chain_zoo, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", chain_zoo.root)
    r = run_cli(
        [
            "nwa.fit",
            "--config",
            str(cfg),
            "--trainer.max_epochs",
            "1",
            "--run_name",
            "probex-chains",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    # everything of the run in its folder runs/<run_name>/<id>, the W&B id its folder's name
    (run,) = tmp_path.glob("runs/probex-chains/*")
    run_log = next(run.glob(f"wandb/offline-run-*/run-{run.name}.wandb")).read_bytes()
    assert (
        b"nwa.metanets.ProbeX" in run_log and b"probex-chains" in run_log
    )  # full config and run name
    best = next(run.glob("checkpoints/best-*.ckpt"))
    assert "ProbeX" in (best.parent.parent / "config.yaml").read_text()
    r = run_cli(
        ["nwa.test", "--config", str(cfg), "--ckpt_path", str(best), "--trainer.logger", "false"],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "test/acc" in r.stdout
    # Without --config, the config saved in the checkpoint rebuilds the run.
    r = run_cli(["nwa.test", "--ckpt_path", str(best), "--trainer.logger", "false"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "test/acc" in r.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--data.init_args.zoo", "/nonexistent/zoo"], "no such zoo"),
        (["--data.init_args.layers", "fc.kernel"], "matches no tensor"),
        (
            ["--data.init_args.target", "properties", "--data.init_args.properties", "[sharpness]"],
            "no label 'sharpness'",
        ),
    ],
)
@pytest.mark.slow
def test_bad_recipe_fails_at_start_with_one_line(chain_zoo, tmp_path, override, message):
    cfg = write_config(tmp_path / "c.yaml", chain_zoo.root)
    r = run_cli(["nwa.fit", "--config", str(cfg), *override], tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing started


@pytest.mark.slow
def test_unbuildable_graph_fails_at_start_with_one_line(tmp_path):
    zoo = write_mixed_zoo(tmp_path / "zoo")
    cfg = write_config(
        tmp_path / "c.yaml", zoo.root, "nwa.metanets.NWPA", {"hidden": 8}, input="graph"
    )
    r = run_cli(
        ["nwa.fit", "--config", str(cfg), "--data.init_args.layers", "[re:.*weight]"], tmp_path
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("nwa: ") and ".safetensors" in line and "cuts a block" in line


@pytest.mark.slow
def test_ddp_two_cpu_processes(chain_zoo, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", chain_zoo.root)
    args = [
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "1",
    ]
    r = run_cli(["nwa.fit", "--config", str(cfg), *args, *csv(tmp_path)], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test/acc" in r.stdout
    assert next(tmp_path.rglob("best-*.ckpt")).is_file()


@pytest.mark.parametrize("logger", ["wandb", "csv", "none"])
def test_default_root_dir_holds_checkpoints_and_logs_with_every_logger(
    chain_zoo, tmp_path, monkeypatch, logger
):
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = write_config(tmp_path / "c.yaml", chain_zoo.root)
    chosen = {
        "wandb": [],
        "csv": ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger"],
        "none": ["--trainer.logger", "false"],
    }[logger]
    fit(["--config", str(cfg), *chosen, "--trainer.default_root_dir", str(out)])
    if logger == "wandb":
        import wandb

        wandb.finish()
    assert list(cwd.iterdir()) == []  # nothing in the current folder
    (run,) = out.glob("c/*")  # <default_root_dir>/<run_name>/<id>
    assert (run / "run.json").is_file() and (run / "config.yaml").is_file()
    assert {p.name for p in (run / "checkpoints").iterdir()} >= {"last.ckpt"}
    logs = {"wandb": f"wandb/offline-run-*-{run.name}/run-{run.name}.wandb", "csv": "metrics.csv"}
    if logger in logs:
        assert list(run.glob(logs[logger])), sorted(p.name for p in run.rglob("*"))


def _read_only(folder: Path, command: list[str]) -> list[str]:
    """``command`` run with ``folder`` read-only (a read-only mount for root, else chmod)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return command
    line = " ".join(f"'{c}'" for c in command)
    return ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o ro tmpfs '{folder}' && exec {line}"]


@pytest.mark.parametrize("where", ["NWA_RUNS", "default_root_dir"])
@pytest.mark.slow
def test_hostile_trainer_settings_end_with_one_line(chain_zoo, tmp_path, where):
    cfg = write_config(tmp_path / "c.yaml", chain_zoo.root)
    locked = tmp_path / "locked"
    args = [sys.executable, "-m", "nwa.fit", "--config", str(cfg)]
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    if where == "NWA_RUNS":
        env["NWA_RUNS"] = str(locked)
    else:
        args += ["--trainer.default_root_dir", str(locked)]
    r = subprocess.run(
        _read_only(locked, args), cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.startswith("nwa:")]
    assert len(lines) == 1 and "cannot write the run folder" in lines[0] and str(locked) in lines[0]
    assert "Traceback" not in r.stderr and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--trainer.max_epochs", "-5"], "trainer.max_epochs must be -1 (no limit) or"),
        (["--trainer.max_steps", "-2"], "trainer.max_steps must be -1 (no limit) or"),
        (["--trainer.val_check_interval", "-1.0"], "trainer: You have passed invalid value -1.0"),
    ],
)
def test_bad_trainer_values_fail_before_anything_is_written(
    chain_zoo, tmp_path, monkeypatch, capsys, override, message
):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "c.yaml", chain_zoo.root)
    with pytest.raises(SystemExit) as exit:
        fit(["--config", str(cfg), *override])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err
    assert len([x for x in err.splitlines() if x.startswith("nwa:")]) == 1
    assert not (tmp_path / "runs").exists()


def test_checkpointing_off_trains_says_it_cannot_resume_and_tests_final_weights(
    chain_zoo, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "c.yaml", chain_zoo.root)
    off = ["--trainer.enable_checkpointing", "false"]
    _, results = fit(["--config", str(cfg), *off, *csv(tmp_path)])
    out = capsys.readouterr().out
    assert "nwa: checkpointing is off" in out and "cannot be resumed" in out
    assert "test/acc" in results[0] and not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    ("encoder", "init", "data_input", "names"),
    [
        ("nwa.metanets.ProbeX", None, "flat", ("ProbeX", "'matrix'", "'flat'")),
        ("nwa.metanets.FlatMLP", {"hidden": [8]}, "graph", ("FlatMLP", "'flat'", "'graph'")),
        ("nwa.metanets.NWPA", {"hidden": 8}, "stats", ("NWPA", "'graph' or 'chain'", "'stats'")),
    ],
)
def test_encoder_input_mismatch_is_one_line_before_reading(
    tmp_path, monkeypatch, capsys, encoder, init, data_input, names
):
    monkeypatch.chdir(tmp_path)
    # the zoo does not exist: the pairing is checked before anything is read
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "no-zoo", encoder, init, input=data_input)
    with pytest.raises(SystemExit) as e:
        fit(["--config", str(cfg), "--trainer.fast_dev_run", "true", *csv(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert "data.init_args.input" in err and all(n in err for n in names), err
    assert "no-zoo" not in err and "Traceback" not in err


def test_every_encoder_declares_its_inputs():
    import nwa.metanets as metanets
    from nwa.data.reading import INPUTS

    for name in metanets.__all__:
        obj = getattr(metanets, name)
        if isinstance(obj, type):
            assert obj.inputs and set(obj.inputs) <= set(INPUTS), name
