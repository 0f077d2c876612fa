"""The multi-node SLURM job on one machine: scripts/slurm/multinode.sbatch run by bash under a fake ``srun`` that
starts 2 "nodes" x 2 tasks with the variables srun sets, DDP over gloo on localhost (``--trainer.accelerator=cpu
--trainer.precision=32`` passed through the template's extra arguments), and a fake ``scontrol``.

Four ranks train as one process on the concatenated batch, rank 0 alone writes the run directory, and a SIGUSR1 that
reaches the tasks at different points (some inside a collective) requeues the job once and the requeued job resumes
exactly."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from brokenbind.cli import cli as main
from tests.helpers import fake_slurm_commands, free_port

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "scripts" / "slurm" / "multinode.sbatch"
NODES, TASKS_PER_NODE, LOCAL_BATCH = 2, 2, 16
WORLD = NODES * TASKS_PER_NODE
# 2 epochs of 9 global batches of 64 rows per dataset; MOX from the start, so its gathered terms are in the gradient.
# Without the default's noise on the embeddings: the noise is drawn per row of the gathered batch, and DDP's sampler
# gathers one process's batch in another row order, so each sample would get other noise (test_ddp checks the noisy
# methods against one process on the gathered batch itself)
SETTINGS = [
    "--trainer.accelerator=cpu", "--trainer.precision=32", "--trainer.max_epochs=2",
    "--trainer.enable_progress_bar=false", "--model.method.init_args.consistency_epochs=0",
    "--model.method.init_args.embedding_noise=0",
]  # fmt: skip
RUN = Path("logs") / "two_dataset"
TIMEOUT = 600  # 4 processes on a shared 2-core machine


def callback(name: str, **init_args) -> str:
    spec = {"class_path": f"tests.helpers.{name}", "init_args": init_args}
    return f"--trainer.callbacks+={json.dumps(spec)}"


class Job:
    """A job of the template, as ``sbatch --nodes=2 --ntasks-per-node=2 multinode.sbatch two_dataset ARGS`` runs it:
    bash in ``cwd`` with the job's variables; each ``start`` is one run of the job (a requeued job runs again)."""

    def __init__(self, cwd: Path, job_id: str):
        self.cwd, self.job_id = cwd, job_id
        self.bin, self.pids, self.codes = cwd / "bin", cwd / "srun.pids", cwd / "srun.codes"
        self.scontrol = cwd / "scontrol.log"
        fake_slurm_commands(self.bin)
        shim = cwd / ".venv" / "bin" / "brokenbind"  # what the template calls: the CLI of this checkout
        shim.parent.mkdir(parents=True)
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m brokenbind.cli "$@"\n')
        shim.chmod(0o755)
        (cwd / "experiments").symlink_to(ROOT / "experiments")
        self.run = cwd / RUN / f"slurm_{job_id}"

    def start(self, *extra: str) -> subprocess.Popen:
        self.pids.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
        env.update(
            SLURM_JOB_ID=self.job_id, SLURM_JOB_NAME="brokenbind", SLURM_NNODES=str(NODES),
            SLURM_NTASKS_PER_NODE=str(TASKS_PER_NODE), SLURM_NTASKS=str(WORLD), SLURM_NODELIST="node[1-2]",
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),  # node1's address and a free port
            PATH=f"{self.bin}{os.pathsep}{env['PATH']}",
            PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")]),
            FAKE_SRUN_PIDS=str(self.pids), FAKE_SRUN_CODES=str(self.codes), FAKE_SCONTROL_LOG=str(self.scontrol),
        )  # fmt: skip
        command = ["bash", str(TEMPLATE), "two_dataset", f"--data.init_args.batch_size={LOCAL_BATCH}", *SETTINGS]
        return subprocess.Popen([*command, *extra], cwd=self.cwd, env=env, stderr=subprocess.PIPE, text=True)

    def finish(self, process: subprocess.Popen) -> tuple[list[int], str]:
        """(exit code of every task, stderr of the job, also kept in job.err); a job still running after TIMEOUT s
        is killed."""
        try:
            _, err = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill(process)
            raise
        (self.cwd / "job.err").write_text(err)
        return [int(c) for c in self.codes.read_text().split()], err

    def kill(self, process: subprocess.Popen) -> None:
        for pid in self.pids.read_text().split() if self.pids.exists() else []:
            os.kill(int(pid), signal.SIGKILL)
        process.kill()

    def requeues(self) -> list[str]:
        return self.scontrol.read_text().splitlines() if self.scontrol.exists() else []


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def results(run: Path) -> list[dict[str, str]]:
    with (run / "results.csv").open() as f:
        return list(csv.DictReader(f))


