"""Faults as a user meets them: resume after a stop (at an epoch boundary and mid-epoch) equals an uninterrupted run,
signals exit non-zero with a checkpoint, SLURM preemption is resumed by its own requeued job only, NaN stops the run,
and nothing broken is ever scored or checkpointed."""

import csv
import errno
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from unittest.mock import Mock

import pytest
import torch

from brokenbind.callbacks import EmergentBinding
from brokenbind.cli import cli as main
from brokenbind.errors import ConfigError, DivergenceError
from brokenbind.losses.temperature import LogitScale
from brokenbind.metrics.retrieval import recall_at_k, retrieval_metrics
from brokenbind.settings import expand_presets
from tests.helpers import fake_slurm_commands

ROOT = Path(__file__).resolve().parents[1]
TWO = str(ROOT / "experiments" / "two_dataset.yaml")
# 3 epochs of 9 batches, MOX from epoch 1: a resume must restore the MOX phase, the data order and the optimiser
BASE = [
    "--config", TWO, "--trainer.max_epochs=3", "--trainer.enable_progress_bar=false",
    "--model.method.init_args.consistency_epochs=1",
]  # fmt: skip
RUN = Path("logs") / "two_dataset" / "version_0"


def stop_at(epoch: int, batch: int, signum: int = signal.SIGTERM) -> str:
    """A callback that sends ``signum`` at the end of one training batch (-1: the epoch's last batch)."""
    init = f'{{"epoch": {epoch}, "batch": {batch}, "signum": {int(signum)}}}'
    return f'--trainer.callbacks+={{"class_path": "tests.helpers.SignalAt", "init_args": {init}}}'


def heads(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def results(run: Path) -> list[dict[str, str]]:
    with (run / "results.csv").open() as f:
        return list(csv.DictReader(f))


def assert_same_run(run: Path, reference: tuple[dict, list]) -> None:
    weights, rows = reference
    got = heads(run)
    assert got.keys() == weights.keys()
    for key, value in weights.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6)
    got_rows = results(run)
    assert [(r["stage"], r["weights"]) for r in got_rows] == [(r["stage"], r["weights"]) for r in rows]
    for got_row, row in zip(got_rows, rows, strict=True):
        for metric in ("map_instance", "map_class", "r1", "r5", "r10"):
            assert float(got_row[metric]) == pytest.approx(float(row[metric]), abs=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, list]:
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("uninterrupted"))
    try:
        main(["fit", *BASE])
        return heads(RUN), results(RUN)
    finally:
        os.chdir(cwd)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("epoch", "batch"), [(0, -1), (1, 3)], ids=["epoch_boundary", "mid_epoch"])
def test_a_run_stopped_by_sigterm_and_resumed_equals_an_uninterrupted_run(
    epoch, batch, uninterrupted, in_tmp, capsys, caplog
):
    with pytest.raises(SystemExit) as stopped:
        main(["fit", *BASE, stop_at(epoch, batch)])
    assert stopped.value.code == 128 + signal.SIGTERM
    last = RUN / "checkpoints" / "last.ckpt"
    assert f"stopped by SIGTERM at epoch {epoch + (batch == -1)}" in capsys.readouterr().err
    assert last.is_file() and not (RUN / "results.csv").exists()

    with caplog.at_level("INFO", logger="lightning.pytorch"):  # whatever level an earlier test left it at
        resumed = main(["fit", *BASE, "--ckpt_path", "last"])
    assert f"Restored all states from the checkpoint at {last}" in caplog.text
    assert Path(resumed.trainer.log_dir) == RUN  # the same run directory, results and best-checkpoint tracking
    assert_same_run(RUN, uninterrupted)


