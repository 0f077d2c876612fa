"""The library: ``fit``, ``validate``, ``test`` and ``predict`` from Python, each returning a ``RunResult``; ``run``
runs a subcommand given as command-line arguments (the ``brokenbind`` command, ``brokenbind.cli``, is a thin layer over
it that turns errors into exit codes). A Lightning CLI (jsonargparse) over BindingModule and any PairedDataModule.

Shared defaults come from ``brokenbind/configs/defaults.yaml``; an experiment YAML holds only what differs. Unknown
keys are errors (jsonargparse). ``--method NAME`` and ``--hardware NAME`` are config layers from ``configs/methods``
and ``configs/hardware``.

Run directories: ``logs/<experiment>[/<method>]/version_N`` (under SLURM ``.../slurm_<job id>``, so that a requeued
job finds its own directory and nothing else). It holds TensorBoard logs, ``config.yaml``, ``results.csv`` and
``checkpoints/``: ``best-epochNNN.ckpt`` (best validation mAP) and ``last.ckpt`` (the true last state: every epoch
and whenever a signal stops the run). A run started with ``--ckpt_path`` continues the checkpoint's run directory;
``--ckpt_path last`` picks the newest run of the experiment. A checkpoint carries its resolved configuration, so
``brokenbind test --ckpt_path X`` needs nothing else, and a checkpoint of another configuration is refused. A run
directory has one writer at a time: the process that writes locks it (``brokenbind.runlock``).
"""

import errno
import logging
import os
import re
import shutil
import signal
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import yaml
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from brokenbind.callbacks.emergent import EmergentBinding
from brokenbind.callbacks.faults import FaultTolerance
from brokenbind.checkpoints import AtomicCheckpointIO, checkpoint_digest, load_checkpoint, stored_config
from brokenbind.errors import ConfigError, DivergenceError, StorageError, UserError
from brokenbind.messages import check_yaml_files, parse_error_message
from brokenbind.module import BindingModule
from brokenbind.results import ResultRow
from brokenbind.runlock import RunLock
from datamodules.base import PairedDataModule

CONFIGS = Path(__file__).parent / "configs"
DEFAULTS = CONFIGS / "defaults.yaml"
PRESETS = {"method": CONFIGS / "methods", "hardware": CONFIGS / "hardware"}
SUBCOMMANDS = ("fit", "validate", "test", "predict")
SIGNAL_EXIT = {"SIGTERM": 128 + signal.SIGTERM, "SIGUSR1": 128 + signal.SIGUSR1, "SIGINT": 128 + signal.SIGINT}
# Sections that must match between a checkpoint's run and the run that loads it (the trainer and seed may differ).
CONFIG_KEYS_COMPARED = ("model", "data")
# Mappings whose order is part of the configuration: the datasets' order divides the instances among them (mfeat's
# class-shift blocks, datamodules.mfeat.assign_instances) and orders the training loaders; elsewhere only keys and
# values count.
ORDERED_MAPPINGS = ("data.init_args.datasets",)


class Stopped(Exception):
    """A signal stopped the run; ``code`` is the exit code and the message says where its checkpoint is."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def presets(kind: str) -> list[str]:
    return sorted(p.stem for p in PRESETS[kind].glob("*.yaml"))


def method_presets() -> list[str]:
    return presets("method")


def expand_presets(args: list[str]) -> list[str]:
    """``--method NAME`` stands for ``--config configs/methods/NAME.yaml`` (and ``--hardware NAME`` likewise): a preset
    is a config layer (it may set the model, the data or the trainer), applied where it appears, so put it after the
    experiment."""
    out, rest = [], list(args)
    while rest:
        arg = rest.pop(0)
        kind = next((k for k in PRESETS if arg == f"--{k}" or arg.startswith(f"--{k}=")), None)
        if kind is None:
            out.append(arg)
            continue
        name = arg.partition("=")[2] if "=" in arg else (rest.pop(0) if rest else "")
        if name not in presets(kind):
            raise ConfigError(f"unknown {kind} preset {name!r}; available: {presets(kind)}")
        out += ["--config", str(PRESETS[kind] / f"{name}.yaml")]
        if kind == "method":
            out.append(f"--method={name}")
    return out


def _option(args: list[str], name: str) -> str | None:
    """The value of ``--name X`` / ``--name=X`` (the last one given), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.partition("=")[2]
    return value


