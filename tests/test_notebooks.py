"""The notebooks are saved with their outputs and run top to bottom (NWA_NOTEBOOK_QUICK=1, a
fresh $NWA_HOME) without errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A fresh $NWA_HOME shared by both notebooks (the tiny zoo is built once), and a
    ``python3`` kernel spec that is this interpreter whatever kernels the user installed."""
    tmp = tmp_path_factory.mktemp("notebooks")
    spec = tmp / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(tmp / "jupyter"))  # searched before every other kernel dir
        mp.setenv("NWA_HOME", str(tmp / "nwa_home"))
        mp.setenv("NWA_NOTEBOOK_QUICK", "1")
        mp.setenv("TMPDIR", str(tmp))  # the notebooks' temporary run folders land here
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        yield tmp


def execute(name: str, cwd: Path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    return nb


def outputs(nb, kind: str = "text") -> str:
    """Every text (or the MIME types of every rich) output of the notebook, joined."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "text":
                parts.append(out.get("text", ""))
                parts.append(out.get("data", {}).get("text/plain", ""))
            else:
                parts.extend(out.get("data", {}))
    return "\n".join(parts)


NAMES = ["quickstart.ipynb", "main_job.ipynb", "bench_report.ipynb", "analysis.ipynb"]


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_saved_executed_small_and_import_the_library(name):
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), "not saved after one run, top to bottom"
    assert all(c.outputs for c in code[1:]), "a cell was saved without its output"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    assert path.stat().st_size < 400_000, "outputs too large to review"
    source = "\n".join(c.source for c in code)
    assert "from nwa" in source
    assert "def " not in source and "class " not in source  # no library code in notebooks


@pytest.mark.slow
def test_quickstart_builds_the_zoo_trains_and_predicts(kernel_env):
    nb = execute("quickstart.ipynb", kernel_env)
    text = outputs(nb)
    assert "zoo 'tiny'" in text  # the zoo report
    assert "vision-resnet_micro-0-m000" in text  # the zoo table
    assert "test/acc" in text  # test results of the trained ProbeX
    assert "val/acc" in text  # its log, read back
    assert "predicted classes:" in text and "true classes:" in text and "p(trained on)" in text
    assert "models/s" in text and "Per-model summary" in text  # nwa.predict and nwa.diagnose
    assert (kernel_env / "nwa_home" / "zoos").is_dir()


@pytest.mark.slow
def test_analysis_trains_two_runs_and_compares_them(kernel_env):
    nb = execute("analysis.ipynb", kernel_env)
    text = outputs(nb)
    assert "probex-lr0.001" in text and "probex-lr0.01" in text
    assert "val/acc final" in text and "val/acc best" in text
    assert "model.init_args.lr" in text  # the one config difference
    assert outputs(nb, "mime").count("image/png") >= 2  # the curves file and the own plot


@pytest.mark.slow
def test_main_job_names_held_out_concepts_and_plots_them(kernel_env):
    nb = execute("main_job.ipynb", kernel_env)
    text = outputs(nb)
    assert "held-out concepts (zero-shot)" in text and "chance" in text
    assert "knn_top1" in text and "query" in text  # downstream table, retrieval examples
    assert outputs(nb, "mime").count("image/png") >= 1  # the embedding plot


def test_bench_report_reads_results_into_tables_and_a_plot(kernel_env):
    nb = execute("bench_report.ipynb", kernel_env)
    text = outputs(nb)
    assert "ProbeX" in text and "StatNN-GBT" in text and "vision-resnet" in text
    assert outputs(nb, "mime").count("image/png") == 1
