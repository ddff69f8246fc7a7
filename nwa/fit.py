"""``python -m nwa.fit --config configs/<recipe>.yaml [--config more.yaml] [--field value ...]``:
train a metanetwork, then evaluate the best checkpoint on the test split."""

from __future__ import annotations

import sys

from nwa.cli import main


def run(args: list[str] | None = None) -> None:
    cli = main("fit", args)
    if cli.trainer.fast_dev_run:
        cli.trainer.test(cli.model, datamodule=cli.datamodule)
    else:
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best")


if __name__ == "__main__":
    run(sys.argv[1:])