def with_checkpoint_config(args: list[str]) -> list[str]:
    """Without ``--config``, a run given ``--ckpt_path`` takes the configuration stored in the checkpoint."""
    ckpt = _option(args, "--ckpt_path")
    if not args or args[0] not in SUBCOMMANDS or "--config" in args or "-c" in args or ckpt in (None, "last"):
        if args and args[0] == "predict" and ckpt is None:
            raise ConfigError("predict needs --ckpt_path: without trained weights it would write untrained embeddings")
        return args
    return [args[0], f"--config={yaml.safe_dump(stored_config(ckpt), sort_keys=False)}", *args[1:]]


def slurm_version() -> str | None:
    """``slurm_<job id>`` for a batch job on SLURM (a requeued job keeps its id), None elsewhere."""
    if not SLURMEnvironment.detect() or SLURMEnvironment.job_name() in ("bash", "interactive"):
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"slurm_{array}_{task}" if array and task else f"slurm_{os.environ['SLURM_JOB_ID']}"


def next_version(root: Path) -> str:
    numbers = [int(m.group(1)) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return f"version_{max(numbers, default=-1) + 1}"


def claim_new_run(root: Path) -> tuple[Path, Path | None]:
    """A new run directory ``root/version_N`` and the topmost directory this call created. The directory is created
    exclusively: of two runs started together, one gets N and the other, finding it taken, the next number. Only the
    process that will write (global rank 0: DDP's other ranks start from the same command line later) creates it."""
    if rank_zero_only.rank != 0 or int(os.environ.get("NODE_RANK", 0)) != 0:
        return root / next_version(root), None
    created = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)
    while True:
        run_dir = root / next_version(root)
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:
            continue  # another run took this number between the listing and the mkdir
        except OSError as error:
            raise unwritable(run_dir, error) from error
        return run_dir, created or run_dir


def unwritable(path: Path, error: OSError) -> StorageError:
    """The error of a run directory that cannot be created or written into."""
    where = f" ({error.filename})" if error.filename else ""
    return StorageError(
        f"cannot write the run directory {path}: {error.strerror or error}{where}; runs are written under "
        "trainer.logger.init_args.save_dir: make that directory writable (permissions, "
        "`lsattr` for the immutable attribute, free space) or name another with --trainer.logger.init_args.save_dir"
    )


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest of ``last.ckpt`` and Lightning's preemption checkpoints ``hpc_ckpt_N.ckpt`` in a run directory."""
    candidates = [*run_dir.glob("hpc_ckpt_*.ckpt"), run_dir / "checkpoints" / "last.ckpt"]
    existing = [p for p in candidates if p.is_file()]
    return max(existing, key=lambda p: p.stat().st_mtime_ns) if existing else None


