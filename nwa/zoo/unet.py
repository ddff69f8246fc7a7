"""A tiny text-conditioned diffusers UNet: its config, DDPM training, and LoRA saving in diffusers' layout.

Used by :mod:`nwa.zoo.diffusion`; kept apart so the recipe reads as configuration and plan.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nwa.atomic import atomic_path, canonical_safetensors_header

LORA_FILE = "pytorch_lora_weights.safetensors"


def unet_config(
    image_size: int,
    channels: Sequence[int],
    cross_attention_dim: int,
    attention_resolution: int = 8,
    layers_per_block: int = 1,
    attention_head_dim: int = 8,
) -> dict[str, Any]:
    """``UNet2DConditionModel`` arguments with cross-attention only at low resolution.

    Block ``i`` runs at ``image_size / 2**i``; it gets cross-attention when that is at most
    ``attention_resolution``, since attention at full resolution costs several times the rest of
    the UNet on CPU. The mid block (lowest resolution) always attends.
    """
    res = [image_size // 2**i for i in range(len(channels))]
    down = [("CrossAttnDownBlock2D" if r <= attention_resolution else "DownBlock2D") for r in res]
    up = [b.replace("Down", "Up") for b in reversed(down)]
    return {
        "sample_size": image_size,
        "in_channels": 3,
        "out_channels": 3,
        "layers_per_block": layers_per_block,
        "block_out_channels": list(channels),
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": attention_head_dim,
        "norm_num_groups": 8,
    }


def build_unet(config: dict[str, Any]) -> torch.nn.Module:
    """A randomly initialised ``UNet2DConditionModel`` from :func:`unet_config` output or a
    pipeline's ``unet/config.json``."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(config)


def check_target_modules(unet: torch.nn.Module, targets: Sequence[str]) -> str | None:
    """Why ``targets`` cannot get LoRA (peft matches module-name suffixes), or ``None`` if they can."""
    layers = (torch.nn.Linear, torch.nn.Conv2d)
    names = [n for n, m in unet.named_modules() if isinstance(m, layers)]
    for target in targets:
        if not any(n == target or n.endswith(f".{target}") for n in names):
            known = sorted({".".join(n.split(".")[-2:]) for n in names if "attn" in n})
            return f"target module {target!r} matches no Linear/Conv2d layer of the UNet; attention layers end in {known[:8]}"
    return None