def test_last_checkpoint_is_the_true_last_epoch_even_when_validation_did_not_improve(in_tmp):
    # a learning rate of 0 never improves on epoch 0, the old single-callback setup then left last.ckpt at epoch 0
    main(["fit", *BASE, "--model.optimizer.init_args.lr=1e-12", "--test_after_fit=false"])
    checkpoints = sorted(p.name for p in (RUN / "checkpoints").glob("*.ckpt"))
    assert checkpoints == ["best-epoch000.ckpt", "last.ckpt"]
    assert torch.load(RUN / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


def test_slurm_preemption_is_resumed_by_the_requeued_job_and_ignored_by_other_runs(
    uninterrupted, in_tmp, monkeypatch, caplog
):
    bin_dir, requeues = in_tmp / "bin", in_tmp / "scontrol.log"
    fake_slurm_commands(bin_dir)
    monkeypatch.setenv("FAKE_SCONTROL_LOG", str(requeues))
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "brokenbind", "SLURM_JOB_ID": "4242",
             "SLURM_NODELIST": "localhost", "SLURM_LOCALID": "0", "SLURM_PROCID": "0", "SLURM_NODEID": "0"}  # fmt: skip
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    run = Path("logs") / "two_dataset" / "slurm_4242"

    with pytest.raises(SystemExit) as stopped:  # SLURM's warning before the time limit, mid-epoch
        main(["fit", *BASE, stop_at(1, 3, signal.SIGUSR1)])
    assert stopped.value.code == 128 + signal.SIGUSR1
    assert requeues.read_text().split() == ["requeue", "4242"]
    assert [p.name for p in run.glob("hpc_ckpt_*.ckpt")] == ["hpc_ckpt_1.ckpt"]  # in the run directory, not the cwd
    assert not list(Path().glob("*.ckpt"))

    one_epoch = ["--trainer.max_epochs=1", "--test_after_fit=false"]
    other = main(["fit", *BASE, "--method", "fabind", *one_epoch])  # an unrelated run, same job
    assert other.trainer.ckpt_path is None and Path(other.trainer.log_dir) == Path("logs/two_dataset/fabind/slurm_4242")
    monkeypatch.setenv("SLURM_JOB_ID", "4243")  # the same experiment in another job starts fresh
    fresh = main(["fit", *BASE, *one_epoch])
    assert fresh.trainer.ckpt_path is None and Path(fresh.trainer.log_dir) == Path("logs/two_dataset/slurm_4243")
    assert (run / "hpc_ckpt_1.ckpt").is_file()

    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the requeued job: the same command
    with caplog.at_level("INFO", logger="lightning.pytorch"):  # whatever level an earlier test left it at
        requeued = main(["fit", *BASE])
    assert f"Restored all states from the checkpoint at {run / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert Path(requeued.trainer.log_dir) == run
    assert not list(run.glob("hpc_ckpt_*.ckpt"))  # consumed once
    assert_same_run(run, uninterrupted)


def test_nan_stops_the_run_with_exit_3_and_nothing_diverged_is_checkpointed_or_scored(in_tmp, capsys):
    with pytest.raises(SystemExit) as failed:
        main(["fit", *BASE, "--model.optimizer.init_args.lr=1e6"])
    assert failed.value.code == 3
    err = capsys.readouterr().err
    assert (
        "brokenbind: DivergenceError: loss term(s)" in err and "Likely causes: the learning rate (now 1000000.0" in err
    )
    assert not (RUN / "results.csv").exists()
    for path in RUN.glob("checkpoints/*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values()), path


def test_nan_embeddings_at_evaluation_stop_the_run():
    callback, trainer = EmergentBinding(), Mock(current_epoch=4)
    zer = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.0, 1.0]])
    data = {"index": torch.arange(3), "label": torch.zeros(3), "zer": zer}
    with pytest.raises(DivergenceError, match="val embeddings of modality 'zer' on dataset 'evaluation' contain NaN"):
        callback._check_health(trainer, Mock(), "val", "evaluation", data)


