"""Runs from Python: ``fit``, ``validate``, ``test`` and ``predict``, each returning a ``RunResult``, and ``check``.
``run`` takes a subcommand as command-line arguments; the ``brokenbind`` command (``brokenbind.cli``) is a thin layer
over it that turns errors into exit codes.

One run reads top to bottom in ``_run``: parse the settings (``brokenbind.settings``: presets, experiment files,
overrides, checks, the seed) → name and lock the run directory (``brokenbind.rundir.RunDir``, which removes what a
failed start created) → build the model, the data, the evaluator and the trainer → ``trainer.fit`` → ``trainer.test``
of the best checkpoint → the evaluator's result rows. Errors a user can fix raise ``ConfigError`` / ``DataError`` /
``StorageError`` (jsonargparse's parse errors become a ``ConfigError`` in one paragraph); a signal raises ``Stopped``;
a diverged run ``DivergenceError``.
"""

import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from brokenbind.callbacks.emergent import EmergentBinding
from brokenbind.callbacks.faults import FaultTolerance
from brokenbind.checkpoints import AtomicCheckpointIO
from brokenbind.errors import SIGNAL_EXIT, DivergenceError, Stopped
from brokenbind.messages import user_error
from brokenbind.module import BindingModule
from brokenbind.results import ResultRow
from brokenbind.rundir import RunDir, newest_checkpoint
from brokenbind.settings import (
    SUBCOMMANDS,
    Config,
    Overrides,
    Settings,
    check_checkpoint,
    check_cluster,
    config_args,
    override_args,
    parse,
    run_parser,
)
from datamodules.base import PairedDataModule

REPORTED = {"fit": ("val", "test"), "validate": ("val",), "test": ("test",), "predict": ()}  # stages in results.csv


@dataclass(frozen=True)
class RunResult:
    """What one run did: where it wrote, the result rows it scored (as in its ``results.csv``: the validation epoch
    that checkpoint selection picks and the test of the best checkpoint for ``fit``, the split scored for ``validate``
    and ``test``), its resolved configuration, and the objects it ran with (for embeddings or anything else a script
    wants to look at)."""

    run_dir: Path
    best_checkpoint: Path | None  # best validation mAP; None when no checkpoint was saved (fast_dev_run, no epoch)
    last_checkpoint: Path | None
    rows: list[ResultRow]
    config: dict[str, Any]
    trainer: Trainer
    model: BindingModule
    datamodule: PairedDataModule

    def stage(self, stage: str) -> list[ResultRow]:
        """The rows of ``val`` or ``test``."""
        return [row for row in self.rows if row.stage == stage]


def fit(config: Config | Sequence[Config], overrides: Overrides = (), callbacks: Sequence[Callback] = ()) -> RunResult:
    """Train an experiment, as ``brokenbind fit --config CONFIG [OVERRIDES]``: ``config`` is an experiment file, a dict
    of the same content, or a list of them (later ones override earlier ones); ``overrides`` are the command line's
    ``--key=value`` arguments (``["--method=fabind", "--trainer.max_epochs=5"]``) or a mapping of the same dotted keys
    (``{"method": "fabind", "trainer.max_epochs": 5}``); ``callbacks`` are callback objects added to the run's: a
    script's own observers (``brokenbind tune``'s pruning), outside the stored configuration and in this process only
    (DDP's other ranks start from the command line)."""
    return _run("fit", [*config_args(config), *override_args(overrides)], callbacks)


def check(config: Config | Sequence[Config], overrides: Overrides = ()) -> dict[str, Any]:
    """The resolved configuration ``fit(config, overrides)`` would run with, parsed and checked as ``fit`` does before
    it builds anything: a configuration error raises as there, and nothing is built, written or trained (for scripts
    that start many runs, such as ``brokenbind tune``, to stop before the first)."""
    fresh_process_state()
    with user_errors():
        settings = parse("fit", [*config_args(config), *override_args(overrides)])
        run_dir = RunDir.resolve(settings, claim=False)
        if run_dir.checkpoint is not None:
            check_checkpoint(settings, run_dir.checkpoint)
        return settings.plain()


def validate(ckpt_path: str | Path, overrides: Overrides = ()) -> RunResult:
    """Score a checkpoint on the validation split with the configuration it stores."""
    return _run("validate", [f"--ckpt_path={ckpt_path}", *override_args(overrides)])


def test(ckpt_path: str | Path, overrides: Overrides = ()) -> RunResult:
    """Score a checkpoint on the test split with the configuration it stores."""
    return _run("test", [f"--ckpt_path={ckpt_path}", *override_args(overrides)])


test.__test__ = False  # not a pytest test when a test module imports it


def predict(ckpt_path: str | Path, overrides: Overrides = ()) -> RunResult:
    """Write a checkpoint's embeddings of every split into ``<run>/embeddings`` (rows: none)."""
    return _run("predict", [f"--ckpt_path={ckpt_path}", *override_args(overrides)])


def run(args: Sequence[str], callbacks: Sequence[Callback] = ()) -> RunResult:
    """``brokenbind SUBCOMMAND [arguments]`` in this process (``args`` as on the command line, subcommand first);
    ``--help``, or no subcommand, is jsonargparse's."""
    if not args or args[0] not in SUBCOMMANDS:
        with user_errors():
            run_parser()[0].parse_args(list(args))  # prints the help and exits, or raises its error
    return _run(args[0], list(args[1:]), callbacks)


