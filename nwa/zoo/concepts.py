"""Named visual concepts ("red striped circle") with prompts and images, for text-conditioned zoos.

Concepts come from:

- ``shapes`` (the default): shape x colour x texture drawn by :mod:`nwa.zoo.shapes`; up to 500,
  in the order shape, then colour, then texture (the first 40 are 4 colours x 10 shapes, the first
  100 every solid one), so any prefix has neighbours that differ in one attribute.
- ``fashion_mnist`` / ``digits``: the source's items x colours ("red sneaker"), up to 100.
- ``imagefolder:PATH``: one concept per class folder (``PATH/<concept name>/*.png``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nwa.errors import ConfigError
from nwa.zoo import datasets, shapes
from nwa.zoo.classifiers import stable_seed


@dataclass(frozen=True)
class Concept:
    """A named visual concept with a text prompt and example images.

    Attributes:
        name: Concept name, e.g. ``"red sneaker"``.
        prompt: Text prompt, e.g. ``"a red sneaker"``.
        source: Where its images come from (``shapes``, ``fashion_mnist``, ``digits`` or
            ``imagefolder:PATH``).
        item: Shape index, class index in the base source, or class folder index.
        colour: Colour name, or ``""`` for an uncoloured concept.
        texture: Texture index of a drawn concept (0 = solid).
    """

    name: str
    prompt: str
    source: str
    item: int
    colour: str = ""
    texture: int = 0

    def images(
        self, n: int, seed: int = 0, split: str = "train", size: int | None = None
    ) -> torch.Tensor:
        """``n`` images of the concept (fewer if a dataset has fewer), deterministic in ``seed``.

        Returns:
            float32 ``[n, 3, H, W]`` in ``[0, 1]`` (``H = W = size`` when given).
        """
        if self.source == "shapes":
            colour = list(datasets.COLOURS).index(self.colour)
            key = stable_seed(self.name, split, seed)
            scenes = shapes.sample_scenes(n, key, [(self.item, colour, self.texture)])
            return datasets.to_float(shapes.render(scenes, size or 28, key))
        base = datasets.load_source(self.source, size=size)
        x, y = (base.train_x, base.train_y) if split == "train" else (base.test_x, base.test_y)
        idx = torch.nonzero(y == self.item).flatten()
        g = torch.Generator().manual_seed(seed)
        imgs = datasets.take(x, idx[torch.randperm(len(idx), generator=g)[:n]])
        imgs = datasets.colourize(imgs, self.colour) if self.colour else imgs.expand(-1, 3, -1, -1)
        out = datasets.to_float(imgs)
        if size is not None and size != out.shape[-1]:
            out = F.interpolate(
                out, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return out.clamp_(0.0, 1.0)


def _shape_concepts(n: int, colours: bool) -> list[Concept]:
    palette = list(datasets.COLOURS)
    if not colours:
        return [Concept(s, f"a {s}", "shapes", i, palette[0]) for i, s in enumerate(shapes.SHAPES)]
    out = []
    for t in range(len(shapes.TEXTURES)):
        for c, colour in enumerate(palette):
            for s in range(len(shapes.SHAPES)):
                name = shapes.concept_name(s, c, t)
                out.append(Concept(name, f"a {name}", "shapes", s, colour, t))
                if len(out) == n:
                    return out
    return out


def concepts(source: str = "shapes", n: int = 40, colours: bool = True) -> list[Concept]:
    """Named concepts for class-subset and text-conditioned zoos.

    With ``colours``, items are composed with colours colour-major ("red circle", ..., "red
    crescent", "green circle", ...); drawn shapes then add textures ("red striped circle").
    Without, the items alone (drawn shapes in the first colour).

    Args:
        source: ``shapes``, ``fashion_mnist``, ``digits`` or ``imagefolder:PATH``.
        n: Number of concepts.
        colours: Compose item x colour (x texture for shapes); ignored for image folders.

    Raises:
        ConfigError: Unknown source or more concepts than it can make.
    """
    if source.startswith(datasets.FOLDER):
        names = datasets.class_names(source)
        made = [Concept(name, f"a {name}", source, i) for i, name in enumerate(names)]
    elif source == "shapes":
        made = _shape_concepts(
            len(shapes.SHAPES) * len(datasets.COLOURS) * len(shapes.TEXTURES), colours
        )
    elif source in ("fashion_mnist", "digits"):
        items = datasets.FASHION_ITEMS if source == "fashion_mnist" else datasets.DIGIT_NAMES
        made = [Concept(name, f"a {name}", source, i) for i, name in enumerate(items)]
        if colours:
            made = [
                Concept(f"{c} {name}", f"a {c} {name}", source, i, c)
                for c in datasets.COLOURS
                for i, name in enumerate(items)
            ]
    else:
        raise ConfigError(
            f"concepts: source {source!r} must be shapes, fashion_mnist, digits or imagefolder:PATH"
        )
    if not 1 <= n <= len(made):
        raise ConfigError(
            f"concepts: asked for {n}, {source!r} makes 1..{len(made)} (colours={colours})"
        )
    return made[:n]
