"""The text-to-image LoRA zoo (an SD LoRA zoo in any size): peft LoRA members of a UNet root.

Each tree's root is a diffusers ``UNet2DConditionModel``: either nwa's tiny one (about 1.2 M
parameters at the defaults), pretrained here in pixel space with the DDPM loss on images of every
concept, conditioned on the text encoder's token states of ``"a photo of a {concept}"``; or a real
pipeline's (``pipeline: hf-hub:... | PATH``, :mod:`nwa.zoo.pipeline`), trained in its VAE's latent
space with its own tokenizer and CLIP text encoder and its scheduler's prediction type. Each member
is a LoRA fine-tune of the root's attention projections on a handful of images of ONE concept,
with sampled hyperparameters. Concept images are drawn by :mod:`nwa.zoo.shapes`, read from a
dataset or an image folder (:mod:`nwa.zoo.concepts`), or drawn by the pipeline itself
(``concept_source: pipeline``; cached per concept in ``<zoo>/.cache/concepts``).

Members are saved the way diffusers saves SD LoRAs (``save_lora_weights`` of a peft state dict):
``weights/<id>/pytorch_lora_weights.safetensors`` with keys ``unet.<module>.lora_A.weight`` and
``unet.<module>.lora_B.weight`` and the LoRA config in the ``lora_adapter_metadata`` header, so
diffusers' ``load_lora_weights`` and :func:`nwa.weights.io.open_weights` (``B @ A`` deltas, [out, in])
both read them. ``lora_alpha`` equals the rank, so ``B @ A`` is exactly the update applied.

Labels: ``final_loss`` (training loss over the last tenth of the steps), ``eval_loss`` (the DDPM
loss on the concept's test images with fixed noise and timesteps) and ``eval_gain`` (the root's
``eval_loss`` minus the member's: how much the LoRA learned its concept).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nwa.errors import ConfigError
from nwa.zoo import datasets, shapes
from nwa.zoo.classifiers import stable_seed
from nwa.zoo.concepts import Concept, concepts
from nwa.zoo.lora_training import ARCH, ROOT_ARCH, LoraTraining, slug  # noqa: F401 (re-exported)
from nwa.zoo.pipeline import Pipeline
from nwa.zoo.recipe import Job, Recipe, argument, pick_device
from nwa.zoo.unet import (
    build_unet,
    check_target_modules,
    unet_config,
)

# Defaults each variant gives to n_concepts, models_per_concept, n_val_holdout, n_test_holdout.
_VARIANT_KEYS = ("n_concepts", "models_per_concept", "n_val_holdout", "n_test_holdout")
VARIANTS: dict[str, dict[str, int]] = {
    "few_shot": dict(zip(_VARIANT_KEYS, (40, 3, 4, 4))),
    "fine_grained": dict(zip(_VARIANT_KEYS, (8, 20, 1, 1))),
}


class LoraRecipe(LoraTraining, Recipe):
    """Trees of a text-conditioned UNet (nwa's tiny one or a pipeline's) with peft LoRA members,
    one concept each.

    Concepts are compositions such as "red striped circle" (:func:`nwa.zoo.concepts.concepts`),
    a folder's classes, or named ones drawn by the pipeline. ``n_val_holdout + n_test_holdout`` concepts (fixed by ``holdout_seed``) are held out:
    all their models go to ``val_holdout`` / ``test_holdout`` for zero-shot evaluation; the other
    concepts' models are split train/val/test within each concept.

    Args:
        name: Prefix of tree and model ids; distinct per recipe in one zoo.
        variant: ``few_shot`` (many concepts, few models each) or ``fine_grained`` (few concepts,
            many models each); sets ``n_concepts``, ``models_per_concept``, ``n_val_holdout`` and
            ``n_test_holdout`` where those are left unset.
        n_concepts: Number of concepts (the first of the concept list).
        models_per_concept: LoRA members per concept.
        n_val_holdout: Concepts whose models form ``val_holdout``.
        n_test_holdout: Concepts whose models form ``test_holdout``.
        holdout_seed: Chooses the held-out concepts.
        concept_source: Where concepts and their images come from: ``shapes`` (drawn by nwa),
            ``fashion_mnist``, ``digits``, ``imagefolder:PATH`` (a folder per concept), or
            ``pipeline`` (named by ``concept_names``, drawn by the pipeline).
        concept_names: Concept names for ``concept_source: pipeline`` (default: the ``shapes``
            concepts' names).
        pipeline: A diffusers text-to-image pipeline (folder or ``hf-hub:ORG/NAME[@REV]``) whose
            UNet is the root and whose tokenizer, CLIP text encoder, VAE and scheduler are used;
            ``None`` builds nwa's tiny UNet from the arguments below.
        concept_images: Images the pipeline draws per concept and split (``pipeline`` source).
        draw_steps: Inference steps per drawn image.
        guidance_scale: Classifier-free guidance of drawn images.
        prompt: Prompt template with ``{concept}``.
        splits: Fractions of each non-held-out concept's models in train / val / test.
        n_trees: Number of roots (trees); members are spread over them round-robin.
        image_size: Image side in pixels (default 16, or the pipeline's own size): 16, or 32
            with three levels (``block_out_channels`` ``[32, 64, 64]``) so attention stays at 8x8,
            at about twice the cost.
        block_out_channels: UNet channels per resolution level.
        layers_per_block: ResNet layers per UNet block.
        attention_resolution: Blocks at this resolution or lower get cross-attention.
        attention_head_dim: Channels per attention head.
        text_encoder: Text encoder name (see :func:`nwa.text.build_text_encoder`); a pipeline
            brings its own.
        text_weights: Local weights for a CLIP text encoder.
        max_length: Tokens of conditioning per prompt (default 16, or the pipeline tokenizer's).
        text_cache_dir: Embedding cache folder (default ``<zoo>/.cache/text``, shared by shards).
        num_train_timesteps: DDPM timesteps.
        root_steps: Pretraining steps of each root (0 keeps the random initialization).
        root_lr: Pretraining learning rate.
        root_batch_size: Pretraining batch size.
        root_images_per_concept: Pretraining images per concept.
        rank: LoRA rank choices.
        target_modules: Module names (peft suffix match) that get LoRA.
        lr: Member learning rate range ``[low, high]``, sampled log-uniformly.
        steps: Member step range ``[low, high]``, sampled uniformly (inclusive).
        n_images: Choices for the number of training images of a member's concept.
        batch_size: Member batch size.
        device: ``cpu``, ``cuda[:N]`` or ``auto`` (CUDA when present).
    """

    def __init__(
        self,
        name: str = "sd",
        variant: str = "few_shot",
        n_concepts: int | None = None,
        models_per_concept: int | None = None,
        n_val_holdout: int | None = None,
        n_test_holdout: int | None = None,
        holdout_seed: int = 0,
        concept_source: str = "shapes",
        concept_names: Sequence[str] | None = None,
        pipeline: str | None = None,
        concept_images: int = 16,
        draw_steps: int = 25,
        guidance_scale: float = 7.5,
        prompt: str = "a photo of a {concept}",
        splits: Sequence[float] = (0.7, 0.15, 0.15),
        n_trees: int = 1,
        image_size: int | None = None,
        block_out_channels: Sequence[int] = (32, 64),
        layers_per_block: int = 1,
        attention_resolution: int = 8,
        attention_head_dim: int = 8,
        text_encoder: str = "minilm",
        text_weights: str | None = None,
        max_length: int | None = None,
        text_cache_dir: str | None = None,
        num_train_timesteps: int = 1000,
        root_steps: int = 2000,
        root_lr: float = 1e-3,
        root_batch_size: int = 32,
        root_images_per_concept: int = 256,
        rank: Sequence[int] = (4, 8),
        target_modules: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0"),
        lr: Sequence[float] = (3e-4, 3e-3),
        steps: Sequence[int] = (100, 200),
        n_images: Sequence[int] = (4, 8),
        batch_size: int = 4,
        device: str = "cpu",
    ) -> None:
        if variant not in VARIANTS:
            raise ConfigError(
                f"LoraRecipe: unknown variant {variant!r}; use one of {list(VARIANTS)}"
            )
        given = (n_concepts, models_per_concept, n_val_holdout, n_test_holdout)
        for key, value in zip(_VARIANT_KEYS, given):
            setattr(self, key, VARIANTS[variant][key] if value is None else int(value))
        self.name, self.variant, self.holdout_seed = name, variant, holdout_seed
        self.concept_source, self.prompt, self.splits = concept_source, prompt, list(splits)
        self.n_trees, self.device = n_trees, device
        self.concept_names = list(concept_names) if concept_names is not None else None
        self.pipeline = Pipeline(pipeline) if pipeline else None
        self.draw = {"n": concept_images, "steps": draw_steps, "guidance": guidance_scale}
        self._image_size, self._max_length = image_size, max_length
        self.unet_args = {
            "channels": list(block_out_channels),
            "layers_per_block": layers_per_block,
            "attention_resolution": attention_resolution,
            "attention_head_dim": attention_head_dim,
        }
        self.text = {"name": text_encoder, "weights": text_weights, "cache_dir": text_cache_dir}
        self.num_train_timesteps = num_train_timesteps
        self.root = {
            "steps": root_steps,
            "lr": root_lr,
            "batch_size": root_batch_size,
            "images_per_concept": root_images_per_concept,
        }
        self.space = {
            "rank": list(rank),
            "lr": list(lr),
            "steps": list(steps),
            "n_images": list(n_images),
        }
        self.target_modules, self.batch_size = list(target_modules), batch_size
        self._encoder = None

    # -- configuration -------------------------------------------------------------------------

    def _bad(self, what: str) -> ConfigError:
        return ConfigError(f"{type(self).__name__} {self.name!r}: {what}")

    def validate(self) -> None:
        if min(self.n_concepts, self.models_per_concept, self.n_trees) < 1:
            raise self._bad(
                f"zero models (n_concepts={self.n_concepts}, models_per_concept="
                f"{self.models_per_concept}, n_trees={self.n_trees}); need >= 1 each"
            )
        self.classes()  # raises ConfigError for an unknown source or too many concepts
        n_hold = self.n_val_holdout + self.n_test_holdout
        if min(self.n_val_holdout, self.n_test_holdout) < 0 or n_hold >= self.n_concepts:
            raise self._bad(
                f"{n_hold} holdout concepts ({self.n_val_holdout} val + {self.n_test_holdout} test) "
                f"must leave at least one of the {self.n_concepts} concepts for training"
            )
        if "{concept}" not in self.prompt:
            raise self._bad(f"prompt {self.prompt!r} must contain '{{concept}}'")
        if len(self.splits) != 3 or min(self.splits) < 0 or abs(sum(self.splits) - 1) > 1e-6:
            raise self._bad(f"splits must be three fractions summing to 1, got {self.splits}")
        self._check_space()
        self._check_unet()

    def _check_space(self) -> None:
        s, r = self.space, self.root
        for key in ("lr", "steps"):
            if len(s[key]) != 2 or not 0 < s[key][0] <= s[key][1]:
                raise self._bad(f"{key} must be a range [low, high], 0 < low <= high: {s[key]}")
        for key in ("rank", "n_images"):
            if not s[key] or min(s[key]) < 1:
                raise self._bad(f"{key} needs choices >= 1, got {s[key]}")
        if min(self.batch_size, self._max_length or 1, self.num_train_timesteps - 1) < 1:
            raise self._bad("batch_size and max_length must be >= 1, num_train_timesteps >= 2")
        if r["steps"] < 0 or min(r["batch_size"], r["images_per_concept"]) < 1:
            raise self._bad("need root_steps >= 0, root_batch_size, root_images_per_concept >= 1")
        if min(self.draw["n"], self.draw["steps"]) < 1:
            raise self._bad("concept_images and draw_steps must be >= 1")
        try:
            pick_device(self.device)
        except ConfigError as e:
            raise self._bad(str(e)) from None

    def _check_unet(self) -> None:
        """Build the UNet once (a pipeline's without memory, on the meta device): bad
        channel/size combinations and unknown targets fail here."""
        if not self.target_modules:
            raise self._bad("target_modules is empty")
        if self.pipeline is None:
            depth = 2 ** (len(self.unet_args["channels"]) - 1)
            if self.image_size < 4 or self.image_size % depth:
                raise self._bad(f"image_size {self.image_size} must be a multiple of {depth}")
        try:
            with torch.device("meta") if self.pipeline else contextlib.nullcontext():
                unet = build_unet(self.unet_config(self.token_dim()))
        except ConfigError as e:
            raise self._bad(str(e)) from None
        except Exception as e:  # diffusers raises ValueError/RuntimeError for inconsistent shapes
            raise self._bad(f"the UNet cannot be built from these arguments ({e})") from None
        if problem := check_target_modules(unet, self.target_modules):
            raise self._bad(problem)

    @property
    def image_size(self) -> int:
        """Image side in pixels (the pipeline's own size unless set)."""
        return self._image_size or (self.pipeline.image_size() if self.pipeline else 16)

    @property
    def max_length(self) -> int:
        """Tokens of conditioning per prompt."""
        return self._max_length or (self.pipeline.max_length() if self.pipeline else 16)

    def token_dim(self) -> int:
        """Width of the conditioning token states (without loading a pipeline's text encoder)."""
        if self.pipeline is not None:
            return int(self.pipeline.unet_config()["cross_attention_dim"])
        return self.encoder().token_dim

    def unet_config(self, cross_attention_dim: int) -> dict[str, Any]:
        """The root UNet's diffusers config: the pipeline's, or nwa's tiny UNet for a text encoder
        of this width."""
        if self.pipeline is not None:
            return self.pipeline.unet_config()
        return unet_config(
            self.image_size, cross_attention_dim=cross_attention_dim, **self.unet_args
        )

    def encoder(self, cache_dir: str | Path | None = None) -> Any:
        """The text encoder (built once per process; its cache follows the latest ``cache_dir``)."""
        from nwa.text import EmbeddingCache, build_text_encoder

        if self._encoder is None and self.pipeline is not None:
            self._encoder = self.pipeline.text_encoder(cache_dir)
        elif self._encoder is None:
            self._encoder = build_text_encoder(self.text["name"], self.text["weights"])
        if cache_dir is not None and self._encoder.cache.dir != Path(cache_dir):
            self._encoder.cache = EmbeddingCache(cache_dir)
        return self._encoder

    def concepts(self) -> list[Concept]:
        if self.concept_source != "pipeline":
            if self.concept_names is not None:
                raise self._bad("concept_names needs concept_source: pipeline")
            return concepts(self.concept_source, self.n_concepts)
        if self.pipeline is None:
            raise self._bad("concept_source: pipeline needs a pipeline to draw the images")
        names = self.concept_names or [c.name for c in concepts("shapes", self.n_concepts)]
        if len(names) < self.n_concepts or len(set(names)) < len(names):
            raise self._bad(
                f"concept_names: need {self.n_concepts} distinct names, got {len(names)}"
            )
        return [Concept(n, f"a {n}", "pipeline", i) for i, n in enumerate(names[: self.n_concepts])]

    @classmethod
    def data_keys(cls, init_args: dict[str, Any]) -> list[str]:
        source, pipe = (argument(cls, init_args, k) for k in ("concept_source", "pipeline"))
        keys = [str(source)]
        if str(source).startswith("imagefolder:"):
            keys = [datasets.source_key(source)]
        return keys + ([Pipeline(pipe).key()] if pipe else [])

    def data_record(self) -> dict[str, Any]:
        record = {"source": self.concept_source, "concepts": len(self.concepts())}
        if self.concept_source == "shapes":
            record["origin"] = f"drawn by nwa.zoo.shapes v{shapes.GENERATOR_VERSION}"
        if self.pipeline is not None:
            record["pipeline"] = self.pipeline.key()
        return record

    def classes(self) -> list[str]:
        return [c.name for c in self.concepts()]

    def label_schema(self) -> dict[str, str]:
        reg = dict.fromkeys(("final_loss", "eval_loss", "eval_gain"), "regression")
        return {"concept": "multiclass", **reg}

    def holdout_splits(self) -> dict[str, list[str]]:
        """``{"val_holdout": [...], "test_holdout": [...]}`` concept names."""
        names = self.classes()
        order = np.random.default_rng(stable_seed(self.holdout_seed, "holdout")).permutation(
            len(names)
        )
        val = order[: self.n_val_holdout]
        test = order[self.n_val_holdout : self.n_val_holdout + self.n_test_holdout]
        return {
            "val_holdout": [names[i] for i in sorted(val)],
            "test_holdout": [names[i] for i in sorted(test)],
        }

    def holdout_concepts(self) -> list[str]:
        h = self.holdout_splits()
        return h["val_holdout"] + h["test_holdout"]

    # -- plan ----------------------------------------------------------------------------------

    def plan(self, seed: int) -> list[Job]:
        trees = [f"{self.name}-t{j}" for j in range(self.n_trees)]
        roots = [
            Job(f"{t}-root", "root", t, params={"seed": stable_seed(seed, t, "root"), **self.root})
            for t in trees
        ]
        holdout = {c: split for split, names in self.holdout_splits().items() for c in names}
        m = self.models_per_concept
        members = []
        for ci, concept in enumerate(self.classes()):
            # one generator per concept: adding concepts leaves the others' models unchanged
            rng = np.random.default_rng(stable_seed(seed, self.name, concept))
            splits = [holdout[concept]] * m if concept in holdout else self._member_splits(rng)
            for k in range(m):
                tree = trees[(ci * m + k) % self.n_trees]
                params = self._sample(rng) | {"concept": concept, "concept_index": ci}
                job_id = f"{self.name}-{slug(concept)}-{k:03d}"
                members.append(Job(job_id, "member", tree, f"{tree}-root", splits[k], params))
        return roots + members

    def _member_splits(self, rng: np.random.Generator) -> list[str]:
        """train/val/test for one concept's models: expected counts match ``splits`` (rounded at
        random, so small concepts still reach every split on average); one model stays in train."""
        m = self.models_per_concept
        counts = []
        for frac in self.splits[1:]:
            x = m * frac
            counts.append(int(x) + int(rng.random() < x - int(x)))
        n_val, n_test = counts
        while n_val + n_test > (m - 1 if m >= 2 else m):
            n_val, n_test = (n_val - 1, n_test) if n_val >= n_test else (n_val, n_test - 1)
        labels = ["val"] * n_val + ["test"] * n_test + ["train"] * (m - n_val - n_test)
        return [str(s) for s in rng.permutation(labels)]

    def _sample(self, rng: np.random.Generator) -> dict[str, Any]:
        s = self.space
        hp = {
            "rank": int(rng.choice(s["rank"])),
            "lr": float(math.exp(rng.uniform(math.log(s["lr"][0]), math.log(s["lr"][1])))),
            "steps": int(rng.integers(s["steps"][0], s["steps"][1] + 1)),
            "n_images": int(rng.choice(s["n_images"])),
            "batch_size": self.batch_size,
            "target_modules": list(self.target_modules),
            "seed": int(rng.integers(0, 2**31 - 1)),
        }
        return {"seed": hp["seed"], "hparams": hp}
