"""The mixed-architecture zoo recipe: reproducible per-member sampling, labels that match the
saved networks, clear errors on bad configs, and whole-network graphs of every family."""

from __future__ import annotations

import math

import pytest

from nwa.errors import ConfigError
from nwa.zoo.mixed import MixedRecipe
from nwa.zoo.plan import make_plan


def _config(**init_args):
    from tests.mixed_zoo import tiny_mixed_config

    raw = tiny_mixed_config()
    raw["recipes"][0]["init_args"] |= init_args
    return raw


def test_members_are_drawn_from_their_own_id():
    small, large = MixedRecipe(members_per_family=4), MixedRecipe(members_per_family=6)
    a = {j.id: j.params for j in small.plan(0)}
    b = {j.id: j.params for j in large.plan(0)}
    assert a == {k: b[k] for k in a}  # more members leave the first ones as they were
    assert a != {j.id: j.params for j in small.plan(1)}
    drawn = [p["hparams"]["optimizer"] for p in b.values()]
    assert {"sgd", "adam"} <= set(drawn)
    assert {p["family"] for p in b.values()} == {"mlp", "cnn", "resnet", "vit"}


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"optimizers": {"lion": [0.001, 0.01]}}, "unknown optimizer 'lion'"),
        ({"optimizers": {"sgd": [0.1, 0.01]}}, "optimizers.sgd"),
        ({"archs": {"mlp": []}}, "at least one architecture"),
        ({"archs": {"vit": ["vit_micro"]}}, "patch size 7 does not divide"),
    ],
)
def test_bad_configs_are_refused_before_training(bad, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        make_plan(_config(**bad))


def test_labels_match_the_saved_networks(tiny_mixed_zoo):
    from nwa.zoo.adapters import open_zoo

    zoo = open_zoo(tiny_mixed_zoo)
    schema = zoo.meta.label_schema
    assert schema["family"] == schema["optimizer"] == "multiclass"
    assert {schema[k] for k in ("data_size", "n_params", "test_acc")} == {"regression"}
    assert set(zoo.label("family")) == {"mlp", "cnn", "resnet", "vit"}
    for row in zoo.table.to_dict("records"):
        with zoo.open_model(row) as src:
            params = sum(math.prod(src.info(n).shape) for n in src.names() if "running_" not in n)
        assert row["labels"]["n_params"] == pytest.approx(math.log10(params))
        assert row["labels"]["data_size"] == pytest.approx(
            math.log10(row["hparams"]["train_images"])
        )
        assert row["labels"]["optimizer"] == row["hparams"]["optimizer"]
        assert 0 <= row["test_acc"] <= 1
    assert set(zoo.table["split"]) == {"train", "val", "test"}


def test_every_family_is_one_whole_graph(tiny_mixed_zoo):
    from nwa.data.reading import resolve_graphs
    from nwa.zoo.adapters import open_zoo

    zoo = open_zoo(tiny_mixed_zoo)
    graphs = resolve_graphs(zoo, zoo.table, "*")
    families = {p.family for p in graphs.plans}
    assert {"resnet", "vit"} <= families and len(graphs.plans) >= 4
    for plan in graphs.plans:  # every parameter of the network is read into its graph
        assert plan.names
