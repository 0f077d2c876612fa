"""What a user reads when the command line or an experiment file is wrong: one short paragraph naming the file, line,
key or class, instead of jsonargparse's raw text (a union of accepted types and a dump of the given value)."""

import ast
import difflib
import errno
import importlib
import inspect
import os
import re
from pathlib import Path

import yaml
from jsonargparse import ArgumentError

from brokenbind.errors import ConfigError, StorageError, UserError

# What a file system answers when it does not take a write: full, over quota, read-only, too large, not permitted.
REFUSED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


def user_error(error: BaseException | None) -> Exception | None:
    """The configuration, data or storage error behind ``error`` (None when it is none of these: a bug, which keeps
    its traceback); jsonargparse wraps errors raised while instantiating. A file system's refusal anywhere in a run
    (results.csv, TensorBoard events, config.yaml) is a ``StorageError`` naming the file, as a checkpoint's is
    (``checkpoints.AtomicCheckpointIO``); jsonargparse's parse errors become a ``ConfigError`` in one paragraph."""
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


def check_yaml_files(args: list[str]) -> None:
    """A YAML syntax error in a ``--config`` file, named with its file, line and column (jsonargparse reads the
    file's text and reports only a line of ``<unicode string>``); an empty file, or one that is not a mapping
    (jsonargparse says "Unexpected config:" and nothing more)."""
    for i, arg in enumerate(args):
        value = args[i + 1] if arg in ("--config", "-c") and i + 1 < len(args) else arg.partition("=")[2]
        if not (arg in ("--config", "-c") or arg.startswith("--config=")) or not os.path.isfile(value):  # or YAML text
            continue
        try:
            settings = yaml.safe_load(Path(value).read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error)
            raise ConfigError(
                f"experiment file {value}: YAML syntax error{at}: {problem}; fix the file (nesting is by indentation, "
                "the same number of spaces for keys of one mapping)"
            ) from error
        if settings is None:
            raise ConfigError(
                f"experiment file {value} is empty (or holds only comments): write the settings that differ from the "
                "defaults, at least data (its class_path, datasets, pivot and flows), as experiments/two_dataset.yaml "
                "does"
            )
        if not isinstance(settings, dict):
            raise ConfigError(
                f"experiment file {value} holds a {type(settings).__name__}, not a mapping of settings: its top-level "
                "keys are data, model, trainer, ... (as in experiments/two_dataset.yaml)"
            )


# jsonargparse's words for an unknown key in a config file (with the subcommand) and on the command line
UNKNOWN_KEY = re.compile(r"(?:Subcommand '(\w+)' does not accept option '|unrecognized arguments: --)([\w.]+)")


def parse_error_message(text: str) -> str:
    """jsonargparse's error as one short paragraph: for a class given by ``class_path`` the problem with that class
    (not the union of accepted types and a dump of the given value), a close spelling of an unknown option, and the
    command that lists the accepted ones."""
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    key = re.match(r'Parser key "([^"]+)": ', text)
    problem = re.search(r"Problem with given class_path '([^']+)': (.*?)(?: - Expected a <class 'NoneType'>.*)?$", text)
    unknown = re.search(r"Option '([^']+)' is not accepted", problem[2]) if problem else None
    if problem and unknown and key:
        text = (
            f"{key[1]}: {problem[1]} takes no option {unknown[1]!r}{_close_spelling(unknown[1], problem[1])}; "
            f"`brokenbind fit --{key[1]}.help {problem[1]}` lists its options"
        )
    elif problem:
        text = f"{key[1] + ': ' if key else ''}{problem[1]}: {problem[2]}"
    elif key and "Not a valid subclass" in text:
        try:
            given = ast.literal_eval(re.sub(r"^.*Given value: ", "", text))
        except (ValueError, SyntaxError):
            given = None
        extra = [k for k in given if k not in ("class_path", "init_args", "dict_kwargs")] if type(given) is dict else []
        text = (
            f"{key[1]}: unknown keys {extra} next to class_path and init_args; the class's options go under init_args"
            if extra
            else f"{key[1]}: expected a mapping with class_path and init_args (the class's options)"
        )
    elif option := UNKNOWN_KEY.search(text):
        trainer = option[2].startswith("trainer.")
        spelling = _close_spelling(option[2].removeprefix("trainer."), "lightning.pytorch.Trainer") if trainer else ""
        text += f"{spelling}; `brokenbind {option[1] or 'fit'} --help` lists the accepted keys"
    return text


def _close_spelling(option: str, class_path: str) -> str:
    """`` (did you mean 'x'?)`` for an option of ``class_path`` (or of a base class) spelt close to ``option``."""
    module, _, name = class_path.rpartition(".")
    try:
        classes = getattr(importlib.import_module(module), name).__mro__
        options = {p for c in classes if "__init__" in vars(c) for p in inspect.signature(c.__init__).parameters}
    except (ImportError, AttributeError, TypeError, ValueError):
        return ""
    close = difflib.get_close_matches(option, sorted(options - {"self", "args", "kwargs"}), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