def test_collapse_is_logged_and_warned_once_per_modality():
    callback, trainer, module = EmergentBinding(), Mock(current_epoch=30), Mock()
    collapsed = torch.nn.functional.normalize(torch.ones(5, 4) + 1e-3 * torch.randn(5, 4), dim=1)
    data = {"index": torch.arange(5), "label": torch.zeros(5), "zer": collapsed}
    spread = {**data, "zer": torch.eye(5, 4)}
    callback._check_health(trainer, module, "val", "evaluation", data)  # untrained heads start collapsed: no warning
    callback._check_health(trainer, module, "val", "evaluation", spread)
    with pytest.warns(UserWarning) as warned:
        callback._check_health(trainer, module, "val", "evaluation", data)
    name, value = module.log.call_args.args
    assert name == "val/mean_cosine/evaluation/zer" and value > 0.99
    assert [str(w.message) for w in warned] == [
        f"embeddings of modality 'zer' on dataset 'evaluation' are collapsing towards one point at epoch 30: mean "
        f"pairwise cosine {value:.3f} > 0.9, after having been spread out, so retrieval can hardly tell its items "
        "apart. What to check: the learning rate (--model.optimizer.init_args.lr: lower it); with BrokenBind, the MOX "
        "terms, which start after consistency_fraction of the run: the paper's literal recipe (--method "
        "brokenbind_paper: Moore-Penrose pseudo-inverse, summed R_Fro) collapses this way on mfeat, the default "
        "--method brokenbind bounds them (--model.method.init_args.pinv_ridge, fro_reduction, fro_weight, "
        "mox_weight). fit tests the best validation epoch, which may precede the collapse"
    ]
    callback._check_health(trainer, module, "val", "evaluation", data)  # warned once (a second warning would fail)
    callback.on_fit_end(Mock(fast_dev_run=0, log_dir=None), module)  # it did spread once: not "never spread"


@pytest.mark.parametrize("fast_dev_run", [0, 1])
def test_a_modality_that_never_spreads_is_reported_at_the_end_of_fit(fast_dev_run, recwarn):
    """The new user's audio sat at mean cosine 0.999 in every epoch: the alarm above never fired (it was never below
    the threshold). At the end of fit it names the modality; a fast_dev_run (one batch) is not judged."""
    callback, module = EmergentBinding(), Mock()
    collapsed = torch.nn.functional.normalize(torch.ones(5, 4) + 1e-3 * torch.randn(5, 4), dim=1)
    for epoch in range(3):
        data = {"index": torch.arange(5), "label": torch.zeros(5), "sound": collapsed, "photo": torch.eye(5, 4)}
        callback._check_health(Mock(current_epoch=epoch), module, "val", "voice", data)
    callback.on_fit_end(Mock(fast_dev_run=fast_dev_run, log_dir=None), module)
    cosine = ((collapsed.sum(0).pow(2).sum() - 5) / 20).item()
    expected = (
        f"embeddings of modality 'sound' on dataset 'voice' never spread out: their mean pairwise cosine stayed above "
        f"0.9 in every validation epoch of this fit ({cosine:.3f} at epoch 2), so retrieval can hardly tell its items "
        "apart and its mAP is near chance. What to check: that the inputs of 'sound' differ from row to row (its "
        "backbone's features; for audio, silent or cut clips: data.init_args.audio_seconds), its backbone "
        "(model.backbones), a longer run (trainer.max_epochs) or another learning rate (--model.optimizer.init_args.lr)"
    )
    assert [str(w.message) for w in recwarn] == ([] if fast_dev_run else [expected])


def test_metrics_refuse_nan_scores_instead_of_counting_them_as_hits():
    scores = torch.tensor([[float("nan"), 0.5], [0.1, 0.2]])
    relevant = torch.eye(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="scores contain NaN"):
        recall_at_k(scores, relevant, ks=(1,))
    with pytest.raises(ValueError, match="scores contain NaN"):
        retrieval_metrics(torch.full((2, 3), float("nan")), torch.ones(2, 3), torch.arange(2), torch.arange(2))


@pytest.mark.parametrize("scale", [0.0, -1.0, 101.0, 1e9])
def test_out_of_range_logit_scales_are_config_errors(scale):
    with pytest.raises(ConfigError, match=r"logit_scale must lie in \(0, 100\]"):
        LogitScale(scale)


def test_hardware_presets_are_config_layers():
    assert expand_presets(["fit", "--hardware", "ddp_cpu"])[1:] == [
        "--config", str(ROOT / "src" / "brokenbind" / "configs" / "hardware" / "ddp_cpu.yaml")
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="unknown hardware preset 'tpu'"):
        expand_presets(["fit", "--hardware=tpu"])


