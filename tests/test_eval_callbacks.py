"""The evaluation callbacks (nwa.eval.callbacks) on a plain WeightModule: ProbeX on the tiny zoo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nwa.fit import run as fit

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EVAL = CONFIGS / "shared" / "representations.yaml"


def fit_probex(zoo: Path, tmp_path: Path, *extra: str):
    return fit(
        [
            *("--config", str(CONFIGS / "probex_vision.yaml"), *extra),
            *("--data.init_args.zoo", str(zoo)),
            *("--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)),
            *("--trainer.logger", "lightning.pytorch.loggers.CSVLogger"),
            *("--trainer.logger.save_dir", str(tmp_path)),
        ]
    )


@pytest.mark.slow  # builds the session's tiny zoo (about 30 s)
def test_a_weight_module_gets_knn_retrieval_and_one_class_metrics(tiny_zoo, tmp_path, monkeypatch):
    from nwa.eval.callbacks import evaluation_report

    monkeypatch.chdir(tmp_path)
    cli, results = fit_probex(tiny_zoo, tmp_path, "--config", str(EVAL))
    logged = results[0]
    report = evaluation_report(cli.trainer)
    test = cli.datamodule.rows.query("split == 'test'")
    for side in ("learned", "raw"):
        part = report[side]["in_distribution"]
        assert set(part) == {
            "knn_top1",
            "retrieval_p@1",
            "retrieval_p@5",
            "one_class_auroc_knn",
            "one_class_auroc_ledoit_wolf",
        }
        for metric, value in part.items():
            key = f"test/{side}/in_distribution/{metric}"
            if value is None:  # one-class AUROC of a single test model: nothing to rank
                assert key not in logged and metric.startswith("one_class") and len(test) < 2
            else:
                assert logged[key] == pytest.approx(value) and 0.0 <= value <= 1.0
    # fine-tunes of one pretrained root lie near it and far from other roots' fine-tunes, so the
    # raw weights name the tree of every test model
    assert report["raw"]["in_distribution"]["knn_top1"] == 1.0
    assert report["settings"]["label"] == "tree" and report["n_models"]["test"] > 0
    assert report["concepts"]["held_out"] == []  # a vision zoo holds no classes out
    (saved,) = tmp_path.rglob("eval_results.json")
    on_disk = json.loads(saved.read_text())
    assert on_disk["raw"] == report["raw"] and on_disk["learned"] == report["learned"]
    assert set(on_disk["figures"]) == {"embedding", "embedding_raw", "retrieval"}
    assert all(Path(p).is_file() for p in on_disk["figures"].values())


@pytest.mark.slow  # builds the session's tiny zoo (about 30 s)
def test_evaluations_that_do_not_fit_the_run_fail_in_one_line(tiny_zoo, tmp_path, capsys):
    zero_shot = tmp_path / "zero_shot.yaml"
    zero_shot.write_text(
        "trainer:\n  callbacks:\n    - class_path: nwa.eval.callbacks.ZeroShotEval\n"
    )
    knn = tmp_path / "knn.yaml"  # classes of a multi-label target: no single class per model
    knn.write_text("trainer:\n  callbacks:\n    - class_path: nwa.eval.callbacks.KNNEval\n")
    cases = {
        zero_shot: "ZeroShotEval needs a module with a text side",
        knn: "the target 'classes' is multilabel",
    }
    for config, message in cases.items():
        with pytest.raises(SystemExit) as e:
            fit_probex(tiny_zoo, tmp_path, "--config", str(config))
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
