"""A zoo that must be built into an NWA_HOME that cannot be written: one line, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nwa.errors import ConfigError
from nwa.zoo.cache import ensure_zoo

REPO = Path(__file__).resolve().parents[1]


def test_ensure_zoo_in_an_unwritable_home_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot build zoo 'tiny' here .*set NWA_HOME") as err:
        ensure_zoo("tiny", home=blocker / "home")
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare for a read-only mount")
def test_zoo_build_on_a_read_only_file_system(tmp_path):
    """A real read-only mount (root ignores permission bits, not a read-only file system)."""
    home = tmp_path / "home"
    home.mkdir()
    script = (
        f"mount --bind {home} {home} && mount -o remount,bind,ro {home} && "
        f"exec {sys.executable} -m nwa.zoo build --config tiny --quiet"
    )
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -m is not permitted here")
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO), "NWA_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and "Read-only file system" in r.stderr, r.stderr
    assert list(home.iterdir()) == []
