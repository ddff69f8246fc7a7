"""The benchmark suite behind ``python -m nwa.bench``: every metanetwork on the default zoos over
several seeds, and a report of the seed papers' tables and figures.

- :mod:`nwa.suite.plan`: methods, families, the ``quick`` and ``full`` presets, the list of runs;
- :mod:`nwa.suite.execute`: one run in this process (same code as ``python -m nwa.fit``), its
  results kept on disk so a rerun skips it;
- :mod:`nwa.suite.report` and :mod:`nwa.suite.figures`: Markdown tables (mean ± std) and PNGs.
"""

from nwa.suite.plan import METHODS, SUITES, RunSpec, Suite, plan

__all__ = ["METHODS", "SUITES", "RunSpec", "Suite", "plan"]
