"""environment.yml: the pinned CUDA builds of torch, nwa without test extras, and the
alternative CUDA blocks consistent with the pins."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_pins_torch_and_installs_nwa_without_test_extras():
    text = (ROOT / "environment.yml").read_text()
    env = yaml.safe_load(text)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == ["torch==2.14.1", "torchvision==0.29.1", "-e ."]
    # the commented alternative builds carry the same versions, from PyTorch's index
    alt = re.findall(r"#\s+- (torch\S*)==(\S+)", text)
    assert alt == [("torch", "2.14.1+cu128"), ("torchvision", "0.29.1+cu128")]
    assert "--extra-index-url https://download.pytorch.org/whl/cu128" in text
    readme = (ROOT / "README.md").read_text()
    assert "torch==2.14.1 torchvision==0.29.1" in readme
