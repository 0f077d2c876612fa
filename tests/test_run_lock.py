"""One writer per run directory (``brokenbind.runlock``): a second writer is refused naming the holder, a writer killed
with SIGKILL leaves nothing that blocks the resume, and a failed start leaves no directory that it created."""

import csv
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from brokenbind import rundir
from brokenbind.cli import cli
from brokenbind.errors import ConfigError, DataError
from brokenbind.runlock import RECORD, Holder, RunLock, process_start
from datamodules.base import PairedDataModule

ROOT = Path(__file__).resolve().parents[1]
TWO = str(ROOT / "experiments" / "two_dataset.yaml")
BASE = ["--config", TWO, "--trainer.max_epochs=3", "--trainer.limit_train_batches=3", "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false"]  # fmt: skip
RUN = Path("logs") / "two_dataset" / "version_0"
PAUSE = '--trainer.callbacks+={"class_path": "tests.helpers.PauseAt", "init_args": {"epoch": 1}}'
REFUSAL = (
    "brokenbind: ConfigError: run directory {run} is in use by `brokenbind fit` (host {host}, pid {pid}, since "
    "{since}): a run directory has one writer, and a second one would write its checkpoints and results.csv rows "
    "twice. Wait until that process ends or stop it (SIGTERM saves last.ckpt; resume with --ckpt_path last); to score "
    "one of its checkpoints meanwhile, copy the file out of the run directory and pass the copy"
)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def brokenbind_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("brokenbind: ")]


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_writer_killed_with_sigkill_does_not_block_the_resume(
    tmp_path, monkeypatch, capsys, caplog
):
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with (tmp_path / "first.err").open("w") as err:  # a file, not a pipe: a full pipe would stall the writer
        first = subprocess.Popen([sys.executable, "-m", "brokenbind.cli", "fit", *BASE, PAUSE], cwd=tmp_path, env=env,
                                 stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "ready").exists():  # paused in epoch 1: epoch 0's checkpoints are on disk
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.err").read_text()[-3000:]
            time.sleep(0.5)
        holder = json.loads((RUN / RECORD).read_text())
        assert (holder["host"], holder["pid"], holder["command"]) == (socket.gethostname(), first.pid, "brokenbind fit")
        refusal = REFUSAL.format(run=RUN, host=holder["host"], pid=first.pid, since=holder["since"])
        before = files_under(RUN)

        # the user's second writer: the resume command of the same experiment, while the first one trains
        second = subprocess.run([sys.executable, "-m", "brokenbind.cli", "fit", "--config", TWO, "--ckpt_path", "last"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert brokenbind_lines(second.stderr) == [refusal]
        # test, validate and predict of one of its checkpoints would write into it too
        best = str(RUN / "checkpoints" / "best-epoch000.ckpt")
        for subcommand in ("test", "validate", "predict"):
            capsys.readouterr()
            with pytest.raises(SystemExit) as refused:
                cli([subcommand, "--ckpt_path", best])
            assert refused.value.code == 2 and brokenbind_lines(capsys.readouterr().err) == [refusal]
        assert files_under(RUN) == before  # refused writers wrote nothing and removed nothing
    finally:
        first.kill()  # SIGKILL: no handler runs, the record stays behind
        first.wait()
    assert (RUN / RECORD).is_file()

    with caplog.at_level("INFO", logger="lightning.pytorch"):
        resumed = cli(["fit", *BASE, "--ckpt_path", "last"])
    since = holder["since"]
    assert f"taking over from `brokenbind fit` (host {socket.gethostname()}, pid {first.pid}, since {since})" in (
        caplog.text
    )
    assert resumed.trainer.current_epoch == 3 and Path(resumed.trainer.log_dir) == RUN
    with (RUN / "results.csv").open() as f:
        assert [(r["stage"], r["flow"]) for r in csv.DictReader(f)] == [("val", "fou->pix->zer"),
                                                                         ("test", "fou->pix->zer")]  # fmt: skip
    assert not (RUN / RECORD).exists()  # a clean end leaves no record: the next writer takes over nothing
    lock = RunLock(RUN)
    assert lock.acquire("test") is None  # free, and the directory existed
    lock.release()


@pytest.mark.slow
def test_under_ddp_only_rank_zero_locks_and_a_two_process_resume_runs(tmp_path):
    """Lightning's launcher runs the command again in every other process; they resolve the same run directory on a
    resume and must not lock it (they would refuse themselves and stall rank 0)."""
    command = [sys.executable, "-m", "brokenbind.cli", "fit", "--config", TWO, "--hardware", "ddp_cpu",
               "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false",
               "--test_after_fit=false"]  # fmt: skip
    for more in (["--trainer.max_epochs=1"], ["--trainer.max_epochs=2", "--ckpt_path", "last"]):
        done = subprocess.run([*command, *more], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / RUN
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert [p.name for p in run.parent.iterdir()] == ["version_0"] and not (run / RECORD).exists()


def test_a_free_lock_whose_recorded_holder_still_runs_on_this_host_is_refused(tmp_path, caplog):
    """A lock the file system did not keep (NFS with nolock): the record names a live process, so the run stops."""
    run = tmp_path / "run"
    run.mkdir()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = Holder(socket.gethostname(), alive.pid, "2026-01-01 00:00:00+0000", "brokenbind fit",
                        process_start(alive.pid))  # fmt: skip
        (run / RECORD).write_text(json.dumps(holder.__dict__))
        with pytest.raises(ConfigError, match=f"pid {alive.pid}, since 2026-01-01 00:00:00\\+0000\\) still runs"):
            RunLock(run).acquire("fit")
        # the same pid with another start time is another process (a reused pid): the holder is gone
        reused = Holder(**{**holder.__dict__, "process_start": holder.process_start - 1})
        (run / RECORD).write_text(json.dumps(reused.__dict__))
        assert not reused.running_here()
    finally:
        alive.kill()
        alive.wait()
    # its pid ended: a stale record, taken over with one line
    lock = RunLock(run)
    with caplog.at_level("INFO", logger="lightning.pytorch"):
        assert lock.acquire("fit") is None
    assert f"taking over from `brokenbind fit` (host {socket.gethostname()}, pid {alive.pid}" in caplog.text
    assert Holder.read(run).pid == os.getpid()
    lock.release()
    assert not (run / RECORD).exists()


def fail_in_setup(self, stage=None):
    raise DataError("broken data")


@pytest.mark.parametrize(
    ("existing", "left"),
    [([], []), (["logs/other/version_0/x"], ["other", "other/version_0", "other/version_0/x"]),
     (["logs/two_dataset/version_0/x"], ["two_dataset", "two_dataset/version_0", "two_dataset/version_0/x"])],
    ids=["fresh", "other_experiment", "earlier_run"],
)  # fmt: skip
def test_a_failed_start_removes_the_directories_it_created_and_nothing_else(
    existing, left, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    for path in map(Path, existing):
        path.parent.mkdir(parents=True)
        path.touch()
    monkeypatch.setattr(PairedDataModule, "setup", fail_in_setup)  # fails after the run directory is locked
    with pytest.raises(SystemExit) as failed:
        cli(["fit", *BASE])
    assert failed.value.code == 2
    assert brokenbind_lines(capsys.readouterr().err) == ["brokenbind: DataError: broken data"]
    assert files_under(tmp_path / "logs") == left and Path("logs").exists() == bool(existing)


def claim_after(barrier, root: Path, stale: bool, out) -> None:
    """One process's claim, released with the others at once; ``stale``: its first listing sees no run (as if every
    process listed before any created its directory), so every claim but one first collides."""
    if stale:
        first = iter(["version_0"])
        rundir.next_version = lambda root, listed=rundir.next_version: next(first, None) or listed(root)
    barrier.wait()
    out.put(rundir.claim_new_run(root)[0].name)


@pytest.mark.parametrize("stale", [False, True], ids=["race", "stale_listing"])
def test_runs_claimed_at_the_same_moment_each_get_their_own_directory(tmp_path, stale):
    """Eight processes claim a run directory at once (a barrier releases them together): eight directories, each
    claimed once, numbered without a gap."""
    context = multiprocessing.get_context("fork")  # no re-import: the claims start within microseconds
    barrier, out = context.Barrier(8), context.Queue()
    processes = [context.Process(target=claim_after, args=(barrier, tmp_path / "logs", stale, out)) for _ in range(8)]
    for process in processes:
        process.start()
    claimed = [out.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert sorted(claimed) == [f"version_{i}" for i in range(8)]


@pytest.mark.slow
def test_new_runs_started_together_each_get_their_own_directory(tmp_path):
    """Two fits started at the same moment, end to end: each run its own version_N, holding its own configuration and
    only its own results (the exclusive claim itself is raced above, without the start-up time of a command)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable,
        "-m",
        "brokenbind.cli",
        "fit",
        "--config",
        TWO,
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.enable_progress_bar=false",
        "--test_after_fit=false",
    ]
    pair = [
        subprocess.Popen(
            [*command, f"--seed_everything={seed}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(2)
    ]
    for process in pair:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    runs = sorted((tmp_path / RUN.parent).iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    seeds_seen = []
    for run in runs:
        with (run / "results.csv").open() as f:
            rows = list(csv.DictReader(f))
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert [r["seed"] for r in rows] == [str(config["seed_everything"])]  # one run's rows, under its config
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]
        for ckpt in (run / "checkpoints").iterdir():  # both checkpoints are this run's
            assert torch.load(ckpt, weights_only=True)["config"]["seed_everything"] == config["seed_everything"]
        seeds_seen.append(config["seed_everything"])
    assert sorted(seeds_seen) == [0, 1]