# -- one run -----------------------------------------------------------------------------------------------------------
def _run(subcommand: str, args: list[str], callbacks: Sequence[Callback] = ()) -> RunResult:
    fresh_process_state()
    with user_errors():
        settings = parse(subcommand, args)
        with RunDir.resolve(settings) as run_dir:
            if run_dir.checkpoint is not None:
                check_checkpoint(settings, run_dir.checkpoint)
            settings.config.ckpt_path = str(run_dir.checkpoint) if run_dir.checkpoint else None
            model, data, evaluator, trainer = build(settings, run_dir.path, callbacks)
            check_cluster(trainer)
            run_dir.lock(trainer, subcommand)
            with signals_as_stops(trainer, run_dir.path):
                method = {name: settings.config[name] for name in settings.method_arguments}
                getattr(trainer, subcommand)(model, datamodule=data, **method)
                if subcommand == "fit" and not trainer.interrupted:
                    after_fit(trainer, model, data, settings.config.test_after_fit)
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            last = run_dir.path / "checkpoints" / "last.ckpt"
            return RunResult(
                run_dir=run_dir.path,
                best_checkpoint=Path(best) if best else None,
                last_checkpoint=last if last.is_file() else None,
                # what this subcommand reported (a checkpoint's restored best validation epoch is not a test's result)
                rows=[row for stage in REPORTED[subcommand] for row in evaluator.rows.get(stage, [])],
                config=model.run_config,
                trainer=trainer,
                model=model,
                datamodule=data,
            )


def build(
    settings: Settings, run_dir: Path, callbacks: Sequence[Callback]
) -> tuple[BindingModule, PairedDataModule, EmergentBinding, Trainer]:
    """The model, the data, the evaluator (it scores every flow and returns the result rows) and the trainer, which
    logs into ``run_dir``. The stored configuration (``config.yaml``, checkpoints) keeps the user's paths, so that a
    run started again from it is placed as this one was."""
    config, placed = settings.config, settings.config.clone()
    placed.trainer.default_root_dir = str(run_dir)  # where Lightning puts its SLURM preemption checkpoint
    logger = placed.trainer.logger
    if logger and getattr(logger, "init_args", None) is not None:
        # version_N as the number N: the same directory, and the progress bar's v_num shows N (of a string version it
        # shows the last four characters, "on_0")
        number = re.fullmatch(r"version_(\d+)", run_dir.name)
        logger.init_args.save_dir, logger.init_args.name = str(run_dir.parent), ""
        logger.init_args.version = int(number[1]) if number else run_dir.name
    built = settings.parser.instantiate_classes(placed)
    evaluator = EmergentBinding(**config.evaluation.as_dict(), experiment=config.experiment, method=config.method)
    trainer_args = {**built.trainer}
    configured = trainer_args.get("callbacks") or []
    trainer_args["callbacks"] = [evaluator, *(configured if isinstance(configured, list) else [configured]), *callbacks]
    if not trainer_args.get("fast_dev_run"):
        trainer_args["callbacks"].append(SaveConfigCallback(settings.parser, config, overwrite=True))
    trainer = Trainer(**trainer_args)
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's own: a user's IO stays
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    built.model.run_config = settings.plain()
    return built.model, built.data, evaluator, trainer


def after_fit(trainer: Trainer, model: BindingModule, data: PairedDataModule, test_after_fit: bool) -> None:
    """Score what the fit left: an untrained model on validation too (fit ran no validation epoch), then the best
    checkpoint on test."""
    if trainer.max_epochs == 0:
        trainer.validate(model, datamodule=data, verbose=False)
    if not test_after_fit:
        return
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    rank_zero_info(f"testing {'checkpoint ' + best if best else 'the final weights (no checkpoint was saved)'}")
    trainer.test(model, datamodule=data, ckpt_path=best or None)


@contextmanager
def signals_as_stops(trainer: Trainer, run_dir: Path) -> Iterator[None]:
    """Lightning ends a run stopped by SIGTERM with ``SIGTERMException`` and one stopped by Ctrl-C with
    ``sys.exit(1)``; both become ``Stopped`` with 128 + the signal's number and the checkpoint to resume from."""
    try:
        yield
    except SystemExit as stop:
        faults = next((c for c in trainer.callbacks if isinstance(c, FaultTolerance)), None)
        if not isinstance(stop, SIGTERMException) and not (faults and faults.stopped_by):
            raise
        reason = faults.stopped_by if faults and faults.stopped_by else "SIGTERM"
        saved = faults.saved if faults and faults.saved else newest_checkpoint(run_dir)
        where = f"checkpoint: {saved}; resume with `brokenbind fit --ckpt_path {saved}`" if saved else "no checkpoint"
        at = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        raise Stopped(f"stopped by {reason} at {at}; {where}", SIGNAL_EXIT.get(reason, 1)) from stop


@contextmanager
def user_errors() -> Iterator[None]:
    """An error a user can fix, found behind what raised it (``messages.user_error``), is what raises."""
    try:
        yield
    except (Stopped, DivergenceError):
        raise
    except Exception as error:
        cause = user_error(error)
        if cause is None or cause is error:
            raise
        raise cause from error


def fresh_process_state() -> None:
    """What an earlier run in this process left, and notices that say nothing about a run."""
    os.environ.pop("PL_GLOBAL_SEED", None)  # an earlier run in this process set it; this run seeds itself
    # a resumed run writes into its own checkpoints/ on purpose; a new run always gets a new directory
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # a checkpoint scored (or continued by a new run) outside the directory it was written in: its best-k bookkeeping
    # belongs to its own run, and this run keeps its own
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from .* won't be reloaded")
    # Lightning 2.6's argument parser calls jsonargparse APIs deprecated in 4.49 (its own switch); nothing a user can
    # change
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")


def quiet_lightning() -> None:
    """Lightning's information lines (devices, seeds, restored states) off: for scripts that run many fits in one
    process (the suite, ``brokenbind tune``). Importing Lightning sets these levels, so call it after."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
