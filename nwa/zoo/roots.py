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


def _state(spec: str) -> tuple[dict[str, torch.Tensor], str]:
    path = model_path(spec)
    try:
        from nwa.weights.io import open_weights

        with open_weights(path, lora=False) as src:
            return {n: src.get(n) for n in src.names()}, str(path)
    except WeightsError as e:
        raise ConfigError(str(e)) from None


def _fit(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> int | None:
    """Load ``state`` into a built-in row, leaving a head of another class count as initialised;
    returns that head's class count (``None`` when it was loaded)."""
    head = {
        f"{n}.{p}"
        for n, m in model.named_modules()
        if m is model.get_classifier()
        for p in ("weight", "bias")
    }
    own = model.state_dict()
    found = None
    for key, value in own.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):
                continue
            raise ConfigError(f"{where}: has no tensor {key!r} of the model")
        if state[key].shape != value.shape:
            if key in head:
                found = int(state[key].shape[0])
                continue
            raise ConfigError(
                f"{where} [{key}]: shape {tuple(state[key].shape)}, the model's {tuple(value.shape)}"
            )
        value.copy_(state[key])
    return found


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
    if weights == "random":
        return build_model(arch, num_classes, in_chans, img_size), {
            "init": "random",
            "head": "random",
        }
    if weights == "timm":
        return _timm_pretrained(arch, num_classes, in_chans, img_size)
    state, where = _state(weights)
    if arch in ARCHS:
        model = build_model(arch, num_classes, in_chans, img_size)
        with torch.no_grad():
            head = _fit(model, state, where)
        return model, {"init": weights, "head": _head_note(head, num_classes)}
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    classifier = cfg.get("classifier", "head")
    key = f"{classifier}.weight"
    head = int(state[key].shape[0]) if key in state else int(cfg.get("num_classes", num_classes))
    overlay = {"state_dict": state, "num_classes": head, "classifier": classifier}
    model = _load(arch, weights, num_classes, in_chans, img_size, overlay)
    return model, {
        "init": weights,
        "head": _head_note(head if head != num_classes else None, num_classes),
    }


def _timm_pretrained(
    arch: str, num_classes: int, in_chans: int, img_size: int
) -> tuple[nn.Module, dict[str, Any]]:
    model = _load(arch, "timm", num_classes, in_chans, img_size, None)
    cfg = model.pretrained_cfg
    tag = f"{cfg.get('architecture', arch)}.{cfg.get('tag')}" if cfg.get("tag") else arch
    pre = cfg.get("num_classes")
    head = pre if pre and pre != num_classes else None
    return model, {"init": f"timm:{tag}", "head": _head_note(head, num_classes)}


def _load(
    arch: str, what: str, num_classes: int, in_chans: int, img_size: int, overlay: dict | None
) -> nn.Module:
    kwargs: dict[str, Any] = {"pretrained": True, "num_classes": num_classes, "in_chans": in_chans}
    if overlay:
        kwargs["pretrained_cfg_overlay"] = overlay
    try:
        model = timm_model(arch, img_size=img_size, **kwargs)
    except ConfigError:
        raise
    except Exception as e:  # timm / huggingface_hub / load_state_dict errors: one line
        text = " ".join(str(e).split())[:240]
        raise ConfigError(
            f"root_weights {what!r} for {arch}: cannot load ({type(e).__name__}: {text})"
        ) from None
    if overlay:  # do not keep a second copy of every tensor in the model's config
        model.pretrained_cfg.pop("state_dict", None)
    return finish_model(model, in_chans, img_size)


def _head_note(pretrained_classes: int | None, num_classes: int) -> str:
    if pretrained_classes is None:
        return "loaded"
    return f"re-initialised ({pretrained_classes} -> {num_classes} classes)"
