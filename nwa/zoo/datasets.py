"""Image sources for zoo recipes, with human class names, and composed named concepts.

Sources (``load_source(name)``):

- ``fashion_mnist``: 10 classes, 1x28x28. Read offline from the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, or ``$NWA_FASHION_MNIST``);
  without it, torchvision downloads it into ``$NWA_HOME/data`` (needs internet).
- ``fashion_colours``: Fashion-MNIST items x colours ("red sneaker"), 3x28x28, up to 100 classes,
  colour-major (the first 40 classes are 4 colours x 10 items). Each image gets one colour of the
  classes asked for.
- ``digits``: scikit-learn's 8x8 digits (1,797 images, offline), 10 classes.
- ``cifar10`` / ``cifar100``: torchvision download into ``$NWA_HOME/data`` (needs internet).

Named concepts for text-conditioned zoos (``concepts(n=40)``) compose item x colour; each
:class:`Concept` has a ``name`` ("red sneaker"), a ``prompt`` ("a red sneaker") and
``images(n, seed)`` giving colourized training images of that concept.

Images are uint8 tensors ``[N, C, H, W]``; :func:`to_float` maps them to ``[0, 1]``.
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nwa.errors import ConfigError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_ITEMS = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COLOURS: dict[str, tuple[float, float, float]] = {
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
SOURCES = ("fashion_mnist", "fashion_colours", "digits", "cifar10", "cifar100")
SHAPES = {
    "fashion_mnist": (1, 28, 28),
    "fashion_colours": (3, 28, 28),
    "digits": (1, 8, 8),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
}
CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
_N_CLASSES = {
    "fashion_mnist": 10,
    "fashion_colours": 10 * len(COLOURS),
    "digits": 10,
    "cifar10": 10,
    "cifar100": 100,
}


@dataclass(frozen=True)
class ImageData:
    """An image classification source in memory.

    Attributes:
        name: Source name.
        classes: Human class names; labels index into it.
        train_x: uint8 ``[N, C, H, W]`` training images.
        train_y: int64 ``[N]`` labels.
        test_x: uint8 ``[M, C, H, W]`` test images.
        test_y: int64 ``[M]`` labels.
    """

    name: str
    classes: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)


def nwa_home() -> Path:
    """``$NWA_HOME`` (default ``~/.cache/nwa``): zoo cache and downloaded data."""
    return Path(os.environ.get("NWA_HOME", "~/.cache/nwa")).expanduser()


def n_classes(source: str) -> int:
    """How many classes a source offers (without loading it)."""
    if source not in _N_CLASSES:
        raise ConfigError(f"unknown image source {source!r}; known: {', '.join(SOURCES)}")
    return _N_CLASSES[source]


def class_names(source: str, n: int | None = None) -> list[str]:
    """Human names of the first ``n`` classes of a source (loads only CIFAR-100 to know them)."""
    total = n_classes(source)
    n = total if n is None else n
    if source == "fashion_mnist":
        names = FASHION_ITEMS
    elif source == "fashion_colours":
        names = [f"{c} {item}" for c in COLOURS for item in FASHION_ITEMS]
    elif source == "digits":
        names = DIGIT_NAMES
    elif source == "cifar10":
        names = CIFAR10_NAMES
    else:
        names = load_source(source).classes
    return list(names[:n])


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


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_files() -> Path | None:
    for folder in (os.environ.get("NWA_FASHION_MNIST"), DEBIAN_FASHION_MNIST):
        if folder and (Path(folder) / "train-images-idx3-ubyte.gz").is_file():
            return Path(folder)
    raw = nwa_home() / "data" / "FashionMNIST" / "raw"
    return raw if (raw / "train-images-idx3-ubyte.gz").is_file() else None


def _load_fashion() -> ImageData:
    folder = _fashion_files()
    if folder is None:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(nwa_home() / "data"), train=True, download=True)
        except Exception as e:
            raise ConfigError(
                f"Fashion-MNIST not found in {DEBIAN_FASHION_MNIST} and the download failed ({e}); "
                "install it with `apt-get install dataset-fashion-mnist` or set $NWA_FASHION_MNIST"
            ) from None
        folder = _fashion_files()
        assert folder is not None
    arrays = [
        _read_idx(folder / f"{split}-{kind}-ubyte.gz")
        for split in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    ]
    xs = [torch.from_numpy(a.copy()) for a in arrays]
    return ImageData(
        "fashion_mnist",
        list(FASHION_ITEMS),
        xs[0][:, None],
        xs[1].long(),
        xs[2][:, None],
        xs[3].long(),
    )


def _load_digits() -> ImageData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8))[:, None]
    y = torch.from_numpy(d.target).long()
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    cut = int(0.8 * len(y))
    tr, te = perm[:cut], perm[cut:]
    return ImageData("digits", list(DIGIT_NAMES), x[tr], y[tr], x[te], y[te])


def _load_cifar(name: str) -> ImageData:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = str(nwa_home() / "data")
    try:
        train, test = cls(root, train=True, download=True), cls(root, train=False, download=True)
    except Exception as e:
        raise ConfigError(f"{name}: torchvision could not download it into {root} ({e})") from None

    def arrays(ds: object) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return x, torch.as_tensor(ds.targets).long()

    names = [c.replace("_", " ") for c in train.classes]
    return ImageData(name, names, *arrays(train), *arrays(test))


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
    parts = []
    for split, (x, y) in {
        "train": (base.train_x, base.train_y),
        "test": (base.test_x, base.test_y),
    }.items():
        rng = np.random.default_rng(0 if split == "train" else 1)
        pick = torch.from_numpy(rng.integers(0, len(colours), len(y)))
        out = torch.empty((len(y), 3, *x.shape[2:]), dtype=torch.uint8)
        for ci, colour in enumerate(colours):
            sel = pick == ci
            out[sel] = colourize(x[sel], colour)
        parts += [out, pick * items + y]
    names = [f"{c} {item}" for c in colours for item in base.classes]
    data = ImageData(f"{base.name}_colours", names, *parts)
    return _first_classes(data, n)


def _first_classes(data: ImageData, n: int) -> ImageData:
    if n == len(data.classes):
        return data
    tr, te = data.train_y < n, data.test_y < n
    return ImageData(
        data.name,
        data.classes[:n],
        data.train_x[tr],
        data.train_y[tr],
        data.test_x[te],
        data.test_y[te],
    )


@functools.lru_cache(maxsize=4)
def load_source(name: str, classes: int | None = None) -> ImageData:
    """Load an image source (cached per process).

    Args:
        name: One of :data:`SOURCES`.
        classes: Keep only the first ``classes`` classes (for ``fashion_colours``: compose just
            enough colours for them). ``None`` keeps all.

    Raises:
        ConfigError: Unknown source, too many classes asked for, or data unavailable.
    """
    total = n_classes(name)
    n = total if classes is None else int(classes)
    if not 2 <= n <= total:
        raise ConfigError(f"source {name!r} has {total} classes; asked for {n} (need 2..{total})")
    if name == "fashion_mnist":
        return _first_classes(_load_fashion(), n)
    if name == "fashion_colours":
        return _compose(_load_fashion(), n)
    if name == "digits":
        return _first_classes(_load_digits(), n)
    return _first_classes(_load_cifar(name), n)


@dataclass(frozen=True)
class Concept:
    """A named visual concept ("red sneaker") with a text prompt and example images.

    Attributes:
        name: Concept name, e.g. ``"red sneaker"``.
        prompt: Text prompt, e.g. ``"a red sneaker"``.
        source: Base image source (``fashion_mnist`` or ``digits``).
        item: Class index in the base source.
        colour: Colour name, or ``""`` for an uncoloured concept.
    """

    name: str
    prompt: str
    source: str
    item: int
    colour: str = ""

    def images(
        self, n: int, seed: int = 0, split: str = "train", size: int | None = None
    ) -> torch.Tensor:
        """``n`` distinct images of the concept (fewer if the source has fewer), deterministic in ``seed``.

        Returns:
            float32 ``[n, 3, H, W]`` in ``[0, 1]`` (``H = W = size`` when given).
        """
        base = load_source(self.source)
        x, y = (base.train_x, base.train_y) if split == "train" else (base.test_x, base.test_y)
        idx = torch.nonzero(y == self.item).flatten()
        g = torch.Generator().manual_seed(seed)
        idx = idx[torch.randperm(len(idx), generator=g)[:n]]
        imgs = x[idx]
        imgs = colourize(imgs, self.colour) if self.colour else imgs.expand(-1, 3, -1, -1)
        out = to_float(imgs)
        if size is not None and size != out.shape[-1]:
            out = torch.nn.functional.interpolate(
                out, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return out.clamp_(0.0, 1.0)


def concepts(source: str = "fashion_mnist", n: int = 40, colours: bool = True) -> list[Concept]:
    """Named concepts for class-subset and text-conditioned zoos.

    With ``colours``, items are composed with colours colour-major ("red t-shirt", ..., "red ankle
    boot", "green t-shirt", ...), so ``n=40`` gives 4 colours x 10 items and at most 100 exist for a
    10-class source. Without, the source's own class names.

    Args:
        source: ``fashion_mnist`` or ``digits`` (grayscale sources that can be colourized).
        n: Number of concepts.
        colours: Compose item x colour.

    Raises:
        ConfigError: Unknown source or more concepts than it can make.
    """
    if source not in ("fashion_mnist", "digits"):
        raise ConfigError(f"concepts: source {source!r} must be fashion_mnist or digits")
    items = FASHION_ITEMS if source == "fashion_mnist" else DIGIT_NAMES
    limit = len(items) * (len(COLOURS) if colours else 1)
    if not 1 <= n <= limit:
        raise ConfigError(
            f"concepts: asked for {n}, {source!r} makes 1..{limit} (colours={colours})"
        )
    if not colours:
        return [Concept(name, f"a {name}", source, i) for i, name in enumerate(items)][:n]
    out = [
        Concept(f"{c} {name}", f"a {c} {name}", source, i, c)
        for c in COLOURS
        for i, name in enumerate(items)
    ]
    return out[:n]
