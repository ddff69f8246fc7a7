"""``python -m nwa.fit --config configs/<recipe>.yaml [--config more.yaml] [--field value ...]``:
train a metanetwork, then evaluate the best checkpoint on the test split.

Add ``--ckpt_path last`` to continue the newest run of the same ``--run_name`` (default: the
recipe's file name) from its last finished epoch, in its folder and W&B run (:mod:`nwa.resume`)."""

from __future__ import annotations

import sys
from typing import Any

from nwa.cli import main


def run(args: list[str] | None = None) -> tuple[Any, list[dict[str, float]]]:
    """Fit, then test the best checkpoint (the final weights when there is none: under
    ``fast_dev_run``, with checkpointing off, or before any epoch finished).

    Returns:
        The CLI object (trainer, model, datamodule) and the test metrics.
    """
    cli = main("fit", args)
    best = getattr(cli.trainer.checkpoint_callback, "best_model_path", "")
    ckpt = "best" if best and not cli.trainer.fast_dev_run else None
    return cli, cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)


if __name__ == "__main__":
    run(sys.argv[1:])
