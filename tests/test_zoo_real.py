"""Real architectures in the zoo builder: timm models and their roots' weights, and a real diffusers
pipeline as a LoRA zoo's root; the shipped real-scale configs run at toy scale by overrides only,
and ProbeX trains on what they build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from nwa.errors import ConfigError
from nwa.fit import run as fit
from nwa.zoo.build import build
from nwa.zoo.classifiers import build_model
from nwa.zoo.manifest import Zoo
from nwa.zoo.roots import root_model
from nwa.zoo.vision import VisionRecipe

REPO = Path(__file__).resolve().parents[1]


def shipped(name: str, **overrides: Any) -> dict[str, Any]:
    """``configs/zoo/<name>.yaml`` with ``init_args`` overrides (a toy-scale copy of it)."""
    raw = yaml.safe_load((REPO / "configs" / "zoo" / f"{name}.yaml").read_text())
    raw["recipes"][0]["init_args"].update(overrides)
    raw["name"] = f"{name}_toy"
    return raw


def train_probex(config: str, zoo: Path, tmp_path: Path, *args: str) -> dict[str, float]:
    """``python -m nwa.fit`` on ``zoo`` for two epochs; the test metrics."""
    _, results = fit(
        [
            *("--config", str(REPO / "configs" / config)),
            *("--data.init_args.zoo", str(zoo), "--trainer.max_epochs", "2"),
            *("--trainer.default_root_dir", str(tmp_path)),
            *("--trainer.logger", "lightning.pytorch.loggers.CSVLogger"),
            *("--trainer.logger.save_dir", str(tmp_path)),
            *args,
        ]
    )
    return results[0]


def vision_probex(zoo: Path, tmp_path: Path, arch: str, layer: str) -> float:
    """configs/probex_vision.yaml on every tree of ``zoo``'s ``arch`` models: test accuracy."""
    args = ("--data.init_args.trees", '["*"]', "--data.init_args.arch", arch)
    layers = ("--data.init_args.layers", layer, "--data.init_args.batch_size", "2")
    return train_probex("probex_vision.yaml", zoo, tmp_path, *args, *layers)["test/acc"]


# -- roots: random, timm, Hub ids, files ----------------------------------------------------------


def test_any_timm_name_builds_at_the_asked_size() -> None:
    vit = build_model("vit_small_patch16_224", 10, 3, 32)
    assert vit.blocks[0].mlp.fc1.weight.shape == (1536, 384) and vit.nwa_img_size == 32
    conv = build_model("convnext_atto", 7, 1, 40)
    assert conv.get_classifier().out_features == 7 and conv.nwa_mean == (pytest.approx(0.449),)
    with pytest.raises(
        ConfigError, match="unknown architecture 'resnet_gargantuan'.*timm has e.g."
    ):
        build_model("resnet_gargantuan", 10, 3, 32)


def test_root_weights_from_a_file_keep_all_but_a_mismatched_head(tmp_path: Path) -> None:
    source = build_model("convnext_atto", 1000, 3, 32).state_dict()
    save_file({k: v.contiguous() for k, v in source.items()}, str(tmp_path / "w.safetensors"))
    model, info = root_model("convnext_atto", str(tmp_path / "w.safetensors"), 10, 3, 32)
    assert info["head"] == "re-initialised (1000 -> 10 classes)"
    assert torch.equal(model.stem[0].weight, source["stem.0.weight"])
    gray, _ = root_model("convnext_atto", str(tmp_path / "w.safetensors"), 10, 1, 32)
    assert gray.stem[0].weight.shape[1] == 1  # timm adapted the first convolution
    row = build_model("resnet_micro", 7, 3, 28).state_dict()
    save_file({k: v.contiguous() for k, v in row.items()}, str(tmp_path / "row.safetensors"))
    model, info = root_model("resnet_micro", str(tmp_path / "row.safetensors"), 10, 3, 28)
    assert info["head"] == "re-initialised (7 -> 10 classes)"
    assert torch.equal(model.conv1.weight, row["conv1.weight"])
    del row["layer1.0.conv1.weight"]
    save_file({k: v.contiguous() for k, v in row.items()}, str(tmp_path / "cut.safetensors"))
    with pytest.raises(
        ConfigError, match=r"cut.safetensors: has no tensor 'layer1.0.conv1.weight'"
    ):
        root_model("resnet_micro", str(tmp_path / "cut.safetensors"), 10, 3, 28)


def test_vit_weights_from_another_size_and_without_a_head(tmp_path: Path) -> None:
    source = build_model("vit_tiny_patch16_224", 1000, 3, 224).state_dict()
    headless = {k: v.contiguous() for k, v in source.items() if not k.startswith("head.")}
    save_file(headless, str(tmp_path / "vit.safetensors"))
    model, info = root_model("vit_tiny_patch16_224", str(tmp_path / "vit.safetensors"), 10, 3, 32)
    assert info["head"] == "re-initialised (no -> 10 classes)"
    assert model.pos_embed.shape == (1, 5, 192)  # 224-pixel embeddings resampled to a 2x2 grid
    assert torch.equal(model.blocks[0].attn.qkv.weight, source["blocks.0.attn.qkv.weight"])
    with pytest.raises(ConfigError, match="vit.safetensors: has no tensor 'conv1.weight'"):
        root_model("resnet18", str(tmp_path / "vit.safetensors"), 10, 3, 32)


