"""Every recipe in configs/ parses and runs end to end (fast_dev_run) on the tiny zoo."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nwa.fit import run as fit
from nwa.recipes import KEY, fragments_of
from nwa.recipes import compose as composed

ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(ROOT.glob("*.yaml"))
FRAGMENTS = sorted([*(ROOT / "shared").glob("*.yaml"), *(ROOT / "logger").glob("*.yaml")])
PARTS = ("data", "model", "trainer", "logger", "shared")


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
def test_recipe_is_a_short_list_of_fragments(config):
    raw = yaml.safe_load(config.read_text())
    listed = raw[KEY]
    assert all(p.split("/")[0] in PARTS for p in listed), listed
    assert {p.split("/")[0] for p in listed} >= {"data", "model", "trainer"}, listed
    lines = [line for line in config.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert len(lines) <= 15, f"{config.name}: {len(lines)} lines besides comments"


def test_every_fragment_is_used_or_composes():
    used = {p.resolve() for c in CONFIGS for p in fragments_of(c)}
    for part in PARTS:
        for path in (ROOT / part).glob("*.yaml"):
            assert path.resolve() in used or path in FRAGMENTS, f"{path} is used by no recipe"


def test_bad_fragments_fail_in_one_line(tmp_path, capsys):
    from nwa.cli import main

    cases = {
        "missing.yaml": ("fragments: [data/none.yaml]\n", "fragment 'data/none.yaml' not found"),
        "a.yaml": ("fragments: [b.yaml]\n", "fragments include each other (a.yaml -> b.yaml"),
        "b.yaml": ("fragments: [a.yaml]\n", None),
        "bad.yaml": ("fragments: data/vision.yaml\n", "fragments must be a list of file paths"),
    }
    for name, (text, _) in cases.items():
        (tmp_path / name).write_text(text)
    for name, (_, message) in cases.items():
        if message is None:
            continue
        with pytest.raises(SystemExit) as e:
            main("fit", ["--config", str(tmp_path / name)])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.slow
def test_recipe_runs_on_the_tiny_zoo(config, request, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = composed(config)
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
@pytest.mark.slow
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
    raw = composed(config)
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
