"""Test-only callbacks, importable by class path from a run's configuration, and a simulated SLURM (fake ``srun`` and
``scontrol`` on the PATH) for running the real code path of a job on one machine."""

import os
import random
import signal
import socket
import sys
import time
from pathlib import Path

import torch
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


class HoldAt(Callback):
    """Global rank 0 stops at the end of training batch ``batch`` of epoch ``epoch``, writes ``marker`` and waits
    until the file ``marker.release`` exists (at most ``timeout`` s). The other ranks run on into the next batch's
    first collective and wait there: a signal sent meanwhile reaches the ranks at different points of the code, one
    of them inside a collective, as a signal from SLURM does."""

    def __init__(self, epoch: int, batch: int, marker: str, timeout: float = 300.0):
        self.epoch, self.batch, self.marker, self.timeout = epoch, batch, Path(marker), timeout

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if not trainer.is_global_zero or (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        release, deadline = self.marker.with_suffix(".release"), time.monotonic() + self.timeout
        self.marker.write_text(str(os.getpid()))
        while not release.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{release} did not appear within {self.timeout} s")
            time.sleep(0.01)


class SaveGradients(Callback):
    """Global rank 0 saves the gradients of the first optimiser step (under DDP: averaged over ranks) to ``path``."""

    def __init__(self, path: str):
        self.path = path

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if trainer.global_step == 0 and trainer.is_global_zero:
            grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            torch.save(grads, self.path)


class RecordCheckpointWrites(Callback):
    """Appends ``<global rank> <pid> <checkpoint path>`` to the file ``path`` for every checkpoint a process writes."""

    def __init__(self, path: str):
        self.path = path

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def recorded(checkpoint, path, storage_options=None) -> None:
            with open(self.path, "a") as f:
                f.write(f"{trainer.global_rank} {os.getpid()} {path}\n")
            save(checkpoint, path, storage_options=storage_options)

        io.save_checkpoint = recorded


# Fake SLURM commands. ``srun`` starts SLURM_NNODES x SLURM_NTASKS_PER_NODE copies of its command with the variables
# srun gives each task, writes their pids to $FAKE_SRUN_PIDS (to signal them) and their exit codes to
# $FAKE_SRUN_CODES, and exits with the largest code. ``scontrol`` appends its arguments to $FAKE_SCONTROL_LOG.
SRUN = """\
import os, subprocess, sys
nodes, per_node = int(os.environ["SLURM_NNODES"]), int(os.environ["SLURM_NTASKS_PER_NODE"])
tasks = [
    subprocess.Popen(sys.argv[1:], env={**os.environ, "SLURM_NODEID": str(node), "SLURM_LOCALID": str(local),
                                        "SLURM_PROCID": str(node * per_node + local)})
    for node in range(nodes) for local in range(per_node)
]
with open(os.environ["FAKE_SRUN_PIDS"], "w") as f:
    f.write(" ".join(str(task.pid) for task in tasks))
codes = [task.wait() for task in tasks]
with open(os.environ["FAKE_SRUN_CODES"], "w") as f:
    f.write(" ".join(map(str, codes)))
sys.exit(max(codes))
"""
SCONTROL = 'echo "$@" >> "$FAKE_SCONTROL_LOG"\n'


def free_port() -> int:
    """A free TCP port below the kernel's ephemeral range. A port from that range (``bind(0)``) is free only until
    something else binds it, and the gloo connections of a DDP job in a parallel test worker bind ephemeral ports: one
    that took this job's store port reads the job's store traffic as its own and corrupts its heap ("malloc():
    unaligned tcache chunk detected", SIGABRT). Ports below the range are never handed out that way."""
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    first_ephemeral = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    draw = random.SystemRandom()  # not the tests' seeded generator: parallel workers would draw the same ports
    for _ in range(100):
        port = draw.randrange(20000, first_ephemeral)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [20000, {first_ephemeral}) after 100 draws")


def fake_slurm_commands(bin_dir: Path) -> None:
    """Writes the fake ``srun`` and ``scontrol`` into ``bin_dir`` (put it first on the PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, text in {"srun": f"#!{sys.executable}\n{SRUN}", "scontrol": f"#!/bin/sh\n{SCONTROL}"}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
