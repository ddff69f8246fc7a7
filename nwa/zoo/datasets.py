"""Image sources for zoo recipes, with human class names.

Sources (``load_source(name)``), the first two available on every machine:

- ``shapes`` (the default): images nwa draws itself (:mod:`nwa.zoo.shapes`), 10 shape classes
  ("circle", "hexagon", ...) in any of 10 colours and 5 textures; 3 channels, drawn at any size
  (28 px unless asked), 25,000 training and 5,000 test images (``n_train`` / ``n_test`` options).
  The same images on every machine, from the generator version alone.
- ``digits``: scikit-learn's 8x8 digits (1,797 images), 10 classes.
- ``shapes_colours``: shapes x colours ("red circle"), up to 100 classes, colour-major (the first
  40 are 4 colours x 10 shapes).
- ``fashion_mnist``: 10 classes, 1x28x28: ``$NWA_FASHION_MNIST``, the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), else torchvision's copy in
  ``$NWA_HOME/data`` (downloaded when online). ``fashion_colours``: items x colours, as above.
- ``mnist``, ``kmnist``, ``cifar10``, ``cifar100``, ``svhn``, ``stl10``: torchvision datasets,
  read from ``$NWA_HOME/data``, downloaded there on first use when online.
- ``imagefolder:PATH``: ``PATH/<class>/*.png|jpg|...`` (a stable 80/20 split by file name) or
  ``PATH/train/<class>/...`` with ``PATH/test`` (or ``val``); decoded per batch at the asked size.

A source that is not on this machine and cannot be downloaded fails with one line saying how to
get it: a zoo is never silently built from other data. Images are uint8 ``[N, C, H, W]`` (tensors,
or :class:`~nwa.zoo.images.LazyImages` read per batch with :func:`~nwa.zoo.images.take`);
:func:`to_float` maps them to ``[0, 1]``.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nwa.errors import ConfigError
from nwa.zoo import external, shapes
from nwa.zoo.external import DIGIT_NAMES, FASHION_ITEMS, nwa_home  # noqa: F401 (re-exported)
from nwa.zoo.images import Images, take

COLOURS = shapes.PALETTE
FOLDER = "imagefolder:"
GENERATED = ("shapes", "shapes_colours")
SOURCES = (
    *GENERATED,
    "digits",
    "fashion_mnist",
    "fashion_colours",
    *sorted(set(external.TORCHVISION) - {"fashion_mnist"}),
    f"{FOLDER}PATH",
)
OPTIONS: dict[str, dict[str, Any]] = {
    "generated": {"n_train": 25000, "n_test": 5000},
    "folder": {"test_fraction": 0.2},
}
DEFAULT_SIZE = {"generated": 28, "folder": 64}
_SEEDS = {"train": 1, "test": 2}


@dataclass(frozen=True)
class ImageData:
    """An image classification source in memory (or read lazily).

    Attributes:
        name: Source name.
        classes: Human class names; labels index into them.
        train_x: uint8 ``[N, C, H, W]`` training images (tensor or lazy set).
        train_y: int64 ``[N]`` labels.
        test_x: uint8 ``[M, C, H, W]`` test images.
        test_y: int64 ``[M]`` labels.
        origin: Where the images came from (a folder, a generator and its version).
    """

    name: str
    classes: list[str]
    train_x: Images
    train_y: torch.Tensor
    test_x: Images
    test_y: torch.Tensor
    origin: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)


def kind(source: str) -> str:
    """``generated``, ``digits``, ``fashion``, ``fashion_colours``, ``torchvision`` or ``folder``.

    Raises:
        ConfigError: An unknown source, listing the known ones.
    """
    if source in GENERATED:
        return "generated"
    if source.startswith(FOLDER):
        return "folder"
    if source in ("digits", "fashion_colours"):
        return source
    if source == "fashion_mnist":
        return "fashion"
    if source in external.TORCHVISION:
        return "torchvision"
    raise ConfigError(f"unknown image source {source!r}; known: {', '.join(SOURCES)}")


def _folder(source: str) -> Path:
    return Path(source[len(FOLDER) :]).expanduser()


def n_classes(source: str) -> int:
    """How many classes a source offers (without loading it)."""
    k = kind(source)
    if k == "generated":
        return len(shapes.SHAPES) * (len(COLOURS) if source == "shapes_colours" else 1)
    if k == "folder":
        return len(external.folder_classes(_folder(source)))
    if k == "fashion_colours":
        return len(FASHION_ITEMS) * len(COLOURS)
    return 10 if k in ("digits", "fashion") else external.TORCHVISION[source][1]


def channels(source: str) -> int:
    """Channels of the source's images."""
    k = kind(source)
    if k in ("digits", "fashion"):
        return 1
    return external.TORCHVISION[source][2] if k == "torchvision" else 3


