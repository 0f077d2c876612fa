"""Reading and writing brokenbind checkpoints: the CLI resumes and tests from them, ``bound`` backbones encode with
them; every checkpoint is written whole or not at all (``AtomicCheckpointIO``)."""

import hashlib
import importlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from brokenbind.errors import ConfigError, StorageError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A brokenbind checkpoint, read with ``weights_only=True`` (plain containers and tensors only)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}; pass the path of a .ckpt file or 'last'")
    with path.open("rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if head and head != ZIP_MAGIC:
        what = "it holds text" if _is_text(path) else "it does not start like one"
        raise ConfigError(
            f"checkpoint {path} is not a PyTorch checkpoint (torch.save writes a zip archive; {what}); pass a .ckpt "
            "file that brokenbind wrote (logs/<experiment>/<version>/checkpoints/*.ckpt) or 'last'"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(
            f"checkpoint {path} holds Python objects besides tensors and plain containers, so brokenbind did not "
            "write it (its checkpoints load with torch.load(weights_only=True)); pass a checkpoint of a brokenbind run"
        ) from error
    except Exception as error:  # torch's zip reader (RuntimeError), or EOFError on an empty file
        reason = str(error).split(". ")[0] or "the file is empty"
        raise ConfigError(
            f"checkpoint {path} is truncated or corrupt (torch cannot read it: {reason}); it was probably cut off "
            "while being written or copied: copy it again, or use another checkpoint of the run (checkpoints/"
            "last.ckpt, best-epochNNN.ckpt)"
        ) from error


def with_model_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's weights under today's names: checkpoints written before the model became its own module
    (``BindingModule.model``) name its backbones and heads without the ``model.`` prefix."""
    old = ("backbones.", "heads.")
    return {f"model.{k}" if k.startswith(old) else k: v for k, v in state_dict.items()}


def _is_text(path: Path) -> bool:
    """Whether the file's first KiB decodes as UTF-8 (a YAML or log file passed by mistake)."""
    with path.open("rb") as f:
        start = f.read(1024)
    try:
        start.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def stored_config(path: str | Path) -> dict[str, Any]:
    """The resolved run configuration a checkpoint carries (``brokenbind fit`` stores it), ``as_run``."""
    config = load_checkpoint(path).get("config")
    if config is None:
        raise ConfigError(f"checkpoint {path} holds no run configuration; pass the experiment with --config")
    return as_run(config)


def as_run(config: dict[str, Any]) -> dict[str, Any]:
    """A stored run configuration with the method arguments added since it was saved set to what the run did (its
    method class's ``added_arguments``); re-parsed without them, the method would take today's defaults. A class that
    cannot be imported is left to the parser, which names it."""
    method = (config.get("model") or {}).get("method")
    if not isinstance(method, dict):
        return config
    module, _, name = str(method.get("class_path", "")).rpartition(".")
    try:
        added = getattr(importlib.import_module(module), name).added_arguments
    except (ImportError, AttributeError, ValueError):
        return config
    method["init_args"] = {**added, **(method.get("init_args") or {})}
    return config


def checkpoint_digest(path: str | Path) -> str:
    """The first 16 hex digits of a checkpoint file's SHA-256: the same weights wherever the file is copied, so a
    checkpoint scored again, as a copy or under another name, is recognised (``results.ResultRow.checkpoint``)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:16]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint beside its name and renames it into place: a full disk or a killed writer leaves no
    truncated file under a name that a resume or a test would load (the previous file of that name stays intact), and
    a write that fails is a ``StorageError`` naming the file. (Lightning writes in place; a local path only: a URL is
    written by Lightning as is.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # not *.ckpt: never listed as a checkpoint
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
            partial.replace(path)
        except OSError as error:
            partial.unlink(missing_ok=True)
            kept = f"the earlier {path.name} is intact" if path.is_file() else f"no file named {path.name} was left"
            last = path.parent / "last.ckpt"
            then = "resume with `brokenbind fit --ckpt_path last`" if last.is_file() else "start the run again"
            raise StorageError(
                f"could not write checkpoint {path}: {error.strerror or error} (the disk is full, the file too large "
                f"for its file system, or the directory not writable); {kept}. Free space or make {path.parent} "
                f"writable, then {then} (or run elsewhere: --trainer.logger.init_args.save_dir)"
            ) from error
