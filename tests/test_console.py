"""The ``nwa`` console script: one subcommand per ``python -m nwa.<command>`` main."""

from __future__ import annotations

import configparser
import importlib.util
import subprocess
import sys
from pathlib import Path

from nwa.__main__ import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def nwa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nwa", *args], capture_output=True, text=True, timeout=120
    )


def test_setup_declares_the_console_script():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = cfg["options.entry_points"]["console_scripts"].split("\n")
    assert "nwa = nwa.__main__:main" in [s.strip() for s in scripts]


def test_help_lists_every_command_and_each_has_a_main():
    out = nwa("--help")
    assert out.returncode == 0
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS)
    assert set(COMMANDS) >= {"fit", "test", "predict", "zoo", "weights", "bench", "compare"}
    for module, _ in COMMANDS.values():
        spec = importlib.util.find_spec(module)
        assert spec is not None, module
        if spec.submodule_search_locations:  # a package runs its __main__
            assert importlib.util.find_spec(f"{module}.__main__") is not None, module


def test_subcommand_is_the_module_main():
    via_script = nwa("zoo", "--help")
    via_module = subprocess.run(
        [sys.executable, "-m", "nwa.zoo", "--help"], capture_output=True, text=True, timeout=120
    )
    assert via_script.returncode == 0 and via_script.stdout == via_module.stdout
    assert "build" in via_script.stdout


def test_unknown_command_is_one_line():
    out = nwa("trian")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "unknown command 'trian'" in out.stderr and "fit" in out.stderr
