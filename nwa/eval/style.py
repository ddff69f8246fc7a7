"""One look for every figure nwa draws (bench report, ``nwa.compare``, aligner plots).

- Colours: the Okabe-Ito palette (Okabe & Ito, "Color Universal Design", 2008), told apart
  by readers with any common colour-vision deficiency; beyond its 8 colours, groups also differ
  by marker (:func:`marker`), so 40 concepts stay distinguishable.
- Text: sans-serif at sizes that stay readable when a figure is set at column width.
- Files: :func:`save` writes a vector PDF and a 200-dpi PNG beside it, each atomically (a
  killed run leaves the previous figure or none, never half a file).

Figures are drawn on Agg canvases without pyplot, so they work headless and leave a
notebook's plotting backend alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nwa.atomic import atomic_path

OKABE_ITO = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DPI = 200
RC = {
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 7,
    "axes.prop_cycle": mpl.cycler(color=OKABE_ITO),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "pdf.fonttype": 42,  # TrueType in PDFs: text stays editable in vector editors
    "savefig.dpi": DPI,
}
SEQUENTIAL = "viridis"  # for continuous values (perceptually uniform, colour-blind safe)

F = TypeVar("F", bound=Callable[..., Any])


def styled(draw: F) -> F:
    """Draw under :data:`RC` (fonts, palette, grid) whatever the caller's matplotlib settings."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with mpl.rc_context(RC):
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def colour(i: int) -> str:
    """The ``i``-th group's colour (cycling through the 8 Okabe-Ito colours)."""
    return OKABE_ITO[i % len(OKABE_ITO)]


def marker(i: int) -> str:
    """The ``i``-th group's marker: a new marker each time the colours cycle, so groups 0 and
    8 share a colour but not a marker."""
    return MARKERS[(i // len(OKABE_ITO)) % len(MARKERS)]


def figure(width: float, height: float, **kwargs: Any) -> Figure:
    """A figure (inches) with constrained layout on an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def log_if_wide(ax: Any, values: Sequence[float] | np.ndarray, axis: str = "y") -> bool:
    """Put ``axis`` on a log scale when the positive ``values`` span two decades or more (a
    loss falling from 50,000 to 0.5 is a flat line on a linear axis); returns whether it did."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2 or (v <= 0).any() or v.max() / v.min() < 100:
        return False
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    return True


def group_legend(ax: Any, n: int, **kwargs: Any) -> Any:
    """A legend for ``n`` groups, in columns of at most 12 entries, outside the axes on the
    right when there are many."""
    ncols = max(1, int(np.ceil(n / 12)))
    if n > 6:
        kwargs.setdefault("loc", "center left")
        kwargs.setdefault("bbox_to_anchor", (1.01, 0.5))
    return ax.legend(ncols=ncols, **kwargs)


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as ``path`` (PNG, 200 dpi) and the same name with ``.pdf``, atomically;
    returns the PNG's path."""
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, fmt in ((path.with_suffix(".pdf"), "pdf"), (path, "png")):
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            fig.savefig(f, format=fmt, dpi=DPI, bbox_inches="tight")
    return path
