"""Image sources nwa reads from elsewhere: Debian's Fashion-MNIST, scikit-learn's digits,
torchvision datasets (downloaded into ``$NWA_HOME/data``) and image folders.

Each loader returns ``(classes, train_x, train_y, test_x, test_y, origin)``: uint8 images
``[N, C, H, W]`` (a tensor, or a :class:`~nwa.zoo.images.LazyImages` for folders), int64 labels,
and where the data came from, recorded in the zoo.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nwa.atomic import file_lock
from nwa.errors import ConfigError
from nwa.zoo.images import LazyImages

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
CIFAR10_NAMES = "airplane automobile bird cat deer dog frog horse ship truck"
STL10_NAMES = "airplane bird car cat deer dog horse monkey ship truck"
KMNIST_NAMES = "o ki su tsu na ha ma ya re wo"
# CIFAR-100's fine labels in torchvision's order (its meta file), so configs plan without the data
CIFAR100_NAMES = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge
bus butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab
crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard
lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom
oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider
squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train
trout tulip turtle wardrobe whale willow_tree wolf woman worm"""
# name -> (torchvision class, classes, channels, side, class names)
TORCHVISION: dict[str, tuple[str, int, int, int, list[str]]] = {
    "mnist": ("MNIST", 10, 1, 28, DIGIT_NAMES),
    "kmnist": ("KMNIST", 10, 1, 28, KMNIST_NAMES.split(" ")),
    "fashion_mnist": ("FashionMNIST", 10, 1, 28, FASHION_ITEMS),
    "cifar10": ("CIFAR10", 10, 3, 32, CIFAR10_NAMES.split(" ")),
    "cifar100": ("CIFAR100", 100, 3, 32, [n.replace("_", " ") for n in CIFAR100_NAMES.split()]),
    "svhn": ("SVHN", 10, 3, 32, DIGIT_NAMES),
    "stl10": ("STL10", 10, 3, 96, STL10_NAMES.split(" ")),
}
Loaded = tuple[list[str], Any, torch.Tensor, Any, torch.Tensor, str]


def nwa_home() -> Path:
    """``$NWA_HOME`` (default ``~/.cache/nwa``): zoo cache and downloaded data."""
    return Path(os.environ.get("NWA_HOME", "~/.cache/nwa")).expanduser()


def data_root() -> Path:
    """``$NWA_HOME/data``: where torchvision datasets are downloaded and read."""
    return nwa_home() / "data"


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_folder() -> Path | None:
    for folder in (os.environ.get("NWA_FASHION_MNIST"), DEBIAN_FASHION_MNIST):
        if folder and (Path(folder) / "train-images-idx3-ubyte.gz").is_file():
            return Path(folder)
    return None


def load_fashion() -> Loaded:
    """Fashion-MNIST: ``$NWA_FASHION_MNIST``, the Debian package, else torchvision's copy."""
    folder = _fashion_folder()
    if folder is None:
        try:
            return load_torchvision("fashion_mnist")
        except ConfigError:
            raise ConfigError(
                f"Fashion-MNIST is neither in {DEBIAN_FASHION_MNIST} nor in {data_root()} and "
                "cannot be downloaded here: `apt-get install dataset-fashion-mnist` (Debian), set "
                "NWA_FASHION_MNIST to a folder of its idx .gz files, or run once with internet"
            ) from None
    arrays = [
        torch.from_numpy(_read_idx(folder / f"{split}-{kind}-ubyte.gz").copy())
        for split in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    ]
    x, y, tx, ty = arrays
    return list(FASHION_ITEMS), x[:, None], y.long(), tx[:, None], ty.long(), str(folder)


def load_digits() -> Loaded:
    """scikit-learn's 8x8 digits (shipped with scikit-learn), split 80/20 with seed 0."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8))[:, None]
    y = torch.from_numpy(d.target).long()
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    cut = int(0.8 * len(y))
    tr, te = perm[:cut], perm[cut:]
    return list(DIGIT_NAMES), x[tr], y[tr], x[te], y[te], "sklearn.datasets.load_digits"


def _torchvision_split(cls: type, root: Path, train: bool, download: bool) -> Any:
    if cls.__name__ in ("SVHN", "STL10"):
        return cls(str(root), split="train" if train else "test", download=download)
    return cls(str(root), train=train, download=download)


def _arrays(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision dataset's images as uint8 [N, C, H, W] and its labels as int64 [N]."""
    x = torch.as_tensor(np.asarray(ds.data))
    if x.ndim == 3:  # MNIST family: [N, H, W]
        x = x[:, None]
    elif x.shape[-1] == 3:  # CIFAR: [N, H, W, C]
        x = x.permute(0, 3, 1, 2)
    labels = ds.labels if hasattr(ds, "labels") else ds.targets
    return x.contiguous(), torch.as_tensor(np.asarray(labels)).long()


