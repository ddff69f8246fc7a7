"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu``-marked tests run only where CUDA is present; elsewhere they are skipped."""
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu:
        item.add_marker(skip)


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


# --- a Hugging Face cache holding real-layout models, for offline Hub-id tests -----------------

SD_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # the id configs/zoo/sd_lora.yaml names


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with a tiny random SD-layout pipeline under SD 1.5's id and a random timm resnet18
    (1,000-class head) under ``timm/resnet18.a1_in1k``."""
    import torch
    from safetensors.torch import save_file

    from tests.hf_cache import add_repo
    from tests.tiny_pipeline import make_tiny_pipeline

    root = tmp_path_factory.mktemp("hf")
    add_repo(root / "hub", SD_REPO, make_tiny_pipeline(root / "pipeline"))
    import timm

    torch.manual_seed(0)
    state = timm.create_model("resnet18", num_classes=1000).state_dict()
    (root / "resnet18").mkdir()
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(root / "resnet18" / "model.safetensors")
    )
    add_repo(root / "hub", "timm/resnet18.a1_in1k", root / "resnet18")
    return root / "hub"


@pytest.fixture
def offline_hub(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``huggingface_hub`` reads :func:`hub_cache` only (HF_HUB_OFFLINE=1)."""
    from tests.hf_cache import use_offline_cache

    use_offline_cache(monkeypatch, hub_cache)
    return hub_cache


# --- a tiny mixed-architecture zoo (MLP, CNN, ResNet, ViT), for the archeology tests ----------


@pytest.fixture(scope="session")
def tiny_mixed_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests.mixed_zoo's tiny zoo, built once per session."""
    from tests.mixed_zoo import build_tiny_mixed

    return build_tiny_mixed(tmp_path_factory.mktemp("mixed_zoo"))