def native_size(source: str) -> int:
    """The side the source's images come at (drawn or decoded ones: their default size)."""
    k = kind(source)
    if k in DEFAULT_SIZE:
        return DEFAULT_SIZE[k]
    return 8 if k == "digits" else external.TORCHVISION.get(source, (0, 0, 0, 28))[3]


def options_of(source: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """A source's options with defaults filled in.

    Raises:
        ConfigError: An option the source does not take, or a bad value.
    """
    allowed = OPTIONS.get(kind(source), {})
    given = dict(options or {})
    if unknown := sorted(set(given) - set(allowed)):
        takes = ", ".join(allowed) or "none"
        raise ConfigError(f"source {source!r} has no option {unknown[0]!r} (it takes: {takes})")
    out = allowed | given
    for key in ("n_train", "n_test"):
        if key in out and (not isinstance(out[key], int) or out[key] < 1):
            raise ConfigError(f"source option {key} must be a positive integer, got {out[key]!r}")
    if "test_fraction" in out and not 0 < float(out["test_fraction"]) < 1:
        raise ConfigError(
            f"source option test_fraction must be in (0, 1), got {out['test_fraction']}"
        )
    return out


def source_key(source: str, options: dict[str, Any] | None = None) -> str:
    """What identifies a source's data in a zoo's cache key: the generator version for drawn
    images, the absolute folder for image folders, the name otherwise."""
    k = kind(source)
    opts = options_of(source, options)
    extra = "".join(f",{k}={v}" for k, v in sorted(opts.items()))
    if k == "generated":
        return f"{source}@nwa.zoo.shapes-v{shapes.GENERATOR_VERSION}{extra}"
    if k == "folder":
        return f"{FOLDER}{_folder(source).resolve()}{extra}"
    return source


def class_names(source: str, n: int | None = None) -> list[str]:
    """Human names of the first ``n`` classes of a source (without loading it)."""
    k = kind(source)
    if k == "generated":
        names = [shapes.concept_name(s, c) for s, c, _ in _shape_classes(source, None)]
    elif k == "fashion_colours":
        names = [f"{c} {item}" for c in COLOURS for item in FASHION_ITEMS]
    elif k in ("fashion", "digits"):
        names = FASHION_ITEMS if k == "fashion" else DIGIT_NAMES
    elif k == "folder":
        names = [c.replace("_", " ") for c in external.folder_classes(_folder(source))]
    else:
        names = external.TORCHVISION[source][4]
    return list(names[: n_classes(source) if n is None else n])


def _shape_classes(source: str, n: int | None) -> list[tuple[int, int, int]]:
    """(shape, colour, texture) of each class of a drawn source; -1 = drawn per image."""
    if source == "shapes":
        out = [(s, -1, -1) for s in range(len(shapes.SHAPES))]
    else:
        out = [(s, c, -1) for c in range(len(COLOURS)) for s in range(len(shapes.SHAPES))]
    return out[:n] if n else out


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in ``[0, 1]``."""
    return x.float().div_(255.0)


def corrupt(x: torch.Tensor, sigma: float = 0.3, seed: int = 0) -> torch.Tensor:
    """The fixed robustness corruption: additive Gaussian noise of std ``sigma``, clipped to [0, 1].

    Args:
        x: Float images in ``[0, 1]``, ``[N, C, H, W]``.
        sigma: Noise standard deviation.
        seed: Noise seed (fixed, so every model sees the same corrupted images).
    """
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp_(0.0, 1.0)


def colour_names(n_colours: int) -> list[str]:
    """The first ``n_colours`` colour names of the palette."""
    if not 1 <= n_colours <= len(COLOURS):
        raise ConfigError(f"n_colours={n_colours}: the palette has 1..{len(COLOURS)} colours")
    return list(COLOURS)[:n_colours]


def colourize(x: torch.Tensor, colour: str) -> torch.Tensor:
    """Tint grayscale uint8 images ``[N, 1, H, W]`` with a named colour -> uint8 ``[N, 3, H, W]``."""
    rgb = torch.tensor(COLOURS[colour]).view(1, 3, 1, 1)
    return (x.float() * rgb).round().clamp(0, 255).to(torch.uint8)


def _compose(base: ImageData, n: int) -> ImageData:
    items = len(base.classes)
    colours = colour_names(-(-n // items))
    parts: list[torch.Tensor] = []
    for split, (x, y) in {
        "train": (base.train_x, base.train_y),
        "test": (base.test_x, base.test_y),
    }.items():
        rng = np.random.default_rng(0 if split == "train" else 1)
        pick = torch.from_numpy(rng.integers(0, len(colours), len(y)))
        out = torch.empty((len(y), 3, *x.shape[2:]), dtype=torch.uint8)
        for ci, colour in enumerate(colours):
            sel = pick == ci
            out[sel] = colourize(take(x, sel), colour)
        parts += [out, pick * items + y]
    names = [f"{c} {item}" for c in colours for item in base.classes]
    data = ImageData(f"{base.name}_colours", names, *parts, origin=base.origin)
    return _first_classes(data, n)


def _first_classes(data: ImageData, n: int) -> ImageData:
    if n == len(data.classes):
        return data
    tr, te = torch.nonzero(data.train_y < n).flatten(), torch.nonzero(data.test_y < n).flatten()
    return ImageData(
        data.name,
        data.classes[:n],
        data.train_x[tr],
        data.train_y[tr],
        data.test_x[te],
        data.test_y[te],
        data.origin,
    )


def _generated(source: str, n: int, size: int, opts: dict[str, Any]) -> ImageData:
    table = _shape_classes(source, n)
    splits = [
        shapes.ShapeImages(opts[f"n_{split}"], size, seed, table) for split, seed in _SEEDS.items()
    ]
    origin = f"drawn by nwa.zoo.shapes v{shapes.GENERATOR_VERSION} (seeds {tuple(_SEEDS.values())})"
    names = class_names(source, n)
    return ImageData(
        source, names, splits[0], splits[0].labels, splits[1], splits[1].labels, origin
    )


def load_source(
    name: str,
    classes: int | None = None,
    size: int | None = None,
    options: dict[str, Any] | None = None,
) -> ImageData:
    """Load an image source (cached per process).

    Args:
        name: One of :data:`SOURCES`.
        classes: Keep only the first ``classes`` classes (for composed sources: compose just
            enough colours for them). ``None`` keeps all.
        size: Side of drawn images and of decoded folder images (default 28 and 64); the other
            sources come at their own size.
        options: Source options (``n_train``, ``n_test`` for drawn sources; ``test_fraction``
            for image folders without train/test subfolders).

    Raises:
        ConfigError: Unknown source, too many classes asked for, or data unavailable.
    """
    opts = tuple(sorted(options_of(name, options).items()))
    return _load(name, classes, size, opts)


@functools.lru_cache(maxsize=4)
def _load(name: str, classes: int | None, size: int | None, opts: tuple) -> ImageData:
    k, options = kind(name), dict(opts)
    total = n_classes(name)
    n = total if classes is None else int(classes)
    if not 2 <= n <= total:
        raise ConfigError(f"source {name!r} has {total} classes; asked for {n} (need 2..{total})")
    side = int(size or DEFAULT_SIZE.get(k, 0))
    if k == "generated":
        return _generated(name, n, side, options)
    if k == "folder":
        loaded = external.load_folder(_folder(name), side, options["test_fraction"])
    elif k == "digits":
        loaded = external.load_digits()
    elif k in ("fashion", "fashion_colours"):
        loaded = external.load_fashion()
    else:
        loaded = external.load_torchvision(name)
    names, x, y, tx, ty, origin = loaded
    data = ImageData(
        "fashion_mnist" if k == "fashion_colours" else name, names, x, y, tx, ty, origin
    )
    return _compose(data, n) if k == "fashion_colours" else _first_classes(data, n)


def data_record(
    data: ImageData, source: str, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a zoo records about its images: source, origin, sizes and a content fingerprint.

    The fingerprint hashes the labels and the images (file names and sizes for folders, the
    scenes for drawn images), so two zoos built from different copies of "the same" data differ.
    """
    h = hashlib.sha256()
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        h.update(y.numpy().tobytes())
        if isinstance(x, torch.Tensor):
            h.update(x.contiguous().numpy().tobytes())
        elif isinstance(x, shapes.ShapeImages):
            h.update(b"".join(v.numpy().tobytes() for v in x.scenes.values()))
            h.update(str(x.size).encode())
        elif isinstance(x, external.FolderImages):
            h.update(external.folder_digest(x).encode())
    return {
        "source": source,
        "key": source_key(source, options),
        "origin": data.origin,
        "classes": len(data.classes),
        "image_shape": list(data.shape),
        "train_images": len(data.train_y),
        "test_images": len(data.test_y),
        "fingerprint": h.hexdigest()[:16],
    }
