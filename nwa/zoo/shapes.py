"""Images nwa draws itself: shapes x colours x textures, the same on every machine.

Every image is a function of ``(seed, split, index)`` alone: its scene (shape, colour, texture and
the nuisances: position, size, rotation, aspect, colour jitter, background, pixel noise) is drawn
from one seeded generator per split, and images are rendered in fixed chunks of
:data:`CHUNK` indices, so any subset, in any order and in any process, is bit-identical. They are
rendered at any size (antialiased from the analytic shape, not resized), so a 28-pixel ResNet and a
224-pixel ViT see the same scenes.

Attributes compose into named concepts ("red striped circle"): :data:`SHAPES` (10) x colours (10,
:data:`nwa.zoo.datasets.COLOURS`) x :data:`TEXTURES` (5) give 500 concepts, each with neighbours
that differ in one attribute. Difficulty is graded by construction: some shapes are near neighbours
at low resolution (circle, hexagon, pentagon; ellipse and circle when squashed), others stand
apart (cross, star, ring), so a classifier's accuracy depends on which classes it must tell apart.

Bump :data:`GENERATOR_VERSION` whenever a change alters a single pixel: it enters every zoo's
cache key, so zoos drawn by an older generator are never mistaken for new ones.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from nwa.zoo.images import LazyImages

GENERATOR_VERSION = 1
CHUNK = 256
SHAPES = (
    "circle",
    "ellipse",
    "triangle",
    "square",
    "pentagon",
    "hexagon",
    "star",
    "cross",
    "ring",
    "crescent",
)
TEXTURES = ("solid", "striped", "checkered", "dotted", "outlined")
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.10, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.20, 0.80),
    "orange": (1.00, 0.55, 0.00),
    "pink": (1.00, 0.45, 0.70),
    "cyan": (0.10, 0.85, 0.90),
    "brown": (0.55, 0.30, 0.10),
    "white": (1.00, 1.00, 1.00),
}
_POLYGON_SIDES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}
_UPRIGHT = {"triangle": 30, "square": 45, "pentagon": 54, "hexagon": 30, "star": 54}  # degrees
MAX_TILT = 15  # degrees: shapes stand upright, as photographed objects mostly do
_PERIOD = 0.5  # texture period in shape units (the shape spans about [-1, 1])


def concept_name(shape: int, colour: int = -1, texture: int = -1) -> str:
    """``"red striped circle"``; the solid texture and free (``-1``) attributes are left unsaid."""
    parts = [
        list(PALETTE)[colour] if colour >= 0 else "",
        TEXTURES[texture] if texture > 0 else "",
        SHAPES[shape],
    ]
    return " ".join(p for p in parts if p)


def sample_scenes(
    n: int, seed: int, classes: Sequence[Sequence[int]] | None = None
) -> dict[str, torch.Tensor]:
    """Scene parameters of ``n`` images.

    Args:
        n: Number of scenes.
        seed: Seed of the draw.
        classes: One ``(shape, colour, texture)`` triple per class, ``-1`` where the attribute is
            drawn freely; each scene's class is drawn uniformly. ``None``: every attribute free.

    Returns:
        Tensors of length ``n``: ``label`` (the class, ``-1`` without classes), ``shape``,
        ``colour``, ``texture`` (int64) and the float64 nuisances ``cx, cy, scale, angle, aspect,
        tint`` ([n, 3]), ``bright``, ``bg`` ([n, 3]), ``grad`` ([n, 2]), ``noise``.
    """
    rng = np.random.default_rng(seed)
    table = np.asarray(classes if classes else [(-1, -1, -1)], dtype=np.int64).reshape(-1, 3)
    label = rng.integers(0, len(table), n)
    # every attribute is always drawn, so the nuisances do not depend on which are fixed
    free = np.stack([rng.integers(0, k, n) for k in (len(SHAPES), len(PALETTE), len(TEXTURES))], 1)
    fixed = table[label]
    attrs = np.where(fixed >= 0, fixed, free)
    u = rng.uniform
    scale = u(0.6, 0.9, n)
    floats = {
        "scale": scale,
        "cx": u(-1, 1, n) * (0.95 - scale) * 0.8,
        "cy": u(-1, 1, n) * (0.95 - scale) * 0.8,
        "angle": u(-1, 1, n) * math.radians(MAX_TILT),
        "aspect": u(0.8, 1.0, n),
        "tint": u(-0.07, 0.07, (n, 3)),
        "bright": u(0.75, 1.0, n),
        "bg": u(0.0, 0.2, (n, 1)) + u(-0.04, 0.04, (n, 3)),
        "grad": u(-0.12, 0.12, (n, 2)),
        "noise": u(0.01, 0.05, n),
    }
    ints = {
        "label": label if classes else np.full(n, -1),
        "shape": attrs[:, 0],
        "colour": attrs[:, 1],
        "texture": attrs[:, 2],
    }
    out = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in ints.items()}
    return out | {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in floats.items()}


def _distance(kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Signed distance-like field of a shape (negative inside), in shape units."""
    r = torch.sqrt(x * x + y * y)
    if kind == "circle":
        return r - 0.9
    if kind == "ellipse":
        return torch.sqrt((x / 0.95) ** 2 + (y / 0.55) ** 2) - 1.0
    # upright: a vertex (a point of the star) at the top, a square's edges level
    theta = torch.atan2(y, x) - math.radians(_UPRIGHT.get(kind, 0))
    if kind in _POLYGON_SIDES:
        k = _POLYGON_SIDES[kind]
        sector = 2 * math.pi / k
        phi = torch.remainder(theta, sector) - sector / 2
        return r * torch.cos(phi) - 0.92 * math.cos(math.pi / k)
    if kind == "star":
        sector = 2 * math.pi / 5
        tri = torch.abs(torch.remainder(theta, sector) / sector * 2 - 1)
        return r - (0.42 + 0.55 * tri)
    if kind == "cross":
        ax, ay = torch.abs(x), torch.abs(y)
        bar = torch.minimum(torch.maximum(ax - 0.3, ay - 0.92), torch.maximum(ax - 0.92, ay - 0.3))
        return bar
    if kind == "ring":
        return torch.abs(r - 0.68) - 0.24
    if kind == "crescent":
        bite = torch.sqrt((x - 0.45) ** 2 + y * y)
        return torch.maximum(r - 0.9, 0.72 - bite)
    raise ValueError(f"unknown shape {kind!r}")