def config_differences(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configurations; a mapping of ``ORDERED_MAPPINGS`` whose keys
    come in another order differs too."""
    key = prefix.rstrip(".")
    if isinstance(stored, dict) and isinstance(current, dict):
        keys = sorted(set(stored) | set(current), key=str)
        differences = [d for k in keys for d in config_differences(stored.get(k), current.get(k), f"{prefix}{k}.")]
        if key in ORDERED_MAPPINGS and set(stored) == set(current) and list(stored) != list(current):
            differences.append(f"{key} (the order: {', '.join(map(str, stored))} in the checkpoint)")
        return differences
    return [] if stored == current else [key]


def check_accelerator(accelerator: Any) -> None:
    """An accelerator this machine lacks (a GPU on a laptop) or an unknown name stops here, in one paragraph, rather
    than in Lightning's traceback."""
    if not isinstance(accelerator, str) or accelerator == "auto":
        return
    names = sorted(AcceleratorRegistry.available_accelerators())
    if accelerator not in (*names, "gpu"):
        raise ConfigError(f"trainer.accelerator {accelerator!r} is unknown; use one of {['auto', 'gpu', *names]}")

    def available(name: str) -> bool:  # a class method: instantiating some (XLA) fails where they are unavailable
        return AcceleratorRegistry[name]["accelerator"].is_available()

    if any(available(name) for name in (("cuda", "mps") if accelerator == "gpu" else (accelerator,))):
        return
    device = {"gpu": "GPU", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)", "tpu": "TPU"}.get(accelerator, accelerator)
    presets = " (--hardware gpu, ddp and multinode set it)" if accelerator == "gpu" else ""
    here = [name for name in names if available(name)]
    raise ConfigError(
        f"trainer.accelerator is {accelerator!r}{presets}, but torch finds no {device} on this machine; accelerators "
        f"available here: {here}. Run on the CPU with --hardware cpu (or --trainer.accelerator=cpu), or on a machine "
        "that has one"
    )


def check_cluster(trainer: Trainer) -> None:
    """The cluster's launcher and the trainer must agree on processes per node and nodes; Lightning checks this only
    when it starts the processes, with a traceback. Here it is one paragraph before anything is written."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is None:
        return
    try:
        environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
    except ValueError as error:
        tasks, nodes = os.environ.get("SLURM_NTASKS_PER_NODE"), os.environ.get("SLURM_NNODES")
        if tasks is not None and int(tasks) != trainer.num_devices:
            problem = (
                f"SLURM runs {tasks} task(s) per node (SLURM_NTASKS_PER_NODE, from --ntasks-per-node={tasks}), but "
                f"trainer.devices is {trainer.num_devices}: under SLURM each device is one task that SLURM starts. "
                f"Make them equal: --ntasks-per-node={trainer.num_devices} in the job script (as "
                f"scripts/slurm/*.sbatch do) or --trainer.devices={tasks}"
            )
        elif nodes is not None and int(nodes) != trainer.num_nodes:
            problem = (
                f"SLURM allocated {nodes} node(s) (SLURM_NNODES, from --nodes={nodes}), but trainer.num_nodes is "
                f"{trainer.num_nodes}. Make them equal: --nodes={trainer.num_nodes} in the job script or "
                f"--trainer.num_nodes={nodes}"
            )
        else:
            problem = f"the cluster environment {type(environment).__name__} and the trainer disagree: {error}"
        raise ConfigError(problem) from error


def check_save_dir(save_dir: Path) -> None:
    """Runs go under ``save_dir``: it, or the nearest of its parents that exists, must be a directory."""
    existing = next(p for p in (save_dir, *save_dir.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(
            f"trainer.logger.init_args.save_dir is {str(save_dir)!r}, but {existing} is a file, not a directory; "
            "name a directory for the runs (it is created if missing), e.g. logs"
        )


def parser_kwargs() -> dict[str, Any]:
    """How every command parses an experiment: our defaults first, OmegaConf interpolation, errors raised (not exit).
    A new dict each time: LightningCLI writes into the one it is given."""
    return {"default_config_files": [str(DEFAULTS)], "parser_mode": "omegaconf", "exit_on_error": False}


def experiment_files(config: Namespace) -> list[Path]:
    """The experiment files of a parsed command, in order (``--config`` files that are not presets)."""
    files = [Path(str(c)) for c in config.get("config") or [] if c is not None]  # None: an inline configuration
    return [p for p in files if p.parent not in PRESETS.values()]


def experiment_name(config: Namespace) -> str:
    """The run's name: ``--experiment``, else the last experiment file's stem ("default" when there is none)."""
    files = experiment_files(config)
    return config.experiment or (files[-1].stem if files else "default")


class BrokenBindCLI(LightningCLI):
    # (run directory, the topmost directory this start created): read by ``run`` to remove what a failed start left
    last_start: tuple[Path | None, Path | None] = (None, None)
    run_lock: RunLock | None = None  # held by the process that writes into the run directory (global rank 0)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", type=str | None, default=None, help="run name (default: config file stem)")
        parser.add_argument("--method", type=str | None, default=None, help=f"method preset, one of {method_presets()}")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="fit only: test the best checkpoint when training ends"
        )

    # -- configuration, run directory, checkpoint ------------------------------------------------------------------
    def _parse_ckpt_path(self) -> None:
        """Lightning reads ``--ckpt_path`` first (for hyperparameters); a file it cannot read is named here, in one
        paragraph, by ``load_checkpoint`` (which says whether it is no checkpoint, or a truncated one)."""
        try:
            super()._parse_ckpt_path()
        except Exception:
            load_checkpoint(self.config[self.config.subcommand].ckpt_path)
            raise  # the file reads: the problem is elsewhere

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        name = config.experiment = experiment_name(config)
        run_name = name if config.method is None else f"{name}/{config.method}"
        for callback in config.trainer.callbacks or []:
            if callback.class_path.endswith("EmergentBinding"):  # results rows name the experiment and the preset
                callback.init_args.experiment, callback.init_args.method = name, config.method
        self.check_settings(config)
        logger = config.trainer.logger
        self.user_paths = self.run_paths(config)
        save_dir = Path(logger.init_args.save_dir if logger and "save_dir" in (logger.init_args or {}) else "logs")
        check_save_dir(save_dir)
        self.run_dir, ckpt = self.resolve_run(config, save_dir / run_name)
        config.ckpt_path = str(ckpt) if ckpt else None
        if ckpt is not None:
            self.check_checkpoint(ckpt, config.trainer.max_epochs)
        config.trainer.default_root_dir = str(self.run_dir)  # where Lightning puts its SLURM preemption checkpoint
        if logger and getattr(logger, "init_args", None) is not None:
            logger.init_args.save_dir, logger.init_args.name = str(self.run_dir.parent), ""
            # version_N as the number N: the same directory, and the progress bar's v_num shows N (of a string
            # version it shows the last four characters, "on_0")
            number = re.fullmatch(r"version_(\d+)", self.run_dir.name)
            logger.init_args.version = int(number[1]) if number else self.run_dir.name

    @staticmethod
    def run_paths(config: Any) -> dict[str, Any]:
        """The settings ``before_instantiate_classes`` points at the run directory: the logger's ``save_dir``,
        ``name`` and ``version`` and the trainer's ``default_root_dir``."""
        logger = config.trainer.logger
        init_args = getattr(logger, "init_args", None) if logger else None
        paths = {"default_root_dir": config.trainer.default_root_dir}
        if init_args is not None:
            paths |= {key: init_args.get(key) for key in ("save_dir", "name", "version")}
        return paths

    def restore_run_paths(self) -> None:
        """Put the user's settings back once the logger and trainer are built: ``config.yaml`` and the checkpoints'
        stored configuration hold what the user gave, so that a run started again from them (``brokenbind test
        --ckpt_path`` of a copied checkpoint, ``--config config.yaml``) is placed as the original was, not one level
        deeper (``logs/<experiment>/<experiment>``)."""
        config = self.config[self.subcommand]
        for key, value in self.user_paths.items():
            if key == "default_root_dir":
                config.trainer.default_root_dir = value
            else:
                config.trainer.logger.init_args[key] = value

    def check_settings(self, config: Any) -> None:
        """Settings that parse but cannot give an honest run."""
        if self.subcommand == "fit" and config.trainer.max_epochs == 0 and config.method != "frozen":
            raise ConfigError(
                "trainer.max_epochs=0 trains nothing, and the results would be an untrained model labelled "
                f"{config.method or 'brokenbind'!r}; for the untrained reference use --method frozen"
            )
        optimizer = config.model.optimizer
        init_args = (getattr(optimizer, "init_args", None) or {}) if not callable(optimizer) else {}
        lr, weight_decay = init_args.get("lr"), init_args.get("weight_decay")
        if lr is not None and not lr > 0:
            raise ConfigError(f"model.optimizer.init_args.lr must be positive, got {lr}")
        if weight_decay is not None and not weight_decay >= 0:
            raise ConfigError(f"model.optimizer.init_args.weight_decay must be 0 or positive, got {weight_decay}")
        check_accelerator(config.trainer.accelerator)
        if config.seed_everything is False:
            raise ConfigError(
                "seed_everything: false leaves the run unseeded, but the training order is a function of the run's "
                "seed (a resume replays it mid-epoch): set an integer, or true for a random seed that config.yaml "
                "records"
            )

    def resolve_run(self, config: Any, root: Path) -> tuple[Path, Path | None]:
        """(run directory, checkpoint to start from). A checkpoint inside a run directory continues that directory;
        ``last`` is the newest run of this experiment that has one; a requeued SLURM job resumes its own directory."""
        ckpt = config.ckpt_path
        if ckpt == "last":
            runs = [p for p in root.glob("*") if (p / "checkpoints" / "last.ckpt").is_file()]
            if not runs:
                raise ConfigError(f"--ckpt_path last: no run under {root} has checkpoints/last.ckpt")
            ckpt = max(runs, key=lambda p: (p / "checkpoints" / "last.ckpt").stat().st_mtime_ns) / "checkpoints"
            ckpt = ckpt / "last.ckpt"
        if ckpt is not None:
            ckpt = Path(ckpt)
            if not ckpt.is_file():
                raise ConfigError(f"checkpoint not found: {ckpt}; pass the path of a .ckpt file or 'last'")
            parent = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
            if (parent / "config.yaml").is_file():  # a run directory: continue it, named as when it was written
                callbacks = load_checkpoint(ckpt).get("callbacks", {})
                dirs = [v.get("dirpath") for k, v in callbacks.items() if k.startswith("ModelCheckpoint")]
                written = dirs[0] if dirs else None
                if written and Path(written).resolve() == (parent / "checkpoints").resolve():
                    return Path(written).parent, ckpt  # Lightning warns when a checkpoint's directory is renamed
                relative = Path(os.path.relpath(parent.resolve()))
                return (parent if relative.parts[:1] == ("..",) else relative), ckpt
            if self.subcommand == "fit":  # a new run that starts from the weights of a copied checkpoint
                return self.claim(root), ckpt
            # scoring a checkpoint kept outside its run: one directory per checkpoint content, so scoring it again
            # replaces its rows there rather than adding a run
            return root / f"checkpoint_{checkpoint_digest(ckpt)}", ckpt
        version = slurm_version()
        if version is not None and self.subcommand == "fit":
            run_dir = root / version
            return run_dir, newest_checkpoint(run_dir)  # a requeued job resumes; a new job starts fresh
        return self.claim(root), None

    def claim(self, root: Path) -> Path:
        """A new run directory (``claim_new_run``), removed again if this start fails."""
        run_dir, created = claim_new_run(root)
        BrokenBindCLI.last_start = (run_dir, created)
        return run_dir

    def check_checkpoint(self, ckpt: Path, max_epochs: int | None) -> None:
        """Refuse a checkpoint written under another model or data configuration, and a fit from it that would end
        before the epoch the checkpoint was saved in."""
        state = load_checkpoint(ckpt)
        epoch = state.get("epoch")  # Lightning's current_epoch at saving; Lightning refuses a checkpoint without it
        if self.subcommand == "fit" and epoch is not None and max_epochs is not None and 0 <= max_epochs <= epoch:
            raise ConfigError(
                f"trainer.max_epochs is {max_epochs}, but checkpoint {ckpt} was saved in epoch {epoch + 1} of its run: "
                "a fit from it continues from there, so it would train nothing and leave a run longer than its "
                f"configuration says. Resume with --trainer.max_epochs={epoch + 1} or more, or start a new run "
                "without --ckpt_path"
            )
        stored = state.get("config")
        if stored is None:
            return  # written without a stored configuration: nothing to compare
        current = self.plain_config()
        differences = [
            d for key in CONFIG_KEYS_COMPARED for d in config_differences(stored.get(key), current.get(key), f"{key}.")
        ]
        if differences:
            run = "experiment {!r} (method {!r})"
            raise ConfigError(
                f"checkpoint {ckpt} was written by {run.format(stored.get('experiment'), stored.get('method'))} with "
                f"other settings than this run, {run.format(current.get('experiment'), current.get('method'))}: "
                f"{', '.join(differences[:5])}{' ...' if len(differences) > 5 else ''} differ. Load it with its own "
                f"configuration: `brokenbind {self.subcommand} --ckpt_path {ckpt}` (no --config)"
            )

    def plain_config(self) -> dict[str, Any]:
        """The resolved configuration of this subcommand as plain containers (for checkpoints and comparison)."""
        parser = self._parser(self.subcommand)
        config = yaml.safe_load(parser.dump(self.config[self.subcommand], skip_check=True))
        for key in ("config", "ckpt_path"):
            config.pop(key, None)
        return config

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's own: a user's IO stays
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        self.restore_run_paths()
        self.model.run_config = self.plain_config()
        self.faults = next((c for c in self.trainer.callbacks if isinstance(c, FaultTolerance)), None)
        check_cluster(self.trainer)
        if self.trainer.is_global_zero:  # one writer per run directory (brokenbind.runlock), before anything is written
            BrokenBindCLI.run_lock = RunLock(self.run_dir)
            try:
                created = BrokenBindCLI.run_lock.acquire(self.subcommand)
            except OSError as error:
                raise unwritable(self.run_dir, error) from error
            if BrokenBindCLI.last_start[0] != self.run_dir:  # else ``claim`` created it and said so
                BrokenBindCLI.last_start = (self.run_dir, created)

    # -- running ---------------------------------------------------------------------------------------------------
    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except SystemExit as stop:  # Lightning's SIGTERMException, or its sys.exit(1) after Ctrl-C
            faults = self.faults
            if not isinstance(stop, SIGTERMException) and not (faults and faults.stopped_by):
                raise
            reason = faults.stopped_by if faults and faults.stopped_by else "SIGTERM"
            saved = faults.saved if faults and faults.saved else newest_checkpoint(self.run_dir)
            where = (
                f"checkpoint: {saved}; resume with `brokenbind fit --ckpt_path {saved}`" if saved else "no checkpoint"
            )
            at = f"epoch {self.trainer.current_epoch}, step {self.trainer.global_step}"
            raise Stopped(f"stopped by {reason} at {at}; {where}", SIGNAL_EXIT.get(reason, 1)) from stop

    def after_fit(self) -> None:
        if self.trainer.interrupted:
            return
        if self.trainer.max_epochs == 0:  # fit ran no validation epoch: score the untrained model on validation too
            self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        if not self.config.fit.test_after_fit:
            return
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        rank_zero_info(f"testing {'checkpoint ' + best if best else 'the final weights (no checkpoint was saved)'}")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


class CheckedCLI(BrokenBindCLI):
    """Parses and checks a run's configuration (``before_instantiate_classes``), then stops: builds, writes and trains
    nothing."""

    def claim(self, root: Path) -> Path:
        return root / next_version(root)  # the name a run would take; a check creates nothing

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def run(args: Sequence[str], callbacks: Sequence[Callback] = ()) -> BrokenBindCLI:
    """Run ``brokenbind SUBCOMMAND [arguments]`` in this process (``args`` as on the command line, subcommand first).
    ``callbacks`` are callback objects added to the configured ones: a script's own observers, such as ``brokenbind
    tune``'s pruning, outside the stored configuration and in this process only (DDP's other ranks start from the
    command line). A configuration or data error raises ``ConfigError`` / ``DataError`` after removing what the
    failed start created (jsonargparse's parse errors become a ``ConfigError`` in one paragraph); a signal raises
    ``Stopped``; a diverged run ``DivergenceError``."""
    return _start(BrokenBindCLI, args, callbacks)


def _start(cli_class: type[BrokenBindCLI], args: Sequence[str], callbacks: Sequence[Callback] = ()) -> BrokenBindCLI:
    BrokenBindCLI.last_start, BrokenBindCLI.run_lock = (None, None), None
    os.environ.pop("PL_GLOBAL_SEED", None)  # an earlier run in this process set it; this run seeds itself
    # a resumed run writes into its own checkpoints/ on purpose; a new run always gets a new directory
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # a checkpoint scored (or continued by a new run) outside the directory it was written in: its best-k bookkeeping
    # belongs to its own run, and this run keeps its own
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from .* won't be reloaded")
    # Lightning 2.6's CLI calls jsonargparse APIs deprecated in 4.49 (its own switch); nothing a user can change
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    try:
        args = with_checkpoint_config(expand_presets(list(args)))
        check_yaml_files(args)
        # LightningCLI reads the command line (and the DDP launcher re-runs it): give it the expanded arguments there
        with patch.object(sys, "argv", [sys.argv[0], *args]):
            return cli_class(
                BindingModule,
                PairedDataModule,
                subclass_mode_data=True,
                parser_kwargs={"exit_on_error": False, **{command: parser_kwargs() for command in SUBCOMMANDS}},
                save_config_kwargs={"overwrite": True},
                auto_configure_optimizers=False,  # the model takes its optimizer; one way to configure it
                trainer_defaults={"callbacks": list(callbacks)},  # appended to the configured callbacks
            )
    except (Stopped, DivergenceError):
        raise
    except Exception as error:
        cause = _user_error(error)
        if cause is None:
            raise
        _remove_failed_start()
        if cause is error:
            raise
        raise cause from error
    finally:
        _release_run_lock()


def _remove_failed_start() -> None:
    """A run directory that a failed start created holds no result: remove it, and the directories above it that
    this start created (``logs/<experiment>``) when nothing else is in them."""
    _release_run_lock()
    run_dir, created = BrokenBindCLI.last_start
    if run_dir is None or created is None or not run_dir.is_dir() or any(run_dir.glob("checkpoints/*.ckpt")):
        return
    shutil.rmtree(run_dir)
    for parent in run_dir.parents:
        if parent == created.parent or any(parent.iterdir()):
            break
        parent.rmdir()


def _release_run_lock() -> None:
    if BrokenBindCLI.run_lock is not None:
        BrokenBindCLI.run_lock.release()
        BrokenBindCLI.run_lock = None


def quiet_lightning() -> None:
    """Lightning's information lines (devices, seeds, restored states) off: for scripts that run many fits in one
    process (the suite, ``brokenbind tune``). Importing Lightning sets these levels, so call it after."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


# What a file system answers when it does not take a write: full, over quota, read-only, too large, not permitted.
REFUSED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


def _user_error(error: BaseException | None) -> Exception | None:
    """The configuration, data or storage error behind ``error``; jsonargparse wraps errors raised while
    instantiating. A file system's refusal anywhere in a run (results.csv, TensorBoard events, config.yaml) is a
    ``StorageError`` naming the file, as a checkpoint's is (``checkpoints.AtomicCheckpointIO``)."""
    while error is not None and not isinstance(error, UserError | ArgumentError):
        if isinstance(error, OSError) and error.errno in REFUSED_WRITES:
            return StorageError(
                f"the file system refused {error.filename or 'a file of the run'}: {error.strerror} (a full disk, a "
                "quota, a read-only or unwritable directory); free space or fix the permissions, then resume with "
                "`brokenbind fit --ckpt_path last` if the run has a last.ckpt, or start it again (or run elsewhere: "
                "--trainer.logger.init_args.save_dir)"
            )
        error = error.__cause__ or error.__context__
    if isinstance(error, ArgumentError):
        return ConfigError(parse_error_message(str(error)))
    return error


# -- the library entry points ----------------------------------------------------------------------------------------
Config = str | Path | dict[str, Any]
REPORTED = {"fit": ("val", "test"), "validate": ("val",), "test": ("test",), "predict": ()}  # stages in results.csv


@dataclass(frozen=True)
class RunResult:
    """What one run did: where it wrote, the result rows it scored (as in its ``results.csv``: the validation epoch
    that checkpoint selection picks and the test of the best checkpoint for ``fit``, the split scored for ``validate``
    and ``test``), its resolved
    configuration, and the objects it ran with (for embeddings or anything else a script wants to look at)."""

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


def config_args(config: Config | Sequence[Config]) -> list[str]:
    """``--config`` arguments for experiment files and inline configurations (dicts), applied in order."""
    configs = [config] if isinstance(config, str | Path | dict) else list(config)
    return [
        f"--config={yaml.safe_dump(c, sort_keys=False)}" if isinstance(c, dict) else f"--config={c}" for c in configs
    ]


def fit(
    config: Config | Sequence[Config], overrides: Sequence[str] = (), callbacks: Sequence[Callback] = ()
) -> RunResult:
    """Train an experiment, as ``brokenbind fit --config CONFIG [OVERRIDES]``: ``config`` is an experiment file, a dict
    of the same content, or a list of them (later ones override earlier ones); ``overrides`` are the command line's
    ``--key=value`` arguments (``--method=NAME``, ``--seed_everything=1``, ``--trainer.max_epochs=5``, ...);
    ``callbacks`` are callback objects added to the run's (see ``run``). Errors raise as described in ``run``."""
    return _result(run(["fit", *config_args(config), *overrides], callbacks))


def check(config: Config | Sequence[Config], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved configuration ``fit(config, overrides)`` would run with, parsed and checked as ``fit`` does before
    it builds anything: a configuration error raises as there, and nothing is built, written or trained (for scripts
    that start many runs, such as ``brokenbind tune``, to stop before the first)."""
    return _start(CheckedCLI, ["fit", *config_args(config), *overrides]).plain_config()


def validate(ckpt_path: str | Path, overrides: Sequence[str] = ()) -> RunResult:
    """Score a checkpoint on the validation split with the configuration it stores."""
    return _result(run(["validate", f"--ckpt_path={ckpt_path}", *overrides]))


def test(ckpt_path: str | Path, overrides: Sequence[str] = ()) -> RunResult:
    """Score a checkpoint on the test split with the configuration it stores."""
    return _result(run(["test", f"--ckpt_path={ckpt_path}", *overrides]))


test.__test__ = False  # not a pytest test when a test module imports it


def predict(ckpt_path: str | Path, overrides: Sequence[str] = ()) -> RunResult:
    """Write a checkpoint's embeddings of every split into ``<run>/embeddings`` (rows: none)."""
    return _result(run(["predict", f"--ckpt_path={ckpt_path}", *overrides]))


def _result(cli: BrokenBindCLI) -> RunResult:
    trainer = cli.trainer
    scored = next((c.rows for c in trainer.callbacks if isinstance(c, EmergentBinding)), {})
    # what this subcommand reported (a checkpoint's restored best validation epoch is not a test run's result)
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    last = cli.run_dir / "checkpoints" / "last.ckpt"
    return RunResult(
        run_dir=cli.run_dir,
        best_checkpoint=Path(best) if best else None,
        last_checkpoint=last if last.is_file() else None,
        rows=[row for stage in REPORTED[cli.subcommand] for row in scored.get(stage, [])],
        config=cli.model.run_config,
        trainer=trainer,
        model=cli.model,
        datamodule=cli.datamodule,
    )