def test_checkpoint_holds_its_configuration_as_plain_containers(in_tmp):
    main(["fit", *BASE, "--trainer.max_epochs=1", "--method", "fabind", "--test_after_fit=false"])
    checkpoint = torch.load(Path("logs/two_dataset/fabind/version_0/checkpoints/last.ckpt"), weights_only=True)
    config = checkpoint["config"]
    assert config["experiment"] == "two_dataset" and config["method"] == "fabind"
    assert config["model"]["method"]["class_path"] == "brokenbind.methods.FABind"
    assert config["model"]["optimizer"]["init_args"]["lr"] == 0.0005
    assert config["data"]["init_args"]["datasets"]["support"] == {"modalities": ["pix", "zer"]}
    assert not [k for k in checkpoint["state_dict"] if k.startswith("model.backbones.")]  # frozen: rebuilt, not saved


@pytest.mark.parametrize("script", ["single_node.sbatch", "multinode.sbatch"])
def test_sbatch_templates_follow_the_cluster_contract(script):
    text = (ROOT / "scripts" / "slurm" / script).read_text()
    sbatch = dict(
        line.removeprefix("#SBATCH --").partition("=")[::2] for line in text.splitlines() if "#SBATCH" in line
    )
    assert sbatch["signal"] == "SIGUSR1@90" and "requeue" in sbatch  # Lightning checkpoints and requeues in time
    assert sbatch["ntasks-per-node"] == sbatch["gpus-per-node"]  # one task per GPU: each task is one DDP rank
    assert "srun .venv/bin/brokenbind fit" in text and '--trainer.devices="${SLURM_NTASKS_PER_NODE}"' in text
    hardware = text.split("--hardware ")[1].split()[0]
    assert expand_presets(["--hardware", hardware])  # an existing preset


def test_ctrl_c_writes_a_checkpoint_and_exits_130(tmp_path):
    # a subprocess: Lightning ignores SIGINT for the rest of a process after a KeyboardInterrupt
    command = [sys.executable, "-m", "brokenbind.cli", "fit", *BASE, stop_at(0, 3, signal.SIGINT)]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])  # tests.helpers, importable by class path
    # Ctrl-C's default disposition in the child, as in a terminal, whatever launched pytest (a background job ignores
    # SIGINT, and its children inherit that)
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": path},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    assert done.returncode == 128 + signal.SIGINT, done.stderr[-2000:]
    checkpoint = RUN / "checkpoints" / "last.ckpt"
    assert f"brokenbind: stopped by SIGINT at epoch 0, step 4; checkpoint: {checkpoint}" in done.stderr
    assert torch.load(tmp_path / checkpoint, weights_only=True)["global_step"] == 4


def test_the_pinned_lightning_has_the_signal_flag_that_request_stop_sets():
    from lightning.pytorch import Trainer

    from brokenbind.callbacks.faults import request_stop

    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.received_sigterm is False
    request_stop(trainer)
    assert trainer.received_sigterm is True  # the public property Lightning's loops read to raise SIGTERMException


