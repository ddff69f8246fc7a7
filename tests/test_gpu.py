"""The GPU paths: a recipe trained on CUDA, the zoo builder on ``device: auto``.

Marked ``gpu``: skipped where no CUDA device is present (see ``tests/conftest.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from nwa.fit import run as fit

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]
N_MODELS = 2 * 2  # the tiny vision recipe's 2 architectures x 2 members (roots are not rows)


def test_recipe_fits_on_cuda(tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli, results = fit(
        [
            *("--config", str(ROOT / "configs" / "probex_vision.yaml")),
            *("--data.init_args.zoo", str(tiny_zoo)),
            *("--trainer.accelerator", "gpu", "--trainer.devices", "1"),
            *("--trainer.max_epochs", "2", "--trainer.default_root_dir", str(tmp_path)),
            *("--trainer.logger", "lightning.pytorch.loggers.CSVLogger"),
            *("--trainer.logger.save_dir", str(tmp_path)),
        ]
    )
    assert cli.trainer.strategy.root_device.type == "cuda"
    assert cli.trainer.current_epoch == 2 and list(tmp_path.rglob("*.ckpt"))
    metrics = results[0]
    assert metrics and all(math.isfinite(v) for v in metrics.values())


def test_zoo_builder_on_device_auto_trains_on_cuda(tiny_vision_config, tmp_path, monkeypatch):
    from nwa.zoo import vision
    from nwa.zoo.build import build

    used: list[torch.device] = []
    pick = vision.pick_device

    def spy(name: str) -> torch.device:
        used.append(pick(name))
        return used[-1]

    monkeypatch.setattr(vision, "pick_device", spy)
    config = tiny_vision_config
    config["recipes"] = config["recipes"][:1]
    config["recipes"][0]["init_args"].update(device="auto", roots_per_arch=1, members_per_tree=2)
    zoo = build(config, out=tmp_path / "zoo", workers=1).zoo  # one worker: in this process
    assert used and {d.type for d in used} == {"cuda"}
    assert zoo is not None and len(zoo.table) == N_MODELS
    assert zoo.meta.build["device"] == "auto" and zoo.meta.build["deterministic"] is False
    for model in zoo.table["id"]:
        with zoo.open_model(model) as weights:
            assert all(torch.isfinite(weights.get(n)).all() for n in weights.names())
