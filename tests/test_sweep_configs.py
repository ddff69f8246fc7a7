"""configs/sweeps/*.yaml: valid W&B sweep configs whose parameters are real arguments of their
recipe, and the agent job script.

The schema is the one ``wandb sweep`` validates against (``sweeps/config/schema.json`` of W&B's
``sweeps`` package 0.3.0, MIT licence, copied to ``tests/data``: the package pins numpy < 2, so
it is not installed here).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator

from nwa.runs import metric_goal

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
SCHEMA = json.loads((Path(__file__).parent / "data" / "wandb_sweep_schema.json").read_text())


def test_every_method_has_a_sweep():
    assert {p.stem for p in SWEEPS} >= {"probex", "dense", "statnn", "nwpa", "layers"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_config_is_valid_and_runs_nwa_fit_with_its_recipe(path):
    config = yaml.safe_load(path.read_text())
    errors = [e.message for e in Draft7Validator(SCHEMA).iter_errors(config)]
    assert errors == []
    command = config["command"]
    assert command[:4] == ["${env}", "${interpreter}", "-m", "nwa.fit"] and command[-1] == "${args}"
    recipe = ROOT / command[command.index("--config") + 1]
    assert recipe.is_file()
    goal = {"max": "maximize", "min": "minimize"}[metric_goal(config["metric"]["name"])]
    assert config["metric"]["goal"] == goal and config["metric"]["name"].startswith("val/")


def _parse(recipe: str, args: list[str]) -> dict:
    """The recipe's config as ``python -m nwa.fit`` parses it with ``args`` (nothing built)."""
    from nwa.sweep import parse_recipe

    return parse_recipe(["--config", str(ROOT / recipe), *args]).as_dict()


def _value(spec: dict) -> object:
    if "values" in spec:
        return spec["values"][-1]
    return spec["max"]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_parameter_is_an_argument_of_the_recipe(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = yaml.safe_load(path.read_text())
    recipe = config["command"][config["command"].index("--config") + 1]
    # what the agent's ${args} expands to: --key=value for each sampled parameter
    args = [f"--{key}={_value(spec)}" for key, spec in config["parameters"].items()]
    parsed = _parse(recipe, args)
    for key, spec in config["parameters"].items():
        node = parsed
        for part in key.split("."):
            node = node[part]
        assert node == _value(spec), key
    with pytest.raises(SystemExit):  # the parser does reject a key the recipe does not have
        _parse(recipe, ["--model.init_args.not_an_argument=1"])


def test_wandb_sweep_cli_and_agent_job_script():
    env = dict(os.environ, WANDB_MODE="offline")
    r = subprocess.run(
        [sys.executable, "-m", "wandb", "sweep", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0 and "CONFIG_YAML_OR_SWEEP_ID" in r.stdout.upper(), r.stderr
    script = (ROOT / "jobs" / "sweep_agent.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "jobs" / "sweep_agent.sbatch")]).returncode == 0
    agent = next(line for line in script.splitlines() if line.startswith("srun "))
    assert shlex.split(agent)[:4] == ["srun", "wandb", "agent", "--count"]
