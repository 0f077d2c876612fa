"""Faults: RNG states in checkpoints, a consistent checkpoint when a signal stops the run, preemption on SLURM.

- Every checkpoint carries the torch, numpy and Python RNG states; restoring one puts them back, so a resumed run
  draws the same random numbers as an uninterrupted one (data order is seeded by epoch in the datamodule).
- SIGTERM (a scheduler's stop, ``kill``) and Ctrl-C: Lightning stops at the next batch boundary; this callback then
  writes ``checkpoints/last.ckpt`` of that exact state into the run directory, and the CLI exits non-zero naming it.
- SIGUSR1 under SLURM (``#SBATCH --signal=SIGUSR1@90``): Lightning's handler saves ``hpc_ckpt_N.ckpt`` into the
  run directory (the trainer's ``default_root_dir``) and requeues the job. SLURM signals every task, each at its own
  moment, some while they wait inside a collective, and that handler's save waits at a barrier: run from the signal,
  it deadlocks DDP ranks. So the signal is only noted; at the end of each training batch the ranks agree (one
  all-reduce of a flag) and, if any was signalled, all run Lightning's handler together (save, requeue once from
  rank 0) and stop with a consistent ``last.ckpt``. A signal after the last training batch stops nothing.
"""

import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException


def last_checkpoint_path(trainer: Trainer) -> Path:
    """``<run directory>/checkpoints/last.ckpt``: the true last state, written every epoch and at a stop."""
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class FaultTolerance(Callback):
    """See the module docstring. ``stopped_by`` names the signal that stopped the run, ``saved`` the checkpoint written
    then (both None when the run was not stopped)."""

    def __init__(self) -> None:
        self.stopped_by: str | None = None
        self.saved: Path | None = None
        self._previous_sigusr1: Any = None
        self._sigusr1_received = False

    # -- RNG states ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # plain containers and tensors only, so that torch.load(weights_only=True) reads the checkpoint
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])

    # -- signals ---------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.stopped_by, self.saved, self._sigusr1_received = None, None, False
        if trainer.is_global_zero:  # preemption checkpoints are consumed once: the run has resumed (or started anew)
            for path in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
                path.unlink()
        previous = signal.getsignal(signal.SIGUSR1)
        if callable(previous):  # Lightning's SLURM handler (save + requeue): run at a batch end, see the docstring
            self._previous_sigusr1 = previous
            signal.signal(signal.SIGUSR1, self._note_sigusr1)

    def _note_sigusr1(self, signum: int, frame: Any) -> None:
        self._sigusr1_received = True

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._previous_sigusr1 is None:
            return
        if trainer.strategy.reduce_boolean_decision(self._sigusr1_received, all=False):
            self._previous_sigusr1(signal.SIGUSR1, None)
            self.stopped_by = "SIGUSR1"
            request_stop(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_sigusr1()

    def _restore_sigusr1(self) -> None:
        if self._previous_sigusr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_sigusr1)
            self._previous_sigusr1 = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_sigusr1()
        if not isinstance(exception, SIGTERMException | KeyboardInterrupt) or not trainer.training:
            return
        self.stopped_by = self.stopped_by or ("SIGTERM" if isinstance(exception, SIGTERMException) else "SIGINT")
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the full state: a resume needs the optimiser
        self.saved = path


def request_stop(trainer: Trainer) -> None:
    """Take Lightning's own stop path for a signal: ``SIGTERMException`` at the end of the batch, with its checkpoint
    and teardown. Lightning has no public way in: this sets its private ``_SignalConnector.received_sigterm`` (2.6),
    and refuses when a Lightning version lacks it, where setting it would silently stop nothing
    (``tests/test_faults.py`` checks the pinned version)."""
    connector = trainer._signal_connector
    if not hasattr(connector, "received_sigterm"):
        raise RuntimeError("this Lightning version has no _SignalConnector.received_sigterm: SIGUSR1 cannot stop a run")
    connector.received_sigterm = True
