"""How a LoRA zoo's models are trained: roots (nwa's tiny UNet, or a pipeline's) and peft LoRA
members, in pixel space or a pipeline's latent space. Mixed into
:class:`~nwa.zoo.diffusion.LoraRecipe`, which holds the configuration these methods read."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nwa.errors import ConfigError
from nwa.zoo.classifiers import stable_seed
from nwa.zoo.concepts import Concept
from nwa.zoo.manifest import ZooWriter
from nwa.zoo.pipeline import DrawSettings
from nwa.zoo.recipe import Job, pick_device
from nwa.zoo.runner import save_root
from nwa.zoo.unet import build_unet, fit_lora, lora_state, save_lora, train_steps

ARCH = "unet_lora"
ROOT_ARCH = "unet"
EVAL_IMAGES = 32
log = logging.getLogger("nwa.zoo.diffusion")


def slug(text: str) -> str:
    """A concept name as a file and id part: ``"red circle"`` -> ``red_circle``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class LoraTraining:
    """Training methods of :class:`~nwa.zoo.diffusion.LoraRecipe`."""

    def _scheduler(self) -> Any:
        if self.pipeline is not None:
            return self.pipeline.scheduler()
        from diffusers import DDPMScheduler

        return DDPMScheduler(num_train_timesteps=self.num_train_timesteps)

    def _images(
        self, concept: Concept, n: int, seed: int, split: str = "train", cache: Path | None = None
    ) -> torch.Tensor:
        """``n`` images of a concept as the UNet trains on them: pixels in [-1, 1], or a
        pipeline's VAE latents. Shapes: [n, C, S, S]."""
        if concept.source == "pipeline":
            assert self.pipeline is not None and cache is not None
            how = DrawSettings(
                self.image_size, self.draw["steps"], self.draw["guidance"], pick_device(self.device)
            )
            first = stable_seed(concept.name, split)
            file = cache / "concepts" / f"{slug(concept.name)}-{split}.safetensors"
            pool = self.pipeline.drawn(
                self.prompt.format(concept=concept.name),
                file,
                [first + i for i in range(self.draw["n"])],
                how,
            )
            g = torch.Generator().manual_seed(seed)
            x = pool[torch.randperm(len(pool), generator=g)[:n]].float() / 255
        else:
            x = concept.images(n, seed=seed, split=split, size=self.image_size)
        if self.pipeline is None:
            return x * 2 - 1
        return self.pipeline.latents(x * 2 - 1, pick_device(self.device))

    def _cond(self, encoder: Any, names: Sequence[str]) -> torch.Tensor:
        """Token states of the concepts' prompts. Shapes: [len(names), max_length, token_dim]."""
        return encoder.token_states([self.prompt.format(concept=n) for n in names], self.max_length)

    def run(
        self, job: Job, writer: ZooWriter, root: dict[str, torch.Tensor] | None
    ) -> dict[str, Any]:
        start = time.perf_counter()
        cache = self.text["cache_dir"] or writer.root / ".cache" / "text"
        encoder = self.encoder(cache)
        torch.manual_seed(job.params["seed"])
        if job.kind == "root":
            out = self._run_root(job, writer, encoder)
        else:
            if root is None:
                raise ValueError(f"member {job.id} needs its root's tensors")
            out = self._run_member(job, writer, encoder, root)
        log.info("%s: %s done in %.1f s", job.id, job.kind, time.perf_counter() - start)
        return out

    def _run_root(self, job: Job, writer: ZooWriter, encoder: Any) -> dict[str, Any]:
        p, concepts = job.params, self.concepts()
        config = self.unet_config(encoder.token_dim)
        unet = build_unet(config)
        if self.pipeline is not None:
            unet.load_state_dict(self.pipeline.unet_state())
        unet.to(pick_device(self.device))
        hp = {k: p[k] for k in ("steps", "lr", "batch_size")}
        loss = math.nan
        if hp["steps"]:
            cond = self._cond(encoder, [c.name for c in concepts])
            n, cache = p["images_per_concept"], writer.root / ".cache"
            images = torch.cat(
                [self._images(c, n, stable_seed(p["seed"], c.name), cache=cache) for c in concepts]
            )
            labels = torch.arange(len(concepts)).repeat_interleave(len(images) // len(concepts))
            loss = train_steps(unet, self._scheduler(), images, cond, labels, hp, p["seed"])
        meta = {"nwa.arch": ROOT_ARCH, "nwa.unet_config": json.dumps(config)}
        path = save_root(writer, job.id, unet.state_dict(), meta)  # roots/<id>.safetensors
        n_params = sum(t.numel() for t in unet.parameters())
        init = self.pipeline.key() if self.pipeline else "random"
        info = {"arch": ROOT_ARCH, "seed": p["seed"], "params": n_params, "final_loss": loss}
        info |= {"init": init if not hp["steps"] else f"{init}, then trained here"}
        return {"path": path, **info, **hp, "unet_config": config, "text_encoder": encoder.model_id}

    def _run_member(
        self, job: Job, writer: ZooWriter, encoder: Any, root: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        p, hp = job.params, job.params["hparams"]
        concept = self.concepts()[p["concept_index"]]
        if concept.name != p["concept"]:
            raise ConfigError(f"{job.id}: planned for {p['concept']!r}, now {concept.name!r}")
        unet = build_unet(self.unet_config(encoder.token_dim))
        unet.load_state_dict(root)
        unet.to(pick_device(self.device))
        cache = writer.root / ".cache"
        images = self._images(concept, hp["n_images"], hp["seed"], cache=cache)
        test = self._images(concept, EVAL_IMAGES, 0, split="test", cache=cache)
        cond = self._cond(encoder, [concept.name])
        config, labels = fit_lora(unet, self._scheduler(), hp, images, cond, test)
        meta = {"nwa.arch": ARCH, "nwa.concept": concept.name, "nwa.root": job.parent}
        file = save_lora(writer.root / "weights" / job.id, lora_state(unet), config, meta)
        return {
            "id": job.id,
            "path": str(file.relative_to(writer.root)),
            "tree": job.tree,
            "parent": job.parent,
            "arch": ARCH,
            "split": job.split,
            "classes": [p["concept_index"]],
            "concept": concept.name,
            "hparams": hp,
            "labels": labels,
        }
