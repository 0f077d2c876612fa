"""Test-only callbacks, importable by class path from a run's configuration."""

import os
import signal
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


class SignalAt(Callback):
    """Sends ``signum`` to this process at the end of training batch ``batch`` of epoch ``epoch``: a preemption at a
    known point. ``batch = -1`` means the last batch of the epoch, i.e. the epoch boundary."""

    def __init__(self, epoch: int, batch: int, signum: int = int(signal.SIGTERM)):
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        last = trainer.num_training_batches - 1
        if trainer.current_epoch == self.epoch and batch_idx == (last if self.batch == -1 else self.batch):
            os.kill(os.getpid(), self.signum)


class PauseAt(Callback):
    """At the first training batch of epoch ``epoch``, touches ``ready`` in the working directory and sleeps: a writer
    alive in the middle of its run, with the checkpoints of the epochs before on disk."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch:
            Path("ready").touch()
            time.sleep(3600)
