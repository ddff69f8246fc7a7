"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# --- zoo builder fixtures (tests/test_zoo_build.py) --------------------------------------------


def _tiny_vision_config() -> dict:
    """configs/zoo/tiny.yaml restricted to its discriminative (VisionRecipe) recipes."""
    import yaml

    from nwa.zoo.plan import CONFIG_DIR

    raw = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    raw["recipes"] = [r for r in raw["recipes"] if r["class_path"] == "nwa.zoo.vision.VisionRecipe"]
    raw["name"] = "tiny_vision"
    return raw


@pytest.fixture
def tiny_vision_config() -> dict:
    """The discriminative part of configs/zoo/tiny.yaml, as a config dict (fresh copy per use)."""
    import copy

    return copy.deepcopy(_tiny_vision_config())


@pytest.fixture(scope="session")
def tiny_vision_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny vision zoo, built once per session through ``ensure_zoo`` (1 thread)."""
    import yaml

    from nwa.zoo.cache import ensure_zoo

    folder = tmp_path_factory.mktemp("zoo_build")
    config = folder / "tiny_vision.yaml"
    config.write_text(yaml.safe_dump(_tiny_vision_config()))
    return ensure_zoo(config, workers=1, home=folder / "nwa_home")


# --- the whole tiny zoo (both splits), for recipe and end-to-end tests ------------------------


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/zoo/tiny.yaml built once per session: vision trees, a forest and LoRA members."""
    from nwa.zoo.cache import ensure_zoo

    return ensure_zoo("tiny", workers=2, home=tmp_path_factory.mktemp("nwa_home_tiny"))