def _file_size_limit(limit: int) -> Callable[[], None]:
    """A child's setup: no file it writes may grow beyond ``limit`` bytes (what a full disk does to a checkpoint being
    written); writing past it fails with EFBIG instead of killing the process (SIGXFSZ ignored)."""

    def setup() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return setup


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_exits_4_and_leaves_no_truncated_file(tmp_path):
    command = [sys.executable, "-m", "brokenbind.cli", "fit", "--config", TWO, "--trainer.limit_train_batches=2",
               "--trainer.enable_progress_bar=false", "--test_after_fit=false"]  # fmt: skip
    first = subprocess.run([*command, "--trainer.max_epochs=1"], cwd=tmp_path, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    checkpoints = tmp_path / RUN / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    assert sorted(before) == ["best-epoch000.ckpt", "last.ckpt"] and len(before["last.ckpt"]) > 1_000_000
    resumed = subprocess.run([*command, "--trainer.max_epochs=2", "--ckpt_path=last"], cwd=tmp_path,
                             capture_output=True, text=True, preexec_fn=_file_size_limit(1_000_000))  # fmt: skip
    assert resumed.returncode == 4, resumed.stderr[-2000:]
    assert "Traceback" not in resumed.stderr
    lines = [line for line in resumed.stderr.splitlines() if line.startswith("brokenbind: ")]
    assert len(lines) == 1
    written = re.fullmatch(
        rf"brokenbind: StorageError: could not write checkpoint {RUN}/checkpoints/(\S+\.ckpt): (.*)", lines[0]
    )
    assert written is not None, lines[0]
    kept = "the earlier last.ckpt is intact" if written[1] == "last.ckpt" else f"no file named {written[1]} was left"
    assert written[2] == (
        "File too large (the disk is full, the file too large for its file system, or the directory not writable); "
        f"{kept}. Free space or make {RUN}/checkpoints writable, then resume with "
        "`brokenbind fit --ckpt_path last` (or run elsewhere: --trainer.logger.init_args.save_dir)"
    )
    after = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    assert after == before  # nothing truncated, nothing half-written under any name, the earlier files intact


def test_a_log_directory_that_cannot_be_written_exits_4_naming_it(in_tmp, capsys):
    if os.access("/sys", os.W_OK) and not Path("/sys/kernel").is_dir():
        pytest.skip("needs Linux sysfs, where no directory can be created, even by root")
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", TWO, "--trainer.fast_dev_run=true", "--trainer.logger.init_args.save_dir=/sys/bb"])
    assert stop.value.code == 4
    assert capsys.readouterr().err.splitlines()[-1] == (
        "brokenbind: StorageError: cannot write the run directory /sys/bb/two_dataset/version_0: Operation not "
        "permitted (/sys/bb); runs are written under trainer.logger.init_args.save_dir: make that directory writable "
        "(permissions, `lsattr` for the immutable attribute, free space) or name another with "
        "--trainer.logger.init_args.save_dir"
    )


SLURM_JOB = {"SLURM_JOB_ID": "123", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_NODELIST": "node1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # fmt: skip


@pytest.mark.parametrize(
    ("slurm", "args", "says"),
    [
        ({"SLURM_NTASKS_PER_NODE": "1"}, ["--hardware", "ddp_cpu"],
         "SLURM runs 1 task(s) per node (SLURM_NTASKS_PER_NODE, from --ntasks-per-node=1), but trainer.devices is 2: "
         "under SLURM each device is one task that SLURM starts. Make them equal: --ntasks-per-node=2 in the job "
         "script (as scripts/slurm/*.sbatch do) or --trainer.devices=1"),
        ({"SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2"}, ["--hardware", "ddp_cpu", "--trainer.devices=1"],
         "SLURM allocated 2 node(s) (SLURM_NNODES, from --nodes=2), but trainer.num_nodes is 1. Make them equal: "
         "--nodes=1 in the job script or --trainer.num_nodes=2"),
    ],
    ids=["tasks_per_node", "nodes"],
)  # fmt: skip
def test_slurm_settings_that_disagree_with_the_trainer_are_one_paragraph_and_leave_nothing(
    slurm, args, says, in_tmp, monkeypatch, capsys
):
    for name, value in {**SLURM_JOB, **slurm}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", os.pathsep.join([str(in_tmp / "bin"), os.environ["PATH"]]))
    fake_slurm_commands(in_tmp / "bin")
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", TWO, "--trainer.fast_dev_run=true", *args])
    assert stop.value.code == 2
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("brokenbind: ")] == [
        f"brokenbind: ConfigError: {says}"
    ]
    assert not (in_tmp / "logs").exists()  # no run directory, no writer.lock


def test_a_full_disk_at_any_write_is_a_storage_error_naming_the_file(in_tmp, monkeypatch, capsys):
    """Beyond checkpoints: results.csv at the end of a fit, where the disk filled up meanwhile."""

    def full_disk(path, rows):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("brokenbind.callbacks.emergent.write_csv", full_disk)
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", TWO, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
              "--trainer.enable_progress_bar=false", "--test_after_fit=false"])  # fmt: skip
    assert stop.value.code == 4
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"brokenbind: StorageError: the file system refused {RUN}/results.csv: No space left on device (a full disk, "
        "a quota, a read-only or unwritable directory); free space or fix the permissions, then resume with "
        "`brokenbind fit --ckpt_path last` if the run has a last.ckpt, or start it again (or run elsewhere: "
        "--trainer.logger.init_args.save_dir)"
    )
    assert (in_tmp / RUN / "checkpoints" / "last.ckpt").is_file()  # what was written stays: the run can resume
