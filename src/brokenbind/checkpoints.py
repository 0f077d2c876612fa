"""Reading brokenbind checkpoints: the CLI resumes and tests from them, ``bound`` backbones encode with them."""

from pathlib import Path
from typing import Any

import torch

from brokenbind.errors import ConfigError


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A brokenbind checkpoint, read with ``weights_only=True`` (plain containers and tensors only)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}; pass the path of a .ckpt file or 'last'")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(f"checkpoint {path} cannot be read ({type(error).__name__}: {error})") from error


def stored_config(path: str | Path) -> dict[str, Any]:
    """The resolved run configuration a checkpoint carries (``brokenbind fit`` stores it)."""
    config = load_checkpoint(path).get("config")
    if config is None:
        raise ConfigError(f"checkpoint {path} holds no run configuration; pass the experiment with --config")
    return config