def test_root_weights_from_the_hub_cache_offline(offline_hub: Path) -> None:
    cached = load_file(
        str(next(offline_hub.glob("models--timm--resnet18*/snapshots/*/model.safetensors")))
    )
    for weights in ("timm", "hf-hub:timm/resnet18.a1_in1k"):
        model, info = root_model("resnet18.a1_in1k", weights, 10, 3, 32)
        assert info["head"] == "re-initialised (1000 -> 10 classes)", weights
        assert (
            torch.equal(model.conv1.weight, cached["conv1.weight"]) and model.fc.out_features == 10
        )
    assert info["init"] == "hf-hub:timm/resnet18.a1_in1k"
    assert root_model("resnet18.a1_in1k", "timm", 10, 3, 32)[1]["init"] == "timm:resnet18.a1_in1k"
    with pytest.raises(ConfigError) as err:  # not cached, and offline
        root_model("convnext_atto", "timm", 10, 3, 32)
    assert "\n" not in str(err.value) and "convnext_atto" in str(err.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"archs": ["resnet_micro"], "root_weights": "timm"}, "needs a timm model name"),
        (
            {"archs": ["resnet18"], "forest": True, "root_weights": "timm"},
            "a forest has random roots",
        ),
        ({"archs": ["resnet18", "resnet34"], "root_weights": ["timm"]}, "1 values for 2 archs"),
        ({"archs": ["resnet18"], "root_weights": "/no/such/file"}, "no such file or folder"),
        ({"archs": ["vit_micro"], "image_size": 30}, "patch size 7 does not divide"),
        ({"archs": ["resnet18"], "source": "shapes", "source_options": {"n": 1}}, "no option 'n'"),
        ({"archs": ["resnet18"], "device": "tpu"}, "device 'tpu'"),
    ],
)
def test_bad_real_settings_fail_before_training(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VisionRecipe(**args).validate()


# -- the shipped real-scale configs at toy scale ----------------------------------------------------

TOY_VISION = {
    "source": "shapes",
    "source_options": {"n_train": 800, "n_test": 200},
    "image_size": 32,
    "classes_per_member": 5,
    "steps": [2, 3],
    "batch_size": [8],
    "train_images": [32],
    "val_images": 100,
    "eval_images": 32,
    "splits": [0.5, 0.25, 0.25],
    "device": "cpu",
}


@pytest.fixture(scope="module")
def resnet18_zoo(hub_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    """configs/zoo/modelj_resnet.yaml at toy scale: its timm root from the offline cache."""
    from tests.hf_cache import use_offline_cache

    with pytest.MonkeyPatch.context() as patch:
        use_offline_cache(patch, hub_cache)
        config = shipped("modelj_resnet", **TOY_VISION, members_per_tree=6)
        zoo = build(config, tmp_path_factory.mktemp("modelj_resnet") / "zoo").zoo
    assert zoo is not None
    return zoo


@pytest.mark.slow
def test_modelj_resnet_at_toy_scale_trains_probex(
    resnet18_zoo: Zoo, hub_cache: Path, tmp_path: Path
) -> None:
    zoo = resnet18_zoo  # root_weights: timm, as shipped
    assert len(zoo) == 6 and set(zoo.table["arch"]) == {"resnet18"}
    (tree,) = zoo.meta.trees.values()
    assert tree["init"] == "timm:resnet18.a1_in1k"
    assert tree["head"] == "re-initialised (1000 -> 10 classes)"
    cached = load_file(
        str(next(hub_cache.glob("models--timm--resnet18*/snapshots/*/model.safetensors")))
    )
    root = load_file(str(zoo.root / tree["path"]))
    assert torch.equal(root["layer1.0.conv1.weight"], cached["layer1.0.conv1.weight"])
    with zoo.open_model(zoo.table.iloc[0]) as src:
        assert tuple(src.info("layer4.0.conv2.weight").shape) == (512, 512, 3, 3)
    (data,) = zoo.meta.build["data"]
    assert data["source"] == "shapes" and data["image_size"] == 32 and data["train_images"] == 800
    assert 0 <= vision_probex(zoo.root, tmp_path, "resnet18", "layer4.0.conv2.weight") <= 1


# Recipes whose one-batch run on 11 M-parameter members takes seconds; Dense, the flat MLP,
# StatNN (both) and NWPA also run on them, in 1-2 minutes each on a busy 2-core machine.
VISION_RECIPES = ["experts_vision.yaml", "pca_vision.yaml", "weightnet_vision.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", VISION_RECIPES)
def test_every_vision_recipe_runs_on_resnet18_members(
    resnet18_zoo: Zoo, recipe: str, tmp_path: Path
) -> None:
    """The zoo format is unchanged: metanetwork recipes read the real architecture's layers as
    they are (one fast_dev_run batch)."""
    _, results = fit(
        [
            *("--config", str(REPO / "configs" / recipe)),
            *("--data.init_args.zoo", str(resnet18_zoo.root), "--data.init_args.trees", '["*"]'),
            *("--data.init_args.arch", "resnet18", "--trainer.fast_dev_run", "true"),
            *("--trainer.default_root_dir", str(tmp_path)),
            *("--trainer.logger", "lightning.pytorch.loggers.CSVLogger"),
            *("--trainer.logger.save_dir", str(tmp_path)),
        ]
    )
    assert results and any(k.startswith("test/") for k in results[0])


@pytest.mark.slow
def test_modelj_vit_at_toy_scale_gives_vit_s_layers(tmp_path: Path) -> None:
    toy = TOY_VISION | {"archs": ["vit_small_patch16_224"], "root_weights": "random"}
    zoo = build(shipped("modelj_vit", **toy, members_per_tree=4), tmp_path / "zoo").zoo
    assert zoo is not None and set(zoo.table["arch"]) == {"vit_small_patch16_224"}
    assert next(iter(zoo.meta.trees.values()))["init"] == "random"
    with zoo.open_model(zoo.table.iloc[0]) as src:
        assert tuple(src.info("blocks.0.mlp.fc1.weight").shape) == (1536, 384)
    assert (
        0
        <= vision_probex(zoo.root, tmp_path, "vit_small_patch16_224", "blocks.0.mlp.fc1.weight")
        <= 1
    )


@pytest.mark.slow
def test_sd_lora_at_toy_scale_on_a_saved_pipeline(offline_hub: Path, tmp_path: Path) -> None:
    """sd_lora.yaml's pipeline id resolves from the cache to a tiny saved pipeline: its UNet is the
    root, its CLIP text encoder conditions, its VAE gives the latents, and it draws the images."""
    toy = {
        "n_concepts": 4,
        "models_per_concept": 3,
        "splits": [0.34, 0.33, 0.33],  # one train, val and test model per training concept
        "n_val_holdout": 1,
        "n_test_holdout": 1,
        "concept_images": 4,
        "draw_steps": 2,
        "rank": [2],
        "steps": [2, 3],
        "n_images": [2],
        "batch_size": 2,
        "device": "cpu",
    }
    zoo = build(shipped("sd_lora", **toy), tmp_path / "zoo").zoo
    assert zoo is not None and len(zoo) == 12 and zoo.meta.classes[0] == "red circle"
    (tree,) = zoo.meta.trees.values()
    pipeline = next(offline_hub.glob("models--stable-diffusion-v1-5*/snapshots/*"))
    unet = load_file(str(pipeline / "unet" / "diffusion_pytorch_model.safetensors"))
    root = load_file(str(zoo.root / tree["path"]))
    assert root.keys() == unet.keys() and all(torch.equal(root[k], unet[k]) for k in unet)
    assert tree["unet_config"]["cross_attention_dim"] == 32 and tree["init"].startswith("hf-hub:")
    assert tree["text_encoder"].startswith("hf_clip:text_encoder")
    drawn = sorted(p.name for p in (zoo.root / ".cache" / "concepts").glob("*.safetensors"))
    assert "red_circle-train.safetensors" in drawn and "red_circle-test.safetensors" in drawn
    assert load_file(str(zoo.root / ".cache/concepts/red_circle-train.safetensors"))[
        "images"
    ].shape == (4, 3, 16, 16)
    assert (
        zoo.meta.build["data"][0]["pipeline"]
        == "hf-hub:" + "stable-diffusion-v1-5/stable-diffusion-v1-5"
    )
    row = zoo.table.iloc[0]
    with zoo.open_model(row) as src:
        deltas = {n: src.get(n) for n in src.names()}
    assert any(n.endswith("attn2.to_k") and d.shape == (32, 32) for n, d in deltas.items())
    assert all(torch.isfinite(d).all() for d in deltas.values())
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(pipeline, safety_checker=None)
    pipe.load_lora_weights(str(zoo.path_of(row).parent), weight_name=zoo.path_of(row).name)
    metrics = train_probex(
        "probex_sd.yaml",
        zoo.root,
        tmp_path,
        *("--data.init_args.batch_size", "4", "--trainer.check_val_every_n_epoch", "1"),
    )
    assert any(k.startswith("test") for k in metrics)


def test_a_pipeline_that_is_not_one_is_one_line(tmp_path: Path) -> None:
    from nwa.zoo.diffusion import LoraRecipe

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model_index.json").write_text(json.dumps({"_class_name": "X"}))
    for spec, message in (
        (str(tmp_path / "absent"), "no such file or folder"),
        (str(tmp_path / "half"), "has no unet/ folder"),
    ):
        with pytest.raises(ConfigError, match=message):
            LoraRecipe(pipeline=spec, root_steps=0).validate()
    with pytest.raises(ConfigError, match="needs a pipeline"):
        LoraRecipe(concept_source="pipeline").validate()