def load_torchvision(name: str) -> Loaded:
    """A torchvision dataset read from ``$NWA_HOME/data``, downloaded there first if missing."""
    import torchvision.datasets as tvd

    cls_name, _, _, _, names = TORCHVISION[name]
    cls, root = getattr(tvd, cls_name), data_root()
    splits = []
    for train in (True, False):
        try:
            ds = _torchvision_split(cls, root, train, download=False)
        except RuntimeError:  # not there (or damaged): fetch it, one process at a time
            try:
                with file_lock(root / f".{cls_name}.lock"):
                    ds = _torchvision_split(cls, root, train, download=True)
            except Exception as e:
                raise ConfigError(
                    f"{name}: not in {root} and torchvision could not download it "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                    f"run once with internet, or copy torchvision's {cls_name} folder there"
                ) from None
        splits.append(ds)
    found = [c.replace("_", " ") for c in getattr(splits[0], "classes", names)]
    if name == "cifar100" and found != names:  # its names are written above, from its meta file
        raise ConfigError(
            f"{name}: {root / cls_name} names its classes {found[:3]}..., not {names[:3]}..."
        )
    x, y = _arrays(splits[0])
    tx, ty = _arrays(splits[1])
    return list(names), x, y, tx, ty, str(root / cls_name)


# -- image folders --------------------------------------------------------------------------------


class FolderImages(LazyImages):
    """Image files decoded on demand, converted to RGB, resized (shorter side) and centre-cropped.

    Args:
        paths: Image files.
        size: Output side in pixels.
    """

    channels = 3

    def __init__(self, paths: list[str], size: int) -> None:
        super().__init__(len(paths))
        self.paths, self.size = paths, int(size)

    def _load(self, index: torch.Tensor) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.v2 import functional as TF

        out = torch.empty((len(index), 3, self.size, self.size), dtype=torch.uint8)
        for k, i in enumerate(index.tolist()):
            try:
                img = decode_image(self.paths[i], mode=ImageReadMode.RGB)
            except RuntimeError as e:
                raise ConfigError(f"{self.paths[i]}: not a readable image ({e})") from None
            img = TF.resize(img, [self.size], antialias=True)
            out[k] = TF.center_crop(img, [self.size, self.size])
        return out


def folder_classes(path: Path) -> list[str]:
    """Class folder names of an image folder (from ``train/`` when it has one)."""
    from torchvision.datasets.folder import find_classes

    root = path / "train" if (path / "train").is_dir() else path
    if not root.is_dir():
        raise ConfigError(f"imagefolder:{path}: no such folder")
    try:
        return find_classes(str(root))[0]
    except FileNotFoundError:
        raise ConfigError(f"imagefolder:{path}: no class folders in {root}") from None


def _files(root: Path, classes: list[str]) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    index = {c: i for i, c in enumerate(classes)}
    try:
        return make_dataset(str(root), index, extensions=IMG_EXTENSIONS, allow_empty=True)
    except FileNotFoundError as e:
        raise ConfigError(f"imagefolder:{root}: {e}") from None


def _held_out(path: str, fraction: float) -> bool:
    """A file's split from its name alone, so adding files never moves the others."""
    h = int.from_bytes(hashlib.sha256(Path(path).name.encode()).digest()[:4], "little")
    return h < fraction * 2**32


def load_folder(path: Path, size: int, test_fraction: float = 0.2) -> Loaded:
    """``PATH/<class>/*`` (split by file name hash) or ``PATH/{train,test|val}/<class>/*``."""
    classes = folder_classes(path)
    if (path / "train").is_dir():
        test_dir = next((path / d for d in ("test", "val") if (path / d).is_dir()), None)
        if test_dir is None:
            raise ConfigError(f"imagefolder:{path}: has train/ but neither test/ nor val/")
        train, test = _files(path / "train", classes), _files(test_dir, classes)
    else:
        files = _files(path, classes)
        test = [f for f in files if _held_out(f[0], test_fraction)]
        train = [f for f in files if not _held_out(f[0], test_fraction)]
    if not train or not test:
        raise ConfigError(
            f"imagefolder:{path}: needs images in both splits (train {len(train)}, test {len(test)})"
        )

    def part(files: list[tuple[str, int]]) -> tuple[FolderImages, torch.Tensor]:
        return FolderImages([f for f, _ in files], size), torch.tensor([c for _, c in files])

    names = [c.replace("_", " ") for c in classes]
    return (names, *part(train), *part(test), str(path.resolve()))


def folder_digest(images: FolderImages) -> str:
    """Hash of a folder set's file names and sizes (its contents are not read)."""
    h = hashlib.sha256()
    for p in images.paths:
        h.update(f"{p}\0{os.path.getsize(p)}\n".encode())
    return h.hexdigest()[:16]
