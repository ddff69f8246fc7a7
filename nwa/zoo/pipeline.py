"""A real diffusers text-to-image pipeline (Stable Diffusion layout) as the root of a LoRA zoo.

The pipeline is a folder as ``save_pretrained`` writes it, or a Hub id (``hf-hub:ORG/NAME[@REV]``,
fetched into the Hugging Face cache): ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``
(a CLIP text model), ``tokenizer/`` and ``scheduler/``. The zoo uses its UNet as the root, its own
tokenizer and CLIP text encoder for the prompts' token states, its VAE to train in latent space,
its scheduler's noise schedule and prediction type, and, when asked, the pipeline itself to draw
each concept's images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nwa.errors import ConfigError, WeightsError
from nwa.zoo.hub import HUB, model_path

COMPONENTS: dict[str, list[str]] = {
    "unet": ["config.json", "diffusion_pytorch_model.safetensors"],
    "vae": ["config.json", "diffusion_pytorch_model.safetensors"],
    "text_encoder": ["config.json", "model.safetensors"],
    "tokenizer": ["*.json", "*.txt", "*.model"],
    "scheduler": ["*.json"],
}


@dataclass(frozen=True)
class DrawSettings:
    """How a pipeline draws concept images.

    Attributes:
        size: Image side in pixels.
        steps: Inference steps.
        guidance: Classifier-free guidance scale.
        device: Where the pipeline runs.
    """

    size: int
    steps: int
    guidance: float
    device: torch.device


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable ({e})") from None


class Pipeline:
    """A diffusers text-to-image pipeline, loaded lazily, one component at a time.

    Args:
        spec: A pipeline folder or ``hf-hub:ORG/NAME[@REVISION]``.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._path: Path | None = None
        self._vae: Any = None
        self._pipe: Any = None

    @property
    def path(self) -> Path:
        """The local pipeline folder (fetching a Hub id's components on first use).

        Raises:
            ConfigError: Missing, or not a single-text-encoder diffusers pipeline.
        """
        if self._path is None:
            self._path = self._resolve()
        return self._path

    def _resolve(self) -> Path:
        if self.spec.startswith(HUB):
            body, at, rev = self.spec.partition("@")
            for name, patterns in COMPONENTS.items():
                model_path(f"{body}/{name}{at}{rev}", patterns)
            folder = model_path(self.spec, ["model_index.json"])
        else:
            folder = model_path(self.spec)
        index = folder / "model_index.json"
        if not index.is_file():
            raise ConfigError(f"{self.spec}: not a diffusers pipeline (no model_index.json)")
        if "text_encoder_2" in _read_json(index):
            raise ConfigError(
                f"{self.spec}: pipelines with two text encoders (SDXL) are not supported"
            )
        for name in COMPONENTS:
            if not (folder / name).is_dir():
                raise ConfigError(f"{self.spec}: the pipeline has no {name}/ folder")
        return folder

    def key(self) -> str:
        """Identifies the pipeline in a zoo's cache key (a Hub id as given; a folder by path)."""
        if self.spec.startswith(HUB):
            return self.spec
        return str(Path(self.spec).expanduser().resolve())

    def unet_config(self) -> dict[str, Any]:
        """The UNet's constructor arguments (``unet/config.json`` without private keys)."""
        raw = _read_json(self.path / "unet" / "config.json")
        return {k: v for k, v in raw.items() if not k.startswith("_")}

    def vae_factor(self) -> int:
        """How many pixels one latent spans per side."""
        vae = _read_json(self.path / "vae" / "config.json")
        return 2 ** (len(vae.get("block_out_channels", [0])) - 1)

    def image_size(self) -> int:
        """The pixel size the UNet was trained for."""
        return int(self.unet_config().get("sample_size", 64)) * self.vae_factor()

    def max_length(self) -> int:
        """Tokens per prompt: the tokenizer's own maximum (77 for CLIP)."""
        cfg = _read_json(self.path / "tokenizer" / "tokenizer_config.json")
        return int(min(cfg.get("model_max_length", 77), 77))

    def unet_state(self) -> dict[str, torch.Tensor]:
        """The UNet's tensors, read safely (safetensors, or weights-only pickles)."""
        from nwa.weights.io import open_weights

        try:
            with open_weights(self.path / "unet", lora=False) as src:
                return {n: src.get(n) for n in src.names()}
        except WeightsError as e:
            raise ConfigError(str(e)) from None

    def text_encoder(self, cache_dir: str | Path | None) -> Any:
        """The pipeline's CLIP text encoder and tokenizer, as an nwa text encoder."""
        from nwa.text import HFCLIPEncoder

        return HFCLIPEncoder(self.path / "text_encoder", cache_dir)

    def scheduler(self) -> Any:
        """A DDPM scheduler with the pipeline's noise schedule and prediction type (training)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_pretrained(self.path, subfolder="scheduler")

    @torch.no_grad()
    def latents(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """VAE latents (the posterior mean, scaled): what the UNet denoises.

        Shapes:
            images: [N, 3, S, S] in [-1, 1] -> [N, C, S / f, S / f].
        """
        if self._vae is None:
            from diffusers import AutoencoderKL

            self._vae = AutoencoderKL.from_pretrained(self.path / "vae").eval()
        vae = self._vae.to(device)
        mean = vae.encode(images.to(device)).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((mean - shift) * vae.config.scaling_factor).cpu()

    @torch.no_grad()
    def draw(self, prompt: str, seeds: list[int], how: DrawSettings) -> torch.Tensor:
        """Images of a prompt drawn by the pipeline, one per seed.

        Shapes:
            Returns uint8 [len(seeds), 3, how.size, how.size].
        """
        if self._pipe is None:
            from diffusers import StableDiffusionPipeline

            self._pipe = StableDiffusionPipeline.from_pretrained(
                self.path,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
            self._pipe.set_progress_bar_config(disable=True)
        pipe = self._pipe.to(how.device)
        out = pipe(
            [prompt] * len(seeds),
            num_inference_steps=how.steps,
            guidance_scale=how.guidance,
            height=how.size,
            width=how.size,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            output_type="pt",
        ).images
        return (out.clamp(0, 1) * 255).round().to(torch.uint8).cpu()

    def drawn(self, prompt: str, file: Path, seeds: list[int], how: DrawSettings) -> torch.Tensor:
        """A concept's pool of images drawn by the pipeline, cached in ``file`` (drawn once, by
        whichever process needs it first, under a lock). Shapes: uint8 [len(seeds), 3, S, S]."""
        from safetensors.torch import load_file, save_file

        from nwa.atomic import atomic_path, file_lock

        with file_lock(file.with_name(file.name + ".lock")):
            if not file.is_file():
                images = self.draw(prompt, seeds, how)
                with atomic_path(file) as tmp:
                    save_file({"images": images}, str(tmp), metadata={"prompt": prompt})
            return load_file(str(file))["images"]
