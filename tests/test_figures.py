"""Every figure nwa draws, on small inputs: labelled axes, a legend where colour means a group,
log scales where values span decades, PDF + PNG at 200 dpi or more, one palette."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from nwa.compare import plot_curves
from nwa.eval import plots, style
from nwa.runs import Run
from nwa.suite import figures

PROPS = ("test_acc", "gen_gap", "robustness")


@pytest.fixture
def drawn(monkeypatch):
    """The figures saved while a test runs, each with the files it was written to."""
    saved: list[tuple[Figure, str]] = []
    original = Figure.savefig

    def record(self, fname, *args, **kwargs):
        saved.append((self, kwargs.get("format") or Path(str(fname)).suffix))
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return saved


def outputs(seed: int, n: int = 24, trees: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "z": rng.normal(size=(n, 5)),
        "pred": rng.uniform(size=(n, 3)),
        "target": rng.uniform(size=(n, 3)),
        "split": np.array(["train", "val", "test"] * (n // 3)),
        "tree": np.array([f"vision-t{i % trees}" for i in range(n)]),
    }


def history(scale: float) -> pd.DataFrame:
    epochs = np.arange(6)
    return pd.DataFrame(
        {"epoch": epochs, "train/loss": scale * 0.1**epochs, "val/loss": scale * 0.2**epochs}
    )


def check(fig: Figure, groups: bool) -> None:
    """Axes labelled (name and unit), and a legend where colours stand for groups."""
    for ax in fig.axes:
        if not ax.get_visible() or hasattr(ax, "_colorbar"):
            continue
        if ax.name == "polar":
            assert all(t.get_text() for t in ax.get_xticklabels())
            continue
        assert ax.get_xlabel() and ax.get_ylabel(), (ax.get_title(), ax.get_xlabel())
    if groups:
        assert fig.legends or any(ax.get_legend() for ax in fig.axes)


def check_files(png: Path) -> None:
    assert png.suffix == ".png" and png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    dpi = Image.open(png).info["dpi"]
    assert min(dpi) >= 199.9


def test_bench_figures(tmp_path, drawn):
    runs = {m: [outputs(0), outputs(1)] for m in ("ProbeX", "Dense")}
    cases = [
        (figures.embeddings(runs, tmp_path / "a.png", colour="tree", title="t"), True),
        (figures.embeddings(runs, tmp_path / "b.png", colour="test_acc", title="t"), False),
        (figures.predicted_vs_true(runs, PROPS, tmp_path / "c.png"), False),
        (figures.error_histograms(runs, PROPS, tmp_path / "d.png"), True),
        (
            figures.metric_bars(
                {"ProbeX": [[0.8, 0.82]] * 3, "Dense": [[0.6, 0.7]] * 3},
                list(PROPS),
                "MAE (test)",
                tmp_path / "e.png",
            ),
            True,
        ),
        (
            figures.radar(
                {"ProbeX": [0.9, -3.0, 0.5], "Dense": [0.1, 0.2, 0.3]},
                PROPS,
                "R²",
                tmp_path / "f.png",
            ),
            True,
        ),
        (
            figures.curves(
                {"Dense": [history(5e4), history(4e4)], "ProbeX": [history(1.0)]},
                ("train/loss", "val/loss"),
                tmp_path / "g.png",
            ),
            True,
        ),
    ]
    figs = [f for f, fmt in drawn if fmt == "png"]
    assert len(figs) == len(cases)
    for fig, (path, groups) in zip(figs, cases):
        check(fig, groups)
        check_files(path)
    # the Dense loss from 50,000 to 0.02 is on a log axis, so its curve is not a flat line
    dense = next(ax for ax in figs[-1].axes if ax.get_title() == "Dense")
    assert dense.get_yscale() == "log" and "log" in dense.get_ylabel()
    # trees are named in the legend, in the palette's colours
    legend = next(ax.get_legend() for ax in figs[0].axes if ax.get_legend())
    assert [t.get_text() for t in legend.get_texts()] == ["vision-t0", "vision-t1", "vision-t2"]


def test_aligner_figures_with_many_concepts(tmp_path, drawn):
    rng = np.random.default_rng(0)
    concepts = [f"concept {i}" for i in range(36) for _ in range(3)]
    z = rng.normal(size=(len(concepts), 6))
    path = plots.embedding_plot(
        z, concepts, [c.endswith(("4", "5")) for c in concepts], tmp_path / "emb.png"
    )
    fig = drawn[-1][0]
    check(fig, groups=True)
    check_files(path)
    legend = next(ax.get_legend() for ax in fig.axes if ax.get_legend())
    assert len(legend.get_texts()) == 36  # every concept named
    # 36 concepts, 8 colours: no two concepts share both colour and marker
    styles = {
        (h.get_edgecolor().tobytes(), h.get_paths()[0].vertices.tobytes())
        for h in legend.legend_handles
    }
    assert len(styles) == 36
    examples = [
        {
            "concept": "cat",
            "neighbours": [
                {"concept": "cat", "distance": 0.1, "match": True},
                {"concept": "dog", "distance": 0.4, "match": False},
            ],
        }
    ]
    path = plots.retrieval_figure(examples, tmp_path / "ret.png")
    check(drawn[-1][0], groups=True)
    check_files(path)


def test_compare_curves(tmp_path, drawn):
    runs = [
        Run(
            f"run{i}",
            "g",
            "csv",
            tmp_path,
            str(i),
            {},
            history(10.0**i).assign(**{"test/acc": [None] * 5 + [0.5 + i / 10]}),
        )
        for i in range(10)
    ]
    path = plot_curves(runs, ["val/loss", "test/acc"], tmp_path / "curves.png")
    fig = drawn[-1][0]
    check(fig, groups=True)
    check_files(path)
    loss = next(ax for ax in fig.axes if ax.get_title() == "val/loss")
    assert loss.get_yscale() == "log"


def test_palette_is_okabe_ito_and_markers_follow_the_colours():
    assert style.colour(0) == "#0072B2" and style.colour(8) == style.colour(0)
    assert style.marker(0) != style.marker(8)