def ddpm_loss(
    unet: torch.nn.Module,
    scheduler: Any,
    x0: torch.Tensor,
    cond: torch.Tensor,
    g: torch.Generator,
    timesteps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoising MSE at random (or given) timesteps, against the noise or, for schedulers that
    predict it, the velocity. Noise is drawn on the CPU, so a seed gives the same loss anywhere.

    Shapes:
        x0: [B, C, H, W] (pixels in [-1, 1], or latents); cond: [B, L, D]; returns a scalar.
    """
    noise = torch.randn(x0.shape, generator=g).to(x0.device)
    if timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=g)
    timesteps = timesteps.to(x0.device)
    noisy = scheduler.add_noise(x0, noise, timesteps)
    target = noise
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(x0, noise, timesteps)
    return F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=cond).sample, target)


def train_steps(
    unet: torch.nn.Module,
    scheduler: Any,
    images: torch.Tensor,
    cond: torch.Tensor,
    labels: torch.Tensor,
    hp: dict[str, Any],
    seed: int,
) -> float:
    """AdamW on the trainable parameters; returns the mean loss of the last tenth of the steps.

    Shapes:
        images: [N, 3, H, W] in [-1, 1]; cond: [C, L, D] (one per prompt); labels: [N] indices
        into ``cond``.
    """
    params = [p for p in unet.parameters() if p.requires_grad]
    device = next(unet.parameters()).device
    opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp.get("weight_decay", 0.0))
    g = torch.Generator().manual_seed(seed)
    unet.train()
    losses = []
    for _ in range(hp["steps"]):
        idx = torch.randint(0, len(images), (hp["batch_size"],), generator=g)
        xb, cb = images[idx].to(device), cond[labels[idx]].to(device)
        loss = ddpm_loss(unet, scheduler, xb, cb, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    unet.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return float(np.mean(tail)) if tail else float("nan")


@torch.no_grad()
def eval_loss(
    unet: torch.nn.Module, scheduler: Any, images: torch.Tensor, cond: torch.Tensor
) -> float:
    """DDPM loss with fixed noise and evenly spread timesteps: comparable across models.

    Shapes:
        images: [N, 3, H, W] in [-1, 1]; cond: [1, L, D].
    """
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, scheduler.config.num_train_timesteps - 1, len(images)).long()
    device = next(unet.parameters()).device
    x, c = images.to(device), cond.expand(len(images), -1, -1).to(device)
    return float(ddpm_loss(unet, scheduler, x, c, g, t))


def fit_lora(
    unet: torch.nn.Module,
    scheduler: Any,
    hp: dict[str, Any],
    images: torch.Tensor,
    cond: torch.Tensor,
    test: torch.Tensor,
) -> tuple[Any, dict[str, float]]:
    """Add a LoRA to the frozen ``unet`` and train it on images of one prompt.

    Args:
        unet: The root UNet (modified in place: it gets the adapter).
        scheduler: DDPM scheduler.
        hp: ``rank``, ``target_modules``, ``lr``, ``steps``, ``batch_size``, ``seed``.
        images: Training images in [-1, 1].
        cond: The prompt's token states.
        test: Held-out images of the prompt for ``eval_loss``.

    Returns:
        The peft ``LoraConfig`` and labels ``final_loss``, ``eval_loss``, ``eval_gain``.

    Shapes:
        images: [N, 3, H, W]; cond: [1, L, D]; test: [M, 3, H, W].
    """
    from peft import LoraConfig

    unet.requires_grad_(False)
    # lora_alpha = rank: the applied update is exactly B @ A, what open_weights reports
    rank = hp["rank"]
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(hp["target_modules"]))
    torch.manual_seed(hp["seed"])  # the A factors' initialization
    unet.add_adapter(config)
    before = eval_loss(unet, scheduler, test, cond)  # B = 0 at init: the root's loss
    labels = torch.zeros(len(images), dtype=torch.long)
    loss = train_steps(unet, scheduler, images, cond, labels, hp, hp["seed"])
    after = eval_loss(unet, scheduler, test, cond)
    return config, {"final_loss": loss, "eval_loss": after, "eval_gain": before - after}


def lora_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The peft LoRA factors in module order (``<module>.lora_A.weight`` / ``lora_B.weight``)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def save_lora(
    folder: Path, state: dict[str, torch.Tensor], config: Any, metadata: dict[str, str]
) -> Path:
    """Save LoRA factors with diffusers' ``save_lora_weights``, atomically, as ``folder/LORA_FILE``.

    The file gets what diffusers writes (``unet.``-prefixed keys, the ``lora_adapter_metadata``
    header that its loader reads) plus ``nwa.layout`` (module order) and ``metadata``.
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from safetensors.torch import save_file

    prefix = StableDiffusionLoraLoaderMixin.unet_name
    packed = {
        f"{prefix}.{k}": sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()
    }
    header = {
        "format": "pt",
        LORA_ADAPTER_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True),
        "nwa.layout": json.dumps([f"{prefix}.{k}" for k in state]),
        **metadata,
    }

    def write(tensors: dict[str, torch.Tensor], filename: str) -> None:
        # our own writer (diffusers' API allows it) to add the layout; sorted sets and a canonical
        # header keep the bytes stable
        save_file(tensors, filename, metadata=header)
        canonical_safetensors_header(filename)

    target = folder / LORA_FILE
    with atomic_path(target) as tmp:
        StableDiffusionLoraLoaderMixin.save_lora_weights(
            tmp.parent, unet_lora_layers=state, weight_name=tmp.name, save_function=write
        )
    return target
