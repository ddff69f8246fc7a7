"""Image sources, composed concepts and the robustness corruption."""

from __future__ import annotations

import pytest
import torch

from nwa.errors import ConfigError
from nwa.zoo import datasets


def test_fashion_mnist_offline_with_human_names() -> None:
    data = datasets.load_source("fashion_mnist")
    assert data.shape == (1, 28, 28) and data.train_x.dtype == torch.uint8
    assert len(data.train_y) == 60000 and len(data.test_y) == 10000
    assert data.classes == datasets.class_names("fashion_mnist")
    assert data.classes[9] == "ankle boot"


def test_digits_and_subsets() -> None:
    digits = datasets.load_source("digits", 4)
    assert digits.shape == (1, 8, 8) and digits.classes == ["zero", "one", "two", "three"]
    assert int(digits.train_y.max()) == 3 and int(digits.test_y.max()) == 3
    with pytest.raises(ConfigError, match="has 10 classes"):
        datasets.load_source("digits", 11)
    with pytest.raises(ConfigError, match="unknown image source"):
        datasets.load_source("mnist")


def test_composed_colour_classes() -> None:
    data = datasets.load_source("fashion_colours", 40)
    assert len(data.classes) == 40 and data.shape == (3, 28, 28)
    assert data.classes == datasets.class_names("fashion_colours", 40)
    assert data.classes[7] == "red sneaker" and data.classes[17] == "green sneaker"
    assert set(data.train_y.unique().tolist()) == set(range(40))
    red = data.train_x[data.train_y == 7].float().mean((0, 2, 3))
    assert red[0] > 3 * red[1]


def test_concepts_beyond_ten() -> None:
    cs = datasets.concepts(n=40)
    assert len({c.name for c in cs}) == 40
    assert cs[7].name == "red sneaker" and cs[7].prompt == "a red sneaker"
    img = cs[7].images(5, seed=1, size=16)
    assert img.shape == (5, 3, 16, 16) and img.min() >= 0 and img.max() <= 1
    assert torch.equal(img, cs[7].images(5, seed=1, size=16))
    assert len(datasets.concepts(n=100)) == 100
    plain = datasets.concepts(n=10, colours=False)
    assert plain[0].name == "t-shirt" and plain[0].images(2).shape == (2, 3, 28, 28)
    with pytest.raises(ConfigError):
        datasets.concepts(n=101)


def test_corruption_is_fixed() -> None:
    x = torch.rand(4, 1, 8, 8)
    a, b = datasets.corrupt(x, 0.3, seed=0), datasets.corrupt(x, 0.3, seed=0)
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1
