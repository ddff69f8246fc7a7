"""The LoRA zoo recipe: validation, plans, and a real root + members written, reopened and read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from nwa.errors import ConfigError
from nwa.weights.io import LoraDelta, open_weights
from nwa.zoo.diffusion import ARCH, VARIANTS, LoraRecipe
from nwa.zoo.manifest import Zoo, ZooMeta, ZooWriter
from nwa.zoo.recipe import Job
from nwa.zoo.unet import LORA_FILE, build_unet, unet_config

TINY: dict[str, Any] = {
    "n_concepts": 4,
    "models_per_concept": 2,
    "n_val_holdout": 1,
    "n_test_holdout": 1,
    "block_out_channels": [16, 32],
    "max_length": 8,
    "num_train_timesteps": 100,
    "root_steps": 3,
    "root_batch_size": 4,
    "root_images_per_concept": 4,
    "rank": [2, 4],
    "steps": [3, 4],
    "n_images": [2],
    "batch_size": 2,
}


def tiny(**overrides: Any) -> LoraRecipe:
    return LoraRecipe(**(TINY | overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"models_per_concept": 0}, "zero models"),
        ({"n_concepts": 0}, "zero models"),
        ({"n_trees": 0}, "zero models"),
        ({"target_modules": ["to_q", "to_qkv"]}, "'to_qkv' matches no"),
        ({"target_modules": []}, "target_modules is empty"),
        ({"n_val_holdout": 2, "n_test_holdout": 2}, "4 holdout concepts"),
        ({"n_test_holdout": 9}, "holdout concepts"),
        ({"n_concepts": 1000}, "asked for 1000"),
        ({"lr": [1e-3, 1e-4]}, "lr must be a range"),
        ({"rank": [0]}, "rank needs choices"),
        ({"splits": [0.5, 0.5, 0.5]}, "splits"),
        ({"image_size": 18, "block_out_channels": [16, 32, 32]}, "multiple of 4"),
        ({"block_out_channels": [12, 24]}, "cannot be built"),
        ({"prompt": "a photo"}, "{concept}"),
        ({"text_encoder": "word2vec"}, "unknown text encoder"),
    ],
)
def test_validate_rejects_bad_values(overrides: dict[str, Any], message: str) -> None:
    recipe = tiny(**overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        recipe.validate()


def test_unknown_variant_and_variant_defaults() -> None:
    with pytest.raises(ConfigError, match="unknown variant"):
        LoraRecipe(variant="many_shot")
    fine, few = LoraRecipe(variant="fine_grained"), LoraRecipe(variant="few_shot")
    assert fine.models_per_concept == VARIANTS["fine_grained"]["models_per_concept"] > 10
    assert few.n_concepts == VARIANTS["few_shot"]["n_concepts"] >= 40
    assert few.n_concepts > fine.n_concepts and few.models_per_concept < fine.models_per_concept
    assert LoraRecipe(variant="fine_grained", n_concepts=5).n_concepts == 5


def test_plan_is_deterministic_with_holdout_splits() -> None:
    recipe = LoraRecipe(**(TINY | {"n_concepts": 10, "models_per_concept": 3}))
    recipe.validate()
    jobs = recipe.plan(0)
    assert jobs == recipe.plan(0)
    assert [j.params for j in recipe.plan(1)] != [j.params for j in jobs]
    roots = [j for j in jobs if j.kind == "root"]
    members = [j for j in jobs if j.kind == "member"]
    assert jobs[: len(roots)] == roots and len(members) == 30
    assert len({j.id for j in jobs}) == len(jobs)
    assert all(m.parent == roots[0].id and m.tree == roots[0].tree for m in members)

    holdout = recipe.holdout_splits()
    assert len(holdout["val_holdout"]) == len(holdout["test_holdout"]) == 1
    assert recipe.holdout_concepts() == holdout["val_holdout"] + holdout["test_holdout"]
    names = recipe.classes()
    for m in members:
        concept = m.params["concept"]
        assert names[m.params["concept_index"]] == concept
        expected = next((s for s, cs in holdout.items() if concept in cs), None)
        assert m.split == expected if expected else m.split in ("train", "val", "test")
        assert m.params["seed"] == m.params["hparams"]["seed"]
        assert m.params["hparams"]["rank"] in TINY["rank"]
    for concept in set(names) - set(recipe.holdout_concepts()):
        splits = [m.split for m in members if m.params["concept"] == concept]
        assert "train" in splits  # every in-distribution concept has a training model
    # a concept's models do not depend on which other concepts the zoo has
    fewer = {j.id: j for j in LoraRecipe(**(TINY | {"models_per_concept": 3})).plan(0)}
    first = [m for m in members if m.params["concept"] == names[0]]
    assert all(fewer[m.id].params == m.params for m in first)


def test_more_trees_spread_members() -> None:
    jobs = tiny(n_trees=2).plan(0)
    roots = [j for j in jobs if j.kind == "root"]
    assert len(roots) == 2 and len({r.params["seed"] for r in roots}) == 2
    trees = {j.tree for j in jobs if j.kind == "member"}
    assert trees == {r.tree for r in roots}


def test_attention_only_at_low_resolution() -> None:
    assert unet_config(16, [32, 64], 384)["down_block_types"] == [
        "DownBlock2D",
        "CrossAttnDownBlock2D",
    ]
    config = unet_config(32, [32, 64, 64], 384)
    assert config["down_block_types"][:2] == ["DownBlock2D", "DownBlock2D"]
    assert config["up_block_types"] == ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"]
    tiny(image_size=32, block_out_channels=[16, 32, 32]).validate()


# -- a real build ----------------------------------------------------------------------------


def _member_rows(recipe: LoraRecipe, jobs: list[Job], writer: ZooWriter, root: dict) -> list[dict]:
    """Train one in-distribution and one held-out member."""
    train = next(j for j in jobs if j.kind == "member" and j.split == "train")
    held = next(j for j in jobs if j.kind == "member" and j.split.endswith("holdout"))
    return [recipe.run(job, writer, root) for job in (train, held)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    recipe = tiny()
    recipe.validate()
    jobs = recipe.plan(0)
    out = tmp_path_factory.mktemp("lora_zoo")
    writer = ZooWriter(out, ZooMeta("lora", classes=recipe.classes()))
    info = recipe.run(jobs[0], writer, None)
    with open_weights(out / info["path"]) as src:
        root = {name: src.get(name) for name in src.names()}
    writer.meta.trees[jobs[0].tree] = {"root": jobs[0].id, **info}
    writer.meta.holdout_concepts = recipe.holdout_concepts()
    writer.meta.label_schema = recipe.label_schema()
    for row in _member_rows(recipe, jobs, writer, root):
        writer.add(row)
    writer.finalize(expected=2)
    return {"recipe": recipe, "jobs": jobs, "zoo": Zoo.open(out), "root": root, "info": info}


@pytest.mark.slow
def test_root_is_a_full_unet(built: dict[str, Any]) -> None:
    recipe, info, root = built["recipe"], built["info"], built["root"]
    unet = build_unet(info["unet_config"])
    assert list(root) == list(unet.state_dict())  # every tensor, in module order
    assert info["params"] == sum(p.numel() for p in unet.parameters())
    assert info["unet_config"]["cross_attention_dim"] == 384 == recipe.encoder().token_dim
    assert "CrossAttnDownBlock2D" not in info["unet_config"]["down_block_types"][0]  # 16 px: none


@pytest.mark.slow
def test_members_open_as_lora_deltas(built: dict[str, Any]) -> None:
    zoo, recipe = built["zoo"], built["recipe"]
    assert len(zoo) == 2 and set(zoo.table["arch"]) == {ARCH}
    splits = set(zoo.table["split"])
    assert "train" in splits and splits & {"val_holdout", "test_holdout"}
    modules = dict(build_unet(built["info"]["unet_config"]).named_modules())
    for _, row in zoo.table.iterrows():
        assert row["path"] == f"weights/{row['id']}/{LORA_FILE}"
        assert row["classes"] == [recipe.classes().index(row["concept"])]
        assert row["tree"] == built["jobs"][0].tree and row["parent"] == built["jobs"][0].id
        assert set(row["labels"]) == {"final_loss", "eval_loss", "eval_gain"}
        with zoo.open_model(row) as src:
            assert isinstance(src, LoraDelta)
            # to_q/k/v/out.0 of every transformer block: 4 per attention, 2 attentions per block
            assert len(src.names()) % 8 == 0 and len(src.names()) >= 16
            for name in src.names():
                weight = modules[name.removeprefix("unet.")].weight
                delta = src.get(name)
                assert tuple(delta.shape) == tuple(weight.shape) == src.info(name).shape
                assert delta.abs().sum() > 0 and torch.isfinite(delta).all()
            assert any(src.info(n).shape[1] == 384 for n in src.names())  # text-side to_k / to_v


@pytest.mark.slow
def test_saved_file_follows_diffusers_peft_naming(built: dict[str, Any]) -> None:
    zoo = built["zoo"]
    row = zoo.table.iloc[0]
    path = zoo.path_of(row)
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    pattern = re.compile(r"^unet\.(down|mid|up)_blocks?\..+\.to_(q|k|v|out\.0)\.lora_[AB]\.weight$")
    assert keys and all(pattern.match(k) for k in keys), keys[:4]
    lora_meta = json.loads(meta["lora_adapter_metadata"])
    assert lora_meta["unet.r"] == lora_meta["unet.lora_alpha"] == row["hparams"]["rank"]
    assert lora_meta["unet.target_modules"] == sorted(["to_q", "to_k", "to_v", "to_out.0"])
    layout = json.loads(meta["nwa.layout"])
    assert sorted(layout) == sorted(keys) and meta["nwa.concept"] == row["concept"]


@pytest.mark.slow
def test_diffusers_loads_the_saved_lora(built: dict[str, Any]) -> None:
    from peft import get_peft_model_state_dict

    zoo = built["zoo"]
    path = zoo.path_of(zoo.table.iloc[0])
    unet = build_unet(built["info"]["unet_config"])
    unet.load_state_dict(built["root"])
    unet.load_lora_adapter(str(path.parent), prefix="unet", weight_name=LORA_FILE, adapter_name="m")
    loaded = get_peft_model_state_dict(unet, adapter_name="m")
    with safe_open(str(path), "pt") as f:
        assert len(loaded) == len(list(f.keys()))
        for key, value in loaded.items():
            assert torch.equal(value, f.get_tensor(f"unet.{key}"))


@pytest.mark.slow
def test_run_is_deterministic_given_the_seed(built: dict[str, Any], tmp_path: Path) -> None:
    recipe, zoo = built["recipe"], built["zoo"]
    row = zoo.table.iloc[0]
    job = next(j for j in built["jobs"] if j.id == row["id"])
    again = recipe.run(job, ZooWriter(tmp_path, ZooMeta("again")), built["root"])
    assert again["labels"] == row["labels"]
    with open_weights(zoo.path_of(row)) as a, open_weights(tmp_path / again["path"]) as b:
        assert a.names() == b.names()
        assert all(torch.equal(a.get(n), b.get(n)) for n in a.names())
