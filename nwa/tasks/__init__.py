"""Tasks: a head on a representation, its loss, and its torchmetrics.

Metanetworks compute representations; a task turns them into predictions, so any encoder pairs
with any task. Every task is built from the representation size and the data's :class:`Targets`.
"""

from __future__ import annotations

from nwa.tasks.multitask import MultiTask
from nwa.tasks.single import (
    TASKS,
    MultiClass,
    MultiLabel,
    PerProperty,
    Regression,
    Targets,
    Task,
    compute_metrics,
)


def task_for(in_dim: int, targets: Targets, hidden: int | None = None) -> Task:
    """The default task for the data's targets."""
    if targets.kind == "multitask":
        return MultiTask(in_dim, targets, hidden)
    return TASKS[targets.kind](in_dim, targets, hidden)


__all__ = [
    "TASKS",
    "MultiClass",
    "MultiLabel",
    "MultiTask",
    "PerProperty",
    "Regression",
    "Targets",
    "Task",
    "compute_metrics",
    "task_for",
]
