"""The progress bar of nwa's long commands (zoo builds, the benchmark suite): a description, the
bar, done/total, elapsed time and an ETA."""

from __future__ import annotations

from typing import Any


def count_bar(description: str = "{task.description}") -> Any:
    """A ``rich.progress.Progress`` counting finished items, with elapsed time and ETA.

    Args:
        description: Format of the description column (rich markup allowed).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