def _texture(kind: str, x: torch.Tensor, y: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Fill intensity in [0.25, 1] of a texture over the shape's own coordinates."""
    w = 2 * math.pi / _PERIOD
    if kind == "solid":
        t = torch.ones_like(x)
    elif kind == "striped":
        t = 0.5 + 0.5 * torch.tanh(4 * torch.sin(w * x))
    elif kind == "checkered":
        t = 0.5 + 0.5 * torch.tanh(4 * torch.sin(w * x) * torch.sin(w * y))
    elif kind == "dotted":
        gx = torch.remainder(x, _PERIOD) - _PERIOD / 2
        gy = torch.remainder(y, _PERIOD) - _PERIOD / 2
        t = (torch.sqrt(gx * gx + gy * gy) < _PERIOD * 0.3).to(x.dtype)
    elif kind == "outlined":
        t = (d > -0.3).to(x.dtype)
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return 0.55 + 0.45 * t


def render(scenes: dict[str, torch.Tensor], size: int, noise_seed: int) -> torch.Tensor:
    """Draw scenes at ``size`` x ``size`` pixels.

    Args:
        scenes: Output of :func:`sample_scenes` (or a slice of it).
        size: Image side in pixels.
        noise_seed: Seed of the pixel noise of this batch.

    Shapes:
        Returns uint8 ``[N, 3, size, size]``.
    """
    f = {k: v.float() if v.is_floating_point() else v for k, v in scenes.items()}
    n = len(f["shape"])
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    s, a = f["scale"].view(-1, 1, 1), f["angle"].view(-1, 1, 1)
    du, dv = u - f["cx"].view(-1, 1, 1), v - f["cy"].view(-1, 1, 1)
    cos, sin = torch.cos(a), torch.sin(a)
    x = (du * cos + dv * sin) / s
    y = (dv * cos - du * sin) / (s * f["aspect"].view(-1, 1, 1))
    # coverage: opacity ramps over one pixel across the boundary (antialiasing)
    alpha, fill = torch.empty(n, size, size), torch.empty(n, size, size)
    pixel = (2.0 / size) / s
    for i, kind in enumerate(SHAPES):
        idx = torch.nonzero(f["shape"] == i).flatten()
        if not len(idx):
            continue
        xs, ys = x[idx], y[idx]
        d = _distance(kind, xs, ys)
        alpha[idx] = torch.clamp(0.5 - d / pixel[idx], 0.0, 1.0)
        tex = f["texture"][idx]
        for j, texture in enumerate(TEXTURES):
            sel = torch.nonzero(tex == j).flatten()
            if len(sel):
                fill[idx[sel]] = _texture(texture, xs[sel], ys[sel], d[sel])
    palette = torch.tensor(list(PALETTE.values()))
    colour = (palette[f["colour"]] + f["tint"]).clamp(0, 1) * f["bright"][:, None]
    ramp = f["grad"][:, 0, None, None] * u + f["grad"][:, 1, None, None] * v  # [N, H, W]
    # uniform noise of std ``noise`` from numpy: the same bits on every platform, and cheap
    noise = np.random.default_rng(noise_seed).random((n, 3, size, size), np.float32)
    img = torch.from_numpy(noise).sub_(0.5).mul_(f["noise"].view(-1, 1, 1, 1) * 12**0.5)
    img += (f["bg"].clamp(0, 1)[:, :, None, None] + ramp[:, None]) * (1 - alpha)[:, None]
    img += colour[:, :, None, None] * (fill * alpha)[:, None]
    return img.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


class ShapeImages(LazyImages):
    """``n`` generated images of one split, drawn lazily in fixed chunks and cached.

    Args:
        n: Number of images.
        size: Image side in pixels.
        seed: Seed of the split (scenes and pixel noise).
        classes: Class definitions (see :func:`sample_scenes`); ``labels`` index into them.
        cache_bytes: Drawn chunks kept in memory (the least recently used dropped beyond it).

    Attributes:
        labels: int64 ``[n]`` class of every image of the split (not of a view).
    """

    channels = 3

    def __init__(
        self,
        n: int,
        size: int,
        seed: int,
        classes: Sequence[Sequence[int]] | None = None,
        cache_bytes: int = 1 << 30,
    ) -> None:
        super().__init__(n)
        self.size, self.seed = int(size), int(seed)
        self.scenes = sample_scenes(int(n), self.seed, classes)
        self.labels = self.scenes["label"]
        self._chunks: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._max_chunks = max(1, cache_bytes // (CHUNK * 3 * self.size * self.size))

    def _chunk(self, c: int) -> torch.Tensor:
        if c in self._chunks:
            self._chunks.move_to_end(c)
            return self._chunks[c]
        part = {k: v[c * CHUNK : (c + 1) * CHUNK] for k, v in self.scenes.items()}
        images = render(part, self.size, noise_seed=self.seed * 1_000_003 + c)
        self._chunks[c] = images
        while len(self._chunks) > self._max_chunks:
            self._chunks.popitem(last=False)
        return images

    def _load(self, index: torch.Tensor) -> torch.Tensor:
        out = torch.empty((len(index), 3, self.size, self.size), dtype=torch.uint8)
        chunk_of = index // CHUNK
        for c in torch.unique(chunk_of).tolist():
            sel = chunk_of == c
            out[sel] = self._chunk(c)[index[sel] - c * CHUNK]
        return out
