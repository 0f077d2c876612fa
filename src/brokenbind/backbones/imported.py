"""The ``import`` backbone: any ``nn.Module`` named by its import path, LightningCLI style.

``{name: import, class_path: my_pkg.encoders.MyEncoder, init_args: {...}}`` builds ``MyEncoder(**init_args)``. The
module maps a batch of the modality's inputs (a (B, ...) tensor, or a list of strings for text) to (B, D) features.
It says D as an ``out_dim`` attribute (or the spec gives ``out_dim``). It may define ``fingerprint() -> str`` naming
the exact function it computes (weights hash, preprocessing): frozen outputs are then cached like the built-in
backbones'; without one nothing is cached. A constructor parameter named ``modality_info`` receives the modality's
``ModalityInfo`` (kind, per-sample shape, sample rate).

Frozen encoders (the default) are rebuilt from ``init_args`` rather than checkpointed, so the constructor must load
the same weights every time (from a file it is given); parameters it initialises randomly are drawn from a fixed seed.
With ``trainable: true`` the module trains with the heads and is saved in checkpoints.
"""

import importlib
import inspect
import json
from typing import Any

import torch
from torch import Tensor, nn

from brokenbind.backbones.base import Backbone
from brokenbind.errors import ConfigError
from brokenbind.modality import ModalityInfo


def import_class(class_path: str) -> type:
    module_name, _, name = class_path.rpartition(".")
    if not module_name:
        raise ConfigError(f"import backbone: class_path {class_path!r} must be 'package.module.ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"import backbone: cannot import {module_name!r} for class_path {class_path!r}: {error}; install the "
            "package or put its directory on PYTHONPATH"
        ) from error
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"import backbone: {class_path!r} is not an nn.Module class")
    return cls


class ImportedModule(Backbone):
    """Wraps the user's module: checks its output, names it in the fingerprint.

    Args:
        class_path: ``package.module.ClassName`` of an ``nn.Module``.
        init_args: keyword arguments of its constructor.
        out_dim: the feature width D; default the module's ``out_dim`` attribute.
        trainable: train the module with the heads (saved in checkpoints); default frozen.
    """

    def __init__(
        self,
        info: ModalityInfo,
        class_path: str,
        init_args: dict[str, Any] | None = None,
        out_dim: int | None = None,
        trainable: bool = False,
    ):
        super().__init__()
        cls = import_class(class_path)
        kwargs = dict(init_args or {})
        if "modality_info" in inspect.signature(cls).parameters:
            kwargs["modality_info"] = info
        with torch.random.fork_rng(devices=[]):  # the same random init on every rank and every rebuild
            torch.manual_seed(0)
            try:
                self.module = cls(**kwargs)
            except TypeError as error:
                raise ConfigError(f"import backbone {class_path}: {error}") from error
        width = out_dim if out_dim is not None else getattr(self.module, "out_dim", None)
        if not isinstance(width, int) or width < 1:
            raise ConfigError(
                f"import backbone {class_path}: give the feature width, as an int attribute out_dim of the module or "
                "out_dim in the backbone spec"
            )
        self.out_dim, self.trainable, self.class_path = width, trainable, class_path
        self.init_args = json.dumps(init_args or {}, sort_keys=True, default=str)

    def forward(self, x: Any) -> Tensor:
        features = self.module(x)
        batch = len(x)
        if not isinstance(features, Tensor) or tuple(features.shape) != (batch, self.out_dim):
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"import backbone {self.class_path}: forward must return a ({batch}, {self.out_dim}) tensor for a "
                f"batch of {batch}, got {shape}"
            )
        return features.float()

    def fingerprint(self) -> str | None:
        own = getattr(self.module, "fingerprint", None)
        if self.trainable or not callable(own):
            return None
        named = own()
        return f"import:{self.class_path}|init_args={self.init_args}|{named}|fp32" if named else None