def assert_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tolerance: float) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=tolerance, atol=tolerance, msg=lambda m, k=key: f"{k}: {m}")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """(run directory, first gradients) of one process on the global batch (4 x the per-task batch), in this
    process."""
    cwd, here = tmp_path_factory.mktemp("one_process"), os.getcwd()
    os.chdir(cwd)
    try:
        run = main([
            "fit", "--config", str(ROOT / "experiments" / "two_dataset.yaml"), *SETTINGS,
            f"--data.init_args.batch_size={WORLD * LOCAL_BATCH}", callback("SaveGradients", path=str(cwd / "grads.pt")),
        ])  # fmt: skip
        return cwd / run.trainer.log_dir, torch.load(cwd / "grads.pt")
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Job, list[int], str]:
    """(job, exit code of every task, stderr) of a job that runs to its end."""
    job = Job(tmp_path_factory.mktemp("uninterrupted"), "7001")
    process = job.start(
        callback("SaveGradients", path=str(job.cwd / "grads.pt")),
        callback("RecordCheckpointWrites", path=str(job.cwd / "writes.log")),
    )
    return job, *job.finish(process)


@pytest.mark.slow
def test_two_nodes_of_two_tasks_train_as_one_process_on_the_concatenated_batch(one_process, uninterrupted):
    job, codes, err = uninterrupted
    assert codes == [0] * WORLD, err[-3000:]
    one_run, one_grads = one_process
    assert all(g.abs().sum() > 0 for g in one_grads.values())
    assert_close(torch.load(job.cwd / "grads.pt"), one_grads, 1e-5)  # DDP's gradients: the mean over the 4 ranks
    assert_close(weights(job.run), weights(one_run), 1e-5)


@pytest.mark.slow
def test_rank_zero_alone_writes_one_run_directory(uninterrupted):
    job, codes, err = uninterrupted
    assert codes == [0] * WORLD, err[-3000:]
    assert [p.name for p in (job.cwd / RUN).iterdir()] == [job.run.name]
    writes = [line.split() for line in (job.cwd / "writes.log").read_text().splitlines()]
    rank_zero = writes[0][1]
    assert {(rank, pid) for rank, pid, _ in writes} == {("0", rank_zero)}
    written = [Path(path).name for *_, path in writes]
    assert written.count("last.ckpt") == 2  # once an epoch
    assert {p.name for p in (job.run / "checkpoints").iterdir()} <= set(written)
    assert [r["stage"] for r in results(job.run)] == ["val", "test"]
    events = list(job.run.glob("events.out.tfevents.*"))  # events.out.tfevents.<time>.<host>.<pid>.<n>
    assert events and {p.name.split(".")[-2] for p in events} == {rank_zero}
    assert not re.findall(r"^\S+\.py:\d+: .*", err, re.MULTILINE)  # a warning in a clean run is a defect


@pytest.mark.slow
def test_sigusr1_to_every_task_requeues_the_job_once_and_the_requeued_job_resumes_exactly(uninterrupted, tmp_path):
    job, marker = Job(tmp_path, "7002"), tmp_path / "held"
    writes = tmp_path / "writes.log"
    process = job.start(
        callback("HoldAt", epoch=1, batch=3, marker=str(marker)), callback("RecordCheckpointWrites", path=str(writes))
    )
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not marker.exists():
        job.kill(process)
        pytest.fail(f"the job never reached batch 3 of epoch 1: {process.communicate()[1][-3000:]}")
    for pid in job.pids.read_text().split():  # SLURM's warning before the time limit reaches every task
        os.kill(int(pid), signal.SIGUSR1)
    marker.with_suffix(".release").touch()
    codes, err = job.finish(process)
    assert codes == [128 + signal.SIGUSR1] * WORLD, err[-3000:]
    assert job.requeues() == ["requeue 7002"]
    assert [p.name for p in job.run.glob("hpc_ckpt_*.ckpt")] == ["hpc_ckpt_1.ckpt"]
    written = [line.split() for line in writes.read_text().splitlines()]
    assert {rank for rank, *_ in written} == {"0"}
    assert [Path(path).name for *_, path in written] == [
        "best-epoch000.ckpt", "last.ckpt", "hpc_ckpt_1.ckpt", "last.ckpt"
    ]  # fmt: skip
    assert not (job.run / "results.csv").exists()
    # rank 0 noted the signal at the end of batch 3, the others once it let them out of batch 4's first collective
    assert f"brokenbind: stopped by SIGUSR1 at epoch 1, step 14; checkpoint: {RUN / 'slurm_7002'}/checkpoints" in err

    codes, err = job.finish(job.start())  # the requeued job: the same command, the same job id
    assert codes == [0] * WORLD, err[-3000:]
    assert f"Restored all states from the checkpoint at {RUN / 'slurm_7002' / 'checkpoints' / 'last.ckpt'}" in err
    assert job.requeues() == ["requeue 7002"]
    assert [p.name for p in (tmp_path / RUN).iterdir()] == [job.run.name]
    assert not list(job.run.glob("hpc_ckpt_*.ckpt"))  # consumed once
    expected = uninterrupted[0].run
    assert_close(weights(job.run), weights(expected), 1e-6)
    got_rows, rows = results(job.run), results(expected)
    assert [(r["stage"], r["weights"]) for r in got_rows] == [(r["stage"], r["weights"]) for r in rows]
    # the weights agree to float rounding (the reductions of four processes), not bit for bit, so two gallery items
    # whose scores all but tie may swap ranks: a few millionths of mAP
    for got_row, row in zip(got_rows, rows, strict=True):
        for metric in ("map_instance", "map_class", "r1", "r5", "r10"):
            assert float(got_row[metric]) == pytest.approx(float(row[metric]), abs=1e-5)
