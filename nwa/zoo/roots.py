"""Where a vision tree's root comes from: a random initialization, timm's pretrained weights, a
Hugging Face Hub id, or a local weights file.

``root_weights`` values:

- ``random``: a seeded random initialization (then pretrained on the zoo's source if the recipe
  asks for ``root_steps``);
- ``timm``: timm's own pretrained weights for the architecture's tag (``resnet18.a1_in1k``; a
  bare name takes timm's default tag), from the Hugging Face cache (``HF_HOME``) or the Hub;
- ``hf-hub:ORG/NAME[@REVISION]``: a Hub repo holding the weights (a timm repo such as
  ``hf-hub:timm/resnet18.a1_in1k``, or any repo of timm-compatible tensors);
- a path: a weights file or folder (anything :func:`nwa.weights.io.open_weights` reads).

A head whose class count differs from the zoo's is re-initialised, and the root record says so;
a first convolution pretrained on 3 channels is adapted to grayscale sources by timm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nwa.errors import ConfigError, WeightsError
from nwa.zoo.classifiers import ARCHS, build_model, finish_model, timm_model
from nwa.zoo.hub import HUB, model_path


def check(value: str, arch: str) -> str | None:
    """Why ``value`` cannot give ``arch`` its root weights, or ``None`` when it can (no I/O for
    Hub ids)."""
    if value == "random":
        return None
    if value == "timm":
        return (
            f"root_weights 'timm' needs a timm model name, not the built-in row {arch!r}"
            if arch in ARCHS
            else None
        )
    if value.startswith(HUB):
        return (
            None
            if len(value[len(HUB) :].split("@")[0].split("/")) >= 2
            else f"{value}: not a Hub id"
        )
    if not Path(value).expanduser().exists():
        return f"root_weights {value!r}: no such file or folder (nor random, timm, hf-hub:ORG/NAME)"
    return None


def check_arch(arch: str, in_chans: int, size: int) -> str | None:
    """Why ``arch`` cannot classify ``size``-pixel images, or ``None``. Built on the meta device:
    no memory and no time, even for a ViT-L."""
    try:
        with torch.device("meta"):
            model = build_model(arch, 2, in_chans, size)
    except ConfigError as e:
        return str(e)
    except Exception as e:
        return f"{arch} cannot be built for {size}-pixel images ({e})"
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = patch[0] if isinstance(patch, tuple) else patch
    if patch and size % patch:
        return f"{arch} patch size {patch} does not divide the {size}-pixel images"
    return None


def weights_key(value: str, arch: str) -> str:
    """What identifies a root's weights in a zoo's cache key (no I/O beyond a file's size)."""
    if value == "timm":
        return f"timm:{arch}"
    if value.startswith(HUB) or value == "random":
        return value
    path = Path(value).expanduser().resolve()
    size = (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if path.is_dir()
        else (path.stat().st_size if path.exists() else -1)
    )
    return f"{path}:{size}"


def _state(spec: str) -> tuple[dict[str, torch.Tensor], str]:
    path = model_path(spec)
    try:
        from nwa.weights.io import open_weights

        with open_weights(path, lora=False) as src:
            return {n: src.get(n) for n in src.names()}, str(path)
    except WeightsError as e:
        raise ConfigError(str(e)) from None


def _fit(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> str:
    """Load ``state`` into ``model`` strictly, except its classifier head, which stays as
    initialised when the file has none or one of another class count; says which."""
    head = {
        f"{n}.{p}"
        for n, m in model.named_modules()
        if m is model.get_classifier()
        for p in ("weight", "bias")
    }
    note = "loaded"
    for key, value in model.state_dict().items():
        if key in head and (key not in state or state[key].shape != value.shape):
            old = f"{state[key].shape[0]}" if key in state else "no"
            note = f"re-initialised ({old} -> {value.shape[0]} classes)"
            continue
        if key not in state:
            if key.endswith("num_batches_tracked"):
                continue
            raise ConfigError(f"{where}: has no tensor {key!r} of the model")
        if state[key].shape != value.shape:
            raise ConfigError(
                f"{where} [{key}]: shape {tuple(state[key].shape)}, the model's {tuple(value.shape)}"
            )
        value.copy_(state[key])
    return note


def _adapt(
    model: nn.Module, state: dict[str, torch.Tensor], in_chans: int
) -> dict[str, torch.Tensor]:
    """A checkpoint in the model's own terms: timm's conversion for its family (key names, a
    ViT's position embedding resampled to the input size) and a first convolution summed or
    repeated to the input's channels."""
    import sys

    from timm.models import adapt_input_conv

    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if convert is not None and type(model).__module__.startswith("timm."):
        state = convert(dict(state), model)
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    for name in [first] if isinstance(first, str) else first or []:
        key = f"{name}.weight"
        if key in state and state[key].ndim == 4 and state[key].shape[1] != in_chans:
            state[key] = adapt_input_conv(in_chans, state[key], base_chans=state[key].shape[1])
    return state


def root_model(
    arch: str, weights: str, num_classes: int, in_chans: int, img_size: int
) -> tuple[nn.Module, dict[str, Any]]:
    """A tree root of ``arch`` with its weights from ``weights`` (see the module docstring).

    Returns:
        The model and what the root record says of it: ``init`` (where the weights came from)
        and ``head`` (``loaded``, ``re-initialised (1000 -> 10 classes)`` or ``random``).

    Raises:
        ConfigError: Weights that cannot be fetched or do not fit the architecture (one line).
    """
    if weights == "timm":
        return _timm_pretrained(arch, num_classes, in_chans, img_size)
    model = build_model(arch, num_classes, in_chans, img_size)
    if weights == "random":
        return model, {"init": "random", "head": "random"}
    state, where = _state(weights)
    try:
        state = _adapt(model, state, in_chans)
    except Exception as e:  # a family's converter meeting another family's checkpoint
        raise ConfigError(f"{where}: not a {arch} checkpoint ({type(e).__name__}: {e})") from None
    with torch.no_grad():
        return model, {"init": weights, "head": _fit(model, state, where)}


def _timm_pretrained(
    arch: str, num_classes: int, in_chans: int, img_size: int
) -> tuple[nn.Module, dict[str, Any]]:
    """timm's own pretrained weights for the tag (its loader adapts channels, head and ViT
    position embeddings)."""
    kwargs = {"pretrained": True, "num_classes": num_classes, "in_chans": in_chans}
    try:
        model = timm_model(arch, img_size=img_size, **kwargs)
    except ConfigError:
        raise
    except Exception as e:  # timm / huggingface_hub errors: one line
        text = " ".join(str(e).split())[:240]
        raise ConfigError(
            f"root_weights 'timm' for {arch}: cannot load its pretrained weights ({type(e).__name__}: {text})"
        ) from None
    finish_model(model, in_chans, img_size)
    cfg = model.pretrained_cfg
    tag = f"{cfg.get('architecture', arch)}.{cfg.get('tag')}" if cfg.get("tag") else arch
    pre = cfg.get("num_classes")
    head = (
        "loaded"
        if pre == num_classes
        else f"re-initialised ({pre or 'no'} -> {num_classes} classes)"
    )
    return model, {"init": f"timm:{tag}", "head": head}
