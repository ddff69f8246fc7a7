"""A callback for job tests: training epochs that last at least a set time, so a job's progress
is predictable on any machine (sleeping changes no number the run computes)."""

from __future__ import annotations

import time

from lightning.pytorch import Callback, LightningModule, Trainer


class Pace(Callback):
    """Each training epoch lasts at least ``seconds``.

    Args:
        seconds: The shortest epoch.
    """

    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        time.sleep(max(0.0, self.seconds - (time.monotonic() - self._start)))


class Killed(Callback):
    """The process is killed as the system kills it when memory runs out (SIGKILL), at the start
    of training."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
