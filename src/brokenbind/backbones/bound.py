"""The ``bound`` backbone: a modality's trained encoder from a brokenbind checkpoint, frozen.

``{name: bound, checkpoint: logs/pool/version_0/checkpoints/best-epoch049.ckpt}`` encodes a modality exactly as the
checkpoint's run embedded it: that run's backbone for the modality, then its trained head, L2-normalised. This is the
paper's regime (frozen ImageBind / LanguageBind encoders that already bind their modalities) with any earlier run as
the binding model, and the way to bind a new modality onto an existing space (its other modalities use ``bound``, the
new one a fresh backbone). Pair it with ``model.head: residual``: the untrained model then is the zero-shot one.

The checkpoint holds only the trained tensors (frozen backbones are rebuilt, never saved), so the source backbone is
rebuilt from the run configuration stored in the checkpoint, including its datamodule when the backbone is fitted to
data (mfeat's standardisation): the source run's data must be readable where this run runs. The rebuild reads only
what the stored configuration holds, never today's defaults: a key it needs and the checkpoint lacks is a ConfigError.
"""

import importlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from brokenbind.backbones import HEADS, build_backbone
from brokenbind.backbones.base import Backbone, sha256_file
from brokenbind.checkpoints import load_checkpoint, with_model_prefix
from brokenbind.errors import ConfigError
from brokenbind.modality import ModalityInfo


def stored(config: dict[str, Any], key: str, checkpoint: str) -> Any:
    """The value at dotted ``key`` of a checkpoint's stored configuration; absent or None is a ConfigError, since the
    rebuild needs it and no value of today's defaults is what that run used."""
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        raise ConfigError(
            f"bound backbone: the run configuration stored in checkpoint {checkpoint} has no {key}, which rebuilding "
            "its encoder needs; the checkpoint was written by another version of brokenbind or edited: use a "
            "checkpoint of a run of this version"
        )
    return value


def source_modality_info(config: dict[str, Any], checkpoint: str) -> dict[str, ModalityInfo]:
    """Modality info of the checkpoint run's datamodule, rebuilt from its stored ``data`` configuration."""
    module_name, _, name = stored(config, "data.class_path", checkpoint).rpartition(".")
    try:
        datamodule = getattr(importlib.import_module(module_name), name)(**stored(config, "data.init_args", checkpoint))
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"bound backbone: cannot rebuild the data of checkpoint {checkpoint} ({error})") from error
    datamodule.prepare_data()
    return datamodule.modality_info()


class BoundEncoder(Backbone):
    """See the module docstring.

    Args:
        checkpoint: a ``.ckpt`` written by ``brokenbind fit`` (it carries its run configuration).
        modality: the checkpoint's modality whose encoder to use; default the modality this backbone encodes.
    """

    def __init__(self, info: ModalityInfo, checkpoint: str, modality: str | None = None):
        super().__init__()
        state = load_checkpoint(checkpoint)
        config = state.get("config")
        if config is None:
            raise ConfigError(f"bound backbone: checkpoint {checkpoint} has no run configuration: not from brokenbind")
        modality = modality or info.name
        weights = with_model_prefix(state["state_dict"])
        source_info = source_modality_info(config, checkpoint)
        if modality not in source_info:
            raise ConfigError(
                f"bound backbone: checkpoint {checkpoint} has no encoder for {modality!r}; it encodes "
                f"{sorted(source_info)} (choose one with the option modality)"
            )
        source = source_info[modality]
        if (source.kind, source.shape) != (info.kind, info.shape):
            raise ConfigError(
                f"bound backbone: the {modality!r} encoder of {checkpoint} takes {source.kind} inputs of shape "
                f"{source.shape}, this modality gives {info.kind} inputs of shape {info.shape}"
            )
        # the dump leaves out None values: no model.backbones is the run's default (None), every modality on
        # model.default_backbone, as BindingModule.build reads it
        specs = stored(config, "model", checkpoint).get("backbones") or {}
        spec = specs[modality] if modality in specs else stored(config, "model.default_backbone", checkpoint)
        self.backbone = build_backbone(spec, replace(source, name=modality))
        embed_dim = stored(config, "model.embed_dim", checkpoint)
        head = HEADS[stored(config, "model.head", checkpoint)]
        self.head = head(self.backbone.out_dim, stored(config, "model.head_hidden_dim", checkpoint), embed_dim)
        own = {k.removeprefix(f"model.backbones.{modality}."): v for k, v in weights.items()
               if k.startswith(f"model.backbones.{modality}.")}  # fmt: skip
        unexpected = self.backbone.load_state_dict(own, strict=False).unexpected_keys
        if unexpected:
            raise ConfigError(f"bound backbone: {checkpoint} holds tensors its backbone does not have: {unexpected}")
        prefix = f"model.heads.{modality}."
        self.head.load_state_dict({k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)})
        self.out_dim, self.modality, self.checkpoint = embed_dim, modality, Path(checkpoint)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.backbone(x)).float(), dim=-1)

    def fingerprint(self) -> str | None:
        source = self.backbone.fingerprint()
        return f"bound:{sha256_file(self.checkpoint)}:{self.modality}|{source}" if source else None
