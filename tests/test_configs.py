"""Every recipe in configs/ parses and runs end to end (fast_dev_run) on the tiny zoo."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nwa.fit import run as fit

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
FRAGMENTS = sorted((Path(__file__).resolve().parents[1] / "configs" / "shared").glob("*.yaml"))


def test_there_is_a_recipe_per_method():
    names = {p.stem for p in CONFIGS}
    for method in (
        "probex",
        "dense",
        "statnn",
        "statnn_mlp",
        "pca",
        "mlp",
        "nwpa",
        "weightnet",
        "experts",
    ):
        assert any(n.startswith(method) for n in names), f"no recipe for {method}"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_recipe_runs_on_the_tiny_zoo(config, request, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(config.read_text())
    embedded = raw["data"]["init_args"]["zoo"]
    assert embedded in ("default_vision", "default_lora", "default_mixed"), (
        "recipes name an embedded zoo"
    )
    # the mixed-architecture recipes read labels only the mixed zoos have
    zoo = request.getfixturevalue("tiny_mixed_zoo" if embedded == "default_mixed" else "tiny_zoo")
    cli, results = fit(
        [
            *("--config", str(config)),
            *("--data.init_args.zoo", str(zoo)),
            *("--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)),
            *(
                "--trainer.logger",
                "lightning.pytorch.loggers.CSVLogger",
                "--trainer.logger.save_dir",
                str(tmp_path),
            ),
        ]
    )
    assert results and any(k.startswith("test/") for k in results[0])


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: p.stem)
def test_fragments_compose_with_a_recipe(fragment, tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = Path(__file__).resolve().parents[1] / "configs" / "probex_vision.yaml"
    cli, results = fit(
        [
            *("--config", str(base), "--config", str(fragment)),
            *("--data.init_args.zoo", str(tiny_zoo)),
            *("--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)),
            *(
                "--trainer.logger",
                "lightning.pytorch.loggers.CSVLogger",
                "--trainer.logger.save_dir",
                str(tmp_path),
            ),
        ]
    )
    assert results


@pytest.fixture(scope="module")
def small_cnn_zoo(tmp_path_factory):
    from tests.zoo_factory import write_small_cnn_zoo

    return write_small_cnn_zoo(tmp_path_factory.mktemp("small-cnn-zoo"))


def labels_small_cnn_zoo_has(raw: dict) -> list[str]:
    """The label overrides a recipe needs on the Small CNN Zoo, which has test and train
    accuracy (so gen_gap) and hyperparameters, but no training classes, concepts or robustness."""
    data = raw["data"]["init_args"]
    target = data.get("target", "classes")
    if target == "classes":
        return [
            "--data.init_args.target",
            "properties",
            "--data.init_args.properties",
            "[test_acc]",
        ]
    if target == "properties":
        kept = [p for p in data["properties"] if p in ("test_acc", "train_acc", "gen_gap")]
        return ["--data.init_args.properties", f"[{', '.join(kept)}]"]
    if target == "labels" and data["zoo"] == "default_mixed":  # two of its labels
        return ["--data.init_args.properties", "[test_acc, train_acc]"]
    return ["--data.init_args.target", "activation"]  # a categorical label instead of a concept


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_recipe_runs_on_a_small_cnn_zoo_by_its_zoo_field(
    config, small_cnn_zoo, tmp_path, monkeypatch
):
    """A foreign zoo (the Small CNN Zoo's public layout, NaN rows included) needs the zoo field
    and the labels it lacks, nothing else: no tree, architecture or layer override."""
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(config.read_text())
    cli, results = fit(
        [
            *("--config", str(config)),
            *("--data.init_args.zoo", str(small_cnn_zoo)),
            *labels_small_cnn_zoo_has(raw),
            *("--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)),
            *("--trainer.logger", "lightning.pytorch.loggers.CSVLogger"),
        ]
    )
    dm = cli.datamodule
    assert dm.zoo.meta.build["adapter"] == "small_cnn_zoo"
    assert len(dm.rows) == 38  # every model but the two diverged runs
    assert results and any(k.startswith("test/") for k in results[0])
