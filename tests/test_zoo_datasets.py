"""Image sources: drawn shapes, datasets found offline or not at all, image folders, concepts."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from nwa.errors import ConfigError
from nwa.zoo import concepts, datasets, external, shapes
from nwa.zoo.images import take


@pytest.fixture
def offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $NWA_HOME, no Debian Fashion-MNIST, and torchvision downloads that fail."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.mnist as mnist

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setenv("NWA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NWA_FASHION_MNIST", raising=False)
    monkeypatch.setattr(external, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    for module in (mnist, cifar):
        monkeypatch.setattr(module, "download_and_extract_archive", no_network)
    datasets._load.cache_clear()
    yield tmp_path / "home"
    datasets._load.cache_clear()


@pytest.mark.slow
def test_shapes_are_the_same_however_they_are_read() -> None:
    data = datasets.load_source("shapes")
    assert data.shape == (3, 28, 28) and len(data.train_y) == 25000 and len(data.test_y) == 5000
    assert data.classes == datasets.class_names("shapes") and data.classes[5] == "hexagon"
    assert set(data.train_y.tolist()) == set(range(10))
    idx = torch.tensor([4000, 3, 777, 3, 24999])
    picked = take(data.train_x, idx)
    assert picked.dtype == torch.uint8 and picked.shape == (5, 3, 28, 28)
    again = shapes.ShapeImages(25000, 28, 1, datasets._shape_classes("shapes", None))
    assert torch.equal(take(again, idx.flip(0)), picked.flip(0))  # any order, any instance
    assert torch.equal(take(data.train_x[idx][1:3]), picked[1:3])  # views of views
    assert not torch.equal(picked[0], picked[2]) and torch.equal(picked[1], picked[3])
    big = datasets.load_source("shapes", size=64, options={"n_train": 100, "n_test": 10})
    assert take(big.train_x, slice(0, 2)).shape == (2, 3, 64, 64) and len(big.test_y) == 10
    assert len(big.train_y) == 100


def test_composed_shape_classes_are_their_colour() -> None:
    names = datasets.class_names("shapes_colours")
    assert len(names) == 100 and names[0] == "red circle" and names[16] == "green star"
    data = datasets.load_source("shapes_colours", 20)
    assert data.classes == names[:20] and int(data.train_y.max()) == 19
    red = take(data.train_x, torch.nonzero(data.train_y < 10).flatten()[:50]).float()
    green = take(data.train_x, torch.nonzero(data.train_y >= 10).flatten()[:50]).float()
    assert red[:, 0].mean() > red[:, 1].mean() + 10 and green[:, 1].mean() > green[:, 0].mean() + 10


def test_bad_sources_and_options_fail_in_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown image source 'imagenet'"):
        datasets.load_source("imagenet")
    with pytest.raises(ConfigError, match="has 10 classes"):
        datasets.load_source("digits", 11)
    with pytest.raises(ConfigError, match="no option 'n_val'"):
        datasets.load_source("shapes", options={"n_val": 3})
    with pytest.raises(ConfigError, match="positive integer"):
        datasets.load_source("shapes", options={"n_train": 0})


def test_digits_and_subsets() -> None:
    digits = datasets.load_source("digits", 4)
    assert digits.shape == (1, 8, 8) and digits.classes == ["zero", "one", "two", "three"]
    assert int(digits.train_y.max()) == 3 and int(digits.test_y.max()) == 3


def test_missing_fashion_mnist_says_how_to_get_it(offline_home: Path) -> None:
    with pytest.raises(ConfigError) as err:
        datasets.load_source("fashion_mnist")
    message = str(err.value)
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message
    assert "NWA_FASHION_MNIST" in message


@pytest.mark.skipif(
    not external.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian dataset-fashion-mnist not installed"
)
def test_fashion_mnist_from_the_debian_package() -> None:
    data = datasets.load_source("fashion_mnist")
    assert data.shape == (1, 28, 28) and len(data.train_y) == 60000 and len(data.test_y) == 10000
    assert data.classes[9] == "ankle boot" and data.origin == str(external.DEBIAN_FASHION_MNIST)
    coloured = datasets.load_source("fashion_colours", 20)
    assert coloured.classes[17] == "green sneaker" and coloured.shape == (3, 28, 28)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_datasets_read_offline_from_nwa_home(offline_home: Path) -> None:
    raw = offline_home / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    data = datasets.load_source("mnist", size=64)
    assert data.shape == (1, 28, 28) and len(data.train_y) == 60 and len(data.test_y) == 20
    assert data.classes[3] == "three" and data.origin == str(offline_home / "data" / "MNIST")
    with pytest.raises(ConfigError) as err:
        datasets.load_source("cifar10")
    assert "\n" not in str(err.value) and str(offline_home / "data") in str(err.value)
    # the Debian-less Fashion-MNIST falls back to torchvision's copy in the same place
    fashion = offline_home / "data" / "FashionMNIST" / "raw"
    fashion.mkdir(parents=True)
    for file in raw.iterdir():
        (fashion / file.name).write_bytes(file.read_bytes())
    assert datasets.load_source("fashion_mnist").classes[9] == "ankle boot"


def _image_folder(root: Path, classes: list[str], per_class: int) -> None:
    from torchvision.io import write_png

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = torch.full((3, 20, 30), 40 * c, dtype=torch.uint8)
            img[:, :, i] = 255
            write_png(img, str(root / name / f"{name}_{i}.png"))


def test_image_folders_split_and_decode_lazily(tmp_path: Path) -> None:
    _image_folder(tmp_path / "flat", ["cat", "red_car", "zebra"], 12)
    source = f"imagefolder:{tmp_path / 'flat'}"
    assert datasets.class_names(source) == ["cat", "red car", "zebra"]
    data = datasets.load_source(source, size=16)
    assert len(data.train_y) + len(data.test_y) == 36 and len(data.test_y) > 0
    batch = take(data.train_x, torch.arange(len(data.train_y)))
    assert batch.shape == (len(data.train_y), 3, 16, 16) and batch.dtype == torch.uint8
    for c in range(3):  # each image carries its class's grey level
        assert (batch[data.train_y == c, :, 8, 8] == 40 * c).all()
    _image_folder(tmp_path / "split" / "train", ["a", "b"], 3)
    _image_folder(tmp_path / "split" / "val", ["a", "b"], 2)
    split = datasets.load_source(f"imagefolder:{tmp_path / 'split'}", size=8)
    assert (len(split.train_y), len(split.test_y)) == (6, 4)
    record = datasets.data_record(split, f"imagefolder:{tmp_path / 'split'}")
    assert record["origin"] == str((tmp_path / "split").resolve()) and record["test_images"] == 4
    with pytest.raises(ConfigError, match="no such folder"):
        datasets.load_source(f"imagefolder:{tmp_path / 'nothing'}")


def test_source_keys_name_the_data_not_just_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    key = datasets.source_key("shapes")
    assert f"v{shapes.GENERATOR_VERSION}" in key and "n_train=25000" in key
    assert datasets.source_key("shapes", {"n_train": 10}) != key
    from nwa.zoo.plan import load_config

    tiny = load_config("tiny")
    digest = tiny.digest()
    monkeypatch.setattr(shapes, "GENERATOR_VERSION", shapes.GENERATOR_VERSION + 1)
    assert datasets.source_key("shapes") != key
    assert tiny.digest() != digest  # the embedded zoos' cache folders follow the generator
    a = datasets.data_record(datasets.load_source("digits"), "digits")
    b = datasets.data_record(datasets.load_source("digits", 5), "digits")
    assert a["fingerprint"] != b["fingerprint"] and a["origin"] == "sklearn.datasets.load_digits"


def test_shape_concepts_have_neighbours_and_fixed_images() -> None:
    cs = concepts.concepts("shapes", 120)
    names = [c.name for c in cs]
    assert len(set(names)) == 120 and names[0] == "red circle" and names[10] == "green circle"
    assert names[100] == "red striped circle" and cs[7].prompt == "a red cross"
    assert len(concepts.concepts("shapes", 500)) == 500
    with pytest.raises(ConfigError, match="makes 1..500"):
        concepts.concepts("shapes", 501)
    img = cs[7].images(5, seed=1, size=16)
    assert img.shape == (5, 3, 16, 16) and img.min() >= 0 and img.max() <= 1
    assert torch.equal(img, cs[7].images(5, seed=1, size=16))
    assert not torch.equal(img, cs[7].images(5, seed=1, split="test", size=16))
    assert img[:, 0].mean() > img[:, 1].mean()  # red
    plain = concepts.concepts("shapes", 10, colours=False)
    assert [c.name for c in plain][:2] == ["circle", "ellipse"]


def test_folder_and_digit_concepts(tmp_path: Path) -> None:
    _image_folder(tmp_path / "c", ["red_cat", "blue_dog"], 6)
    cs = concepts.concepts(f"imagefolder:{tmp_path / 'c'}", 2)
    assert [c.prompt for c in cs] == ["a blue dog", "a red cat"]
    assert cs[1].images(3, size=12).shape == (3, 3, 12, 12)
    digits = concepts.concepts("digits", 20)
    assert digits[12].name == "green two" and digits[12].images(2).shape == (2, 3, 8, 8)
    with pytest.raises(ConfigError, match="must be shapes"):
        concepts.concepts("cifar10", 3)


def test_corruption_is_fixed() -> None:
    x = torch.rand(4, 1, 8, 8)
    a, b = datasets.corrupt(x, 0.3, seed=0), datasets.corrupt(x, 0.3, seed=0)
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1


def test_idx_reader_reads_gzip(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x", array)
    (tmp_path / "x.gz").write_bytes(gzip.compress((tmp_path / "x").read_bytes()))
    assert np.array_equal(external._read_idx(tmp_path / "x.gz"), array)
