"""A run's settings, read as the command line gives them (application layer): presets, a checkpoint's stored
configuration, the experiment files and overrides, parsed by jsonargparse against BindingModule, any PairedDataModule
and Lightning's Trainer, then checked.

Shared defaults come from ``brokenbind/configs/defaults.yaml``; an experiment YAML holds only what differs. Unknown
keys are errors (jsonargparse). ``--method NAME`` and ``--hardware NAME`` are config layers from ``configs/methods``
and ``configs/hardware``. The parser is the one ``LightningCLI`` would build (a subcommand per Trainer method, the same
keys and messages), without a CLI object: the run itself is ``brokenbind.api``.
"""

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from jsonargparse import ActionConfigFile, Namespace
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.cli import LightningArgumentParser

from brokenbind.callbacks.emergent import EmergentBinding
from brokenbind.checkpoints import as_run, load_checkpoint, stored_config
from brokenbind.errors import ConfigError
from brokenbind.messages import check_yaml_files
from brokenbind.module import BindingModule
from datamodules.base import PairedDataModule

CONFIGS = Path(__file__).parent / "configs"
DEFAULTS = CONFIGS / "defaults.yaml"
PRESETS = {"method": CONFIGS / "methods", "hardware": CONFIGS / "hardware"}
# each subcommand is the Trainer method of its name; these of its arguments the run supplies itself
SUBCOMMANDS = {
    "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
    "validate": {"model", "dataloaders", "datamodule"},
    "test": {"model", "dataloaders", "datamodule"},
    "predict": {"model", "dataloaders", "datamodule"},
}
# Sections that must match between a checkpoint's run and the run that loads it (the trainer and seed may differ).
CONFIG_KEYS_COMPARED = ("model", "data")
# Mappings whose order is part of the configuration: the datasets' order divides the instances among them (mfeat's
# class-shift blocks, datamodules.mfeat.assign_instances) and orders the training loaders; elsewhere only keys and
# values count.
ORDERED_MAPPINGS = ("data.init_args.datasets",)

Config = str | Path | dict[str, Any]
Overrides = Sequence[str] | Mapping[str, Any]


def presets(kind: str) -> list[str]:
    return sorted(p.stem for p in PRESETS[kind].glob("*.yaml"))


def method_presets() -> list[str]:
    return presets("method")


# -- the arguments of a run ------------------------------------------------------------------------------------------
def config_args(config: Config | Sequence[Config]) -> list[str]:
    """``--config`` arguments for experiment files and inline configurations (dicts), applied in order."""
    configs = [config] if isinstance(config, str | Path | dict) else list(config)
    return [
        f"--config={yaml.safe_dump(c, sort_keys=False)}" if isinstance(c, dict) else f"--config={c}" for c in configs
    ]


def override_args(overrides: Overrides) -> list[str]:
    """Command-line arguments from overrides given as arguments (``["--trainer.max_epochs=2"]``) or as a mapping of
    dotted keys (``{"trainer.max_epochs": 2, "method": "fabind"}``; values in YAML, as a config file holds them)."""
    if not isinstance(overrides, Mapping):
        return list(overrides)
    return [f"--{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in overrides.items()]  # fmt: skip


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


# -- the parser --------------------------------------------------------------------------------------------------------
def new_parser(**kwargs: Any) -> LightningArgumentParser:
    """A parser as every command builds one: ``--config`` files, errors raised (not exit); ``kwargs`` add, for the
    parser that reads an experiment, our defaults first and OmegaConf interpolation."""
    header = [f"lightning.pytorch=={pl.__version__}"]
    parser = LightningArgumentParser(dump_header=header, exit_on_error=False, **kwargs)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="an experiment file (YAML), or YAML text")
    return parser


def add_run_arguments(parser: LightningArgumentParser) -> None:
    """What an experiment configures: the seed, the trainer, the model, the data (any PairedDataModule), the
    evaluation, and the run's name."""
    parser.add_argument(
        "--seed_everything", type=bool | int, default=True, help="an int seeds the run; true draws a seed (recorded)"
    )
    parser.add_lightning_class_args(Trainer, "trainer")
    parser.add_lightning_class_args(BindingModule, "model")
    parser.add_lightning_class_args(PairedDataModule, "data", subclass_mode=True)
    parser.add_class_arguments(EmergentBinding, "evaluation", skip={"experiment", "method"}, instantiate=False)
    parser.add_argument("--experiment", type=str | None, default=None, help="run name (default: config file stem)")
    parser.add_argument("--method", type=str | None, default=None, help=f"method preset, one of {method_presets()}")


def run_parser() -> tuple[LightningArgumentParser, dict[str, tuple[LightningArgumentParser, list[str]]]]:
    """``brokenbind fit|validate|test|predict``, and per subcommand its parser and the arguments of its Trainer
    method that it adds (``ckpt_path``, ``verbose``, as LightningCLI names them)."""
    parser, parsers = new_parser(), {}
    subcommands = parser.add_subcommands()
    for name, supplied in SUBCOMMANDS.items():
        description = (getattr(Trainer, name).__doc__ or "").strip().splitlines()[0]
        sub = new_parser(default_config_files=[str(DEFAULTS)], parser_mode="omegaconf", description=description)
        add_run_arguments(sub)
        sub.add_argument(
            "--test_after_fit", type=bool, default=True, help="fit only: test the best checkpoint when training ends"
        )
        added = sub.add_method_arguments(Trainer, name, skip=set(supplied))
        subcommands.add_subcommand(name, sub, help=description)
        parsers[name] = sub, added
    return parser, parsers


