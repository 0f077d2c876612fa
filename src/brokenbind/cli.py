"""``brokenbind``: the Lightning CLI (fit / validate / test / predict) over BindingModule and any PairedDataModule.

Shared defaults come from ``brokenbind/configs/defaults.yaml``; an experiment YAML holds only what differs. Unknown
keys are errors (jsonargparse). The run is named after the experiment file (``--experiment`` overrides), so
``brokenbind fit --config experiments/two_dataset.yaml`` writes TensorBoard logs, checkpoints, the resolved config and
``results.csv`` into ``logs/two_dataset/version_N``; with ``--method NAME`` (a preset from ``configs/methods``) into
``logs/two_dataset/NAME/version_N``.
"""

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from brokenbind.errors import ConfigError, DataError
from brokenbind.module import BindingModule
from datamodules.base import PairedDataModule

DEFAULTS = Path(__file__).parent / "configs" / "defaults.yaml"
METHODS = Path(__file__).parent / "configs" / "methods"


def method_presets() -> list[str]:
    return sorted(p.stem for p in METHODS.glob("*.yaml"))


def expand_method_presets(args: list[str]) -> list[str]:
    """``--method NAME`` stands for ``--config configs/methods/NAME.yaml``: a preset is a config layer (it may set the
    model, the data or the trainer, e.g. ``oracle``), applied where it appears, so put it after the experiment."""
    out, rest = [], list(args)
    while rest:
        arg = rest.pop(0)
        if arg != "--method" and not arg.startswith("--method="):
            out.append(arg)
            continue
        name = arg.partition("=")[2] if "=" in arg else (rest.pop(0) if rest else "")
        if name not in method_presets():
            raise ConfigError(f"unknown method preset {name!r}; available: {method_presets()}")
        out += ["--config", str(METHODS / f"{name}.yaml"), f"--method={name}"]
    return out


class BrokenBindCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", type=str | None, default=None, help="run name (default: config file stem)")
        parser.add_argument("--method", type=str | None, default=None, help=f"method preset, one of {method_presets()}")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="fit only: test the best checkpoint when training ends"
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        experiments = [Path(str(c)) for c in config.get("config") or [] if Path(str(c)).parent != METHODS]
        name = config.experiment or (experiments[-1].stem if experiments else "default")
        config.experiment = name
        logger = config.trainer.logger
        if logger and getattr(logger, "init_args", None) is not None and "name" in logger.init_args:
            logger.init_args.name = name if config.method is None else f"{name}/{config.method}"
        for callback in config.trainer.callbacks or []:
            if callback.class_path.endswith("EmergentBinding"):  # results rows name the experiment and the preset
                callback.init_args.experiment, callback.init_args.method = name, config.method

    def after_fit(self) -> None:
        if not self.config.fit.test_after_fit or self.trainer.interrupted:
            return
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        rank_zero_info(f"testing {'checkpoint ' + best if best else 'the final weights (no checkpoint was saved)'}")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


def cli(args: list[str] | None = None) -> BrokenBindCLI:
    """Parse ``args`` (default: the command line), build everything and run the subcommand."""
    try:
        if args is None:  # from the command line: LightningCLI reads sys.argv itself
            sys.argv[1:] = expand_method_presets(sys.argv[1:])
        else:
            args = expand_method_presets(args)
        return BrokenBindCLI(
            BindingModule,
            PairedDataModule,
            subclass_mode_data=True,
            parser_kwargs={
                command: {"default_config_files": [str(DEFAULTS)], "parser_mode": "omegaconf"}
                for command in ("fit", "validate", "test", "predict")
            },
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,  # the model takes its optimizer; one way to configure it
            args=args,
        )
    except Exception as error:
        cause = _user_error(error)
        if cause is None:
            raise
        print(f"brokenbind: {type(cause).__name__}: {cause}", file=sys.stderr)
        raise SystemExit(2) from error


def _user_error(error: BaseException | None) -> ConfigError | DataError | None:
    """The configuration or data error behind ``error``; jsonargparse wraps errors raised while instantiating."""
    while error is not None and not isinstance(error, ConfigError | DataError):
        error = error.__cause__ or error.__context__
    return error


def main() -> None:
    """Console entry point ``brokenbind``."""
    cli()


if __name__ == "__main__":
    main()
