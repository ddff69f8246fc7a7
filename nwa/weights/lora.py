"""LoRA adapters (peft, diffusers, kohya naming) exposed as dense per-layer deltas ``B @ A``."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import torch

from nwa.errors import CorruptWeightsError, LayerNotFoundError
from nwa.files import read_regular
from nwa.weights.source import TensorInfo, WeightSource

_LORA_PATTERNS = (
    # (regex for the A/down factor, the B/up suffix replacing it)
    (re.compile(r"^(?P<layer>.+)\.lora_A(?:\.(?P<adapter>[^.]+))?\.weight$"), "lora_B"),
    (re.compile(r"^(?P<layer>.+)\.lora\.down\.weight$"), "lora.up"),
    (re.compile(r"^(?P<layer>.+)\.lora_down\.weight$"), "lora_up"),
)


def find_lora_pairs(names: list[str]) -> dict[str, tuple[str, str, str | None]]:
    """Pair LoRA factors by layer: ``{layer: (A_name, B_name, alpha_name_or_None)}``.

    Understands peft (``lora_A``/``lora_B``, with or without an adapter name), diffusers
    attention processors (``lora.down``/``lora.up``) and kohya (``lora_down``/``lora_up`` + ``alpha``).
    """
    present = set(names)
    pairs = {}
    for n in names:
        for pattern, up in _LORA_PATTERNS:
            m = pattern.match(n)
            if not m:
                continue
            layer = m["layer"]
            if up == "lora_B":
                adapter = m["adapter"]
                b = f"{layer}.lora_B.{adapter}.weight" if adapter else f"{layer}.lora_B.weight"
            else:
                b = (
                    n.replace(".lora.down.", ".lora.up.")
                    if up == "lora.up"
                    else n.replace(".lora_down.", ".lora_up.")
                )
            if b in present:
                alpha = f"{layer}.alpha"
                pairs[layer] = (n, b, alpha if alpha in present else None)
            break
    return pairs


def _delta_dtype(factor: torch.dtype) -> torch.dtype:
    """The dtype of ``B @ A``: half-precision factors are multiplied in float32 for precision."""
    return factor if factor.is_floating_point and factor.itemsize >= 4 else torch.float32


class LoraDelta(WeightSource):
    """The dense update ``scale * B @ A`` of each LoRA layer, named after the adapted layer.

    Conv LoRA factors are reshaped to 2-D first (``A``: [r, in*kh*kw], ``B``: [out, r]).
    ``scale`` is ``alpha / r`` when the file stores alpha (kohya) or an ``adapter_config.json``
    beside it gives ``lora_alpha`` (peft); otherwise 1.

    Args:
        base: The raw source holding the factors.
        apply_alpha: Multiply by ``alpha / r`` when known.
    """

    def __init__(self, base: WeightSource, apply_alpha: bool = True) -> None:
        self.base = base
        self.path = base.path
        self._pairs = find_lora_pairs(base.names())
        if not self._pairs:
            raise LayerNotFoundError(
                self.path, "no LoRA factor pairs (lora_A/lora_B, lora.down/lora.up) found"
            )
        self._config_alpha = self._peft_alpha() if apply_alpha else None
        self._apply_alpha = apply_alpha
        self._infos = {}
        for layer, (a, b, _) in self._pairs.items():
            ia, ib = base.info(a), base.info(b)
            r = ia.shape[0]
            if ib.shape[1] != r:
                raise CorruptWeightsError(
                    self.path,
                    f"LoRA factors disagree on rank: A {list(ia.shape)}, B {list(ib.shape)}",
                    tensor=layer,
                )
            in_dim = ia.numel // r
            self._infos[layer] = TensorInfo(layer, (ib.shape[0], in_dim), _delta_dtype(ia.dtype))

    def _peft_alpha(self) -> float | None:
        folder = self.path if self.path.is_dir() else self.path.parent
        cfg = folder / "adapter_config.json"
        if cfg.is_file():
            try:
                return float(json.loads(read_regular(cfg, 1 << 20))["lora_alpha"])
            except (OSError, KeyError, TypeError, ValueError, OverflowError, RecursionError):
                return None  # no usable alpha: the factors are taken as they are
        return None

    def infos(self) -> Mapping[str, TensorInfo]:
        return self._infos

    def rank(self, layer: str) -> int:
        return self.base.info(self._pairs[layer][0]).shape[0]

    def factors(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw factors ``(A, B)`` of one layer, as 2-D matrices [r, in] and [out, r]."""
        if layer not in self._pairs:
            raise self._missing(layer)
        a_name, b_name, _ = self._pairs[layer]
        a = self.base.get(a_name)
        b = self.base.get(b_name)
        return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)

    def _read(self, name: str) -> torch.Tensor:
        a, b = self.factors(name)
        dtype = _delta_dtype(a.dtype)
        delta = b.to(dtype) @ a.to(dtype)
        if self._apply_alpha:
            alpha_name = self._pairs[name][2]
            alpha = float(self.base.get(alpha_name)) if alpha_name else self._config_alpha
            if alpha is not None:
                delta = delta * (alpha / a.shape[0])
        return delta

    def metadata(self) -> dict[str, str]:
        return self.base.metadata()

    def close(self) -> None:
        self.base.close()