# -- parsed ------------------------------------------------------------------------------------------------------------
@dataclass
class Settings:
    """One subcommand's parsed configuration (``config``, a jsonargparse namespace) and the parser that reads it."""

    subcommand: str
    parser: LightningArgumentParser  # the subcommand's own
    config: Namespace
    method_arguments: list[str]  # the keys of ``config`` that are arguments of the Trainer method

    @property
    def run_name(self) -> str:
        """``<experiment>[/<method>]``: the folder of this run's directories under ``save_dir``."""
        config = self.config
        return config.experiment if config.method is None else f"{config.experiment}/{config.method}"

    @property
    def save_dir(self) -> Path:
        logger = self.config.trainer.logger
        return Path(logger.init_args.save_dir if logger and "save_dir" in (logger.init_args or {}) else "logs")

    def plain(self) -> dict[str, Any]:
        """The resolved configuration as plain containers (for checkpoints and comparison)."""
        config = yaml.safe_load(self.parser.dump(self.config, skip_check=True))
        for key in ("config", "ckpt_path"):
            config.pop(key, None)
        return config


def parse(subcommand: str, args: Sequence[str]) -> Settings:
    """Presets expanded, a checkpoint's configuration taken, files read, parsed, checked and the run seeded."""
    args = with_checkpoint_config(expand_presets([subcommand, *args]))
    check_yaml_files(args)
    parser, parsers = run_parser()
    config = parser.parse_args(args)[subcommand]
    parser_of, added = parsers[subcommand]
    settings = Settings(subcommand, parser_of, config, added)
    config.experiment = experiment_name(config)
    check(settings)
    config.seed_everything = seed_everything(None if config.seed_everything is True else config.seed_everything,
                                             workers=True)  # fmt: skip
    return settings


def experiment_files(config: Namespace) -> list[Path]:
    """The experiment files of a parsed command, in order (``--config`` files that are not presets)."""
    files = [Path(str(c)) for c in config.get("config") or [] if c is not None]  # None: an inline configuration
    return [p for p in files if p.parent not in PRESETS.values()]


def experiment_name(config: Namespace) -> str:
    """The run's name: ``--experiment``, else the last experiment file's stem ("default" when there is none)."""
    files = experiment_files(config)
    return config.experiment or (files[-1].stem if files else "default")


# -- checks ------------------------------------------------------------------------------------------------------------
def check(settings: Settings) -> None:
    """Settings that parse but cannot give an honest run."""
    config = settings.config
    if settings.subcommand == "fit" and config.trainer.max_epochs == 0 and config.method != "frozen":
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
    check_save_dir(settings.save_dir)


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


def check_save_dir(save_dir: Path) -> None:
    """Runs go under ``save_dir``: it, or the nearest of its parents that exists, must be a directory."""
    existing = next(p for p in (save_dir, *save_dir.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(
            f"trainer.logger.init_args.save_dir is {str(save_dir)!r}, but {existing} is a file, not a directory; "
            "name a directory for the runs (it is created if missing), e.g. logs"
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


def check_checkpoint(settings: Settings, ckpt: Path) -> None:
    """Refuse a checkpoint written under another model or data configuration, and a fit from it that would end
    before the epoch the checkpoint was saved in."""
    state = load_checkpoint(ckpt)
    epoch = state.get("epoch")  # Lightning's current_epoch at saving; Lightning refuses a checkpoint without it
    max_epochs = settings.config.trainer.max_epochs
    if settings.subcommand == "fit" and epoch is not None and max_epochs is not None and 0 <= max_epochs <= epoch:
        raise ConfigError(
            f"trainer.max_epochs is {max_epochs}, but checkpoint {ckpt} was saved in epoch {epoch + 1} of its run: "
            "a fit from it continues from there, so it would train nothing and leave a run longer than its "
            f"configuration says. Resume with --trainer.max_epochs={epoch + 1} or more, or start a new run "
            "without --ckpt_path"
        )
    stored = state.get("config")
    if stored is None:
        return  # written without a stored configuration: nothing to compare
    stored = as_run(stored)
    current = settings.plain()
    differences = [
        d for key in CONFIG_KEYS_COMPARED for d in config_differences(stored.get(key), current.get(key), f"{key}.")
    ]
    if differences:
        run = "experiment {!r} (method {!r})"
        raise ConfigError(
            f"checkpoint {ckpt} was written by {run.format(stored.get('experiment'), stored.get('method'))} with "
            f"other settings than this run, {run.format(current.get('experiment'), current.get('method'))}: "
            f"{', '.join(differences[:5])}{' ...' if len(differences) > 5 else ''} differ. Load it with its own "
            f"configuration: `brokenbind {settings.subcommand} --ckpt_path {ckpt}` (no --config)"
        )
