"""``python -m nwa.fit --config configs/<recipe>.yaml [--config more.yaml] [--field value ...]``:
train a metanetwork, then evaluate the best checkpoint on the test split."""

from __future__ import annotations

import sys
from typing import Any

from nwa.cli import main


def run(args: list[str] | None = None) -> tuple[Any, list[dict[str, float]]]:
    """Fit, then test the best checkpoint (the last weights under ``fast_dev_run``).

    Returns:
        The CLI object (trainer, model, datamodule) and the test metrics.
    """
    cli = main("fit", args)
    ckpt = None if cli.trainer.fast_dev_run else "best"
    return cli, cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)


if __name__ == "__main__":
    run(sys.argv[1:])
