"""The bench's property section at tiny scale: StatNN-GBT through the suite's runner, the
independent LightGBM check on the same statistics, and the report lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nwa.suite import properties
from nwa.suite.execute import run_all
from nwa.suite.plan import SUITES
from nwa.suite.report import load_results
from nwa.zoo.build import build

CONFIG = {
    "name": "props_suite",
    "seed": 0,
    "recipes": [
        {
            "class_path": "nwa.zoo.properties.PropertyRecipe",
            "init_args": {"runs_per_arch": 30, "checkpoints": [1, 3], "eval_images": 360}
            | {"train_fraction": [0.1, 0.3], "splits": [0.7, 0.1, 0.2]},
        }
    ],
}


@pytest.mark.slow
def test_property_section_reports_every_method_and_the_lightgbm_check(tmp_path: Path) -> None:
    zoo = build(CONFIG, tmp_path / "zoo", threads=1).path
    suite = SUITES["quick"]
    runs, path = properties.plan_runs(suite, str(zoo), ["StatNN-GBT"])
    assert path == zoo and [r.seed for r in runs] == [0, 1, 2]
    assert all(r.subset == properties.SUBSET and "[test_acc]" in r.args for r in runs)
    out = tmp_path / "bench"
    results = run_all(runs[:2], out)
    assert all("error" not in r for r in results), results
    properties.run_checks(out, zoo, [0, 1])
    df = load_results(out, runs)
    lines = properties.section(out, df)
    text = "\n".join(lines)
    assert "| StatNN-GBT |" in text and "| LightGBM (independent) |" in text
    assert "noise ceiling of R²" in text and "Target best R²" in text
    assert "vs the independent LightGBM" in text
    checks = properties._checks(out)
    assert [c["seed"] for c in checks] == [0, 1]
    assert all(np.isfinite(c["r2"]) and -1 <= c["kendall"] <= 1 for c in checks)
    assert checks[0]["n_train"] == 42 and checks[0]["n_test"] == 12
    # the section's StatNN-GBT figure is the runs' own test R^2
    gbt = df[df["method"] == "StatNN-GBT"]["r2_test_acc"].dropna()
    assert len(gbt) == 2 and f"{gbt.mean():.3f}" in text


def test_no_property_runs_no_section(tmp_path: Path) -> None:
    import pandas as pd

    df = pd.DataFrame({"task": ["classes"], "subset": ["resnet trees"], "method": ["ProbeX"]})
    assert properties.section(tmp_path, df) == []
