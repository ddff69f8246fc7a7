"""A tiny mixed-architecture zoo (nwa.zoo.mixed), built in seconds, for the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_mixed_config() -> dict[str, Any]:
    """configs/zoo/small_mixed.yaml shrunk: 4 members per family (2 train, 1 val, 1 test)."""
    import yaml

    from nwa.zoo.plan import CONFIG_DIR

    raw = yaml.safe_load((CONFIG_DIR / "small_mixed.yaml").read_text())
    raw["name"] = "tiny_mixed"
    raw["recipes"][0]["init_args"] |= {
        "source_options": {"n_train": 800, "n_test": 200},
        "members_per_family": 4,
        "steps": [4, 8],
        "train_images": [100, 200],
        "val_images": 100,
        "eval_images": 100,
    }
    return raw


def build_tiny_mixed(folder: Path) -> Path:
    """Build the tiny mixed zoo under ``folder`` (its own NWA home); returns the zoo folder."""
    import yaml

    from nwa.zoo.cache import ensure_zoo

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "tiny_mixed.yaml"
    config.write_text(yaml.safe_dump(tiny_mixed_config()))
    return ensure_zoo(config, workers=2, home=folder / "nwa_home")
