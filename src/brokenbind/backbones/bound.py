"""The ``bound`` backbone: a modality's trained encoder from a brokenbind checkpoint, frozen.

``{name: bound, checkpoint: logs/pool/version_0/checkpoints/best-epoch049.ckpt}`` encodes a modality exactly as the
checkpoint's run embedded it: that run's backbone for the modality, then its trained head, L2-normalised. This is the
paper's regime (frozen ImageBind / LanguageBind encoders that already bind their modalities) with any earlier run as
the binding model, and the way to bind a new modality onto an existing space (its other modalities use ``bound``, the
new one a fresh backbone). Pair it with ``model.head: residual``: the untrained model then is the zero-shot one.

The checkpoint holds only the trained tensors (frozen backbones are rebuilt, never saved), so the source backbone is
rebuilt from the run configuration stored in the checkpoint, including its datamodule when the backbone is fitted to
data (mfeat's standardisation): the source run's data must be readable where this run runs.
"""

import importlib
from dataclasses import replace
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor

from brokenbind.backbones import HEADS, build_backbone
from brokenbind.backbones.base import Backbone, sha256_file
from brokenbind.checkpoints import load_checkpoint
from brokenbind.errors import ConfigError
from brokenbind.modality import ModalityInfo


def source_modality_info(data: dict, checkpoint: str) -> dict[str, ModalityInfo]:
    """Modality info of the checkpoint run's datamodule, rebuilt from its stored ``data`` configuration."""
    class_path = data.get("class_path", "")
    module_name, _, name = class_path.rpartition(".")
    try:
        datamodule = getattr(importlib.import_module(module_name), name)(**data.get("init_args", {}))
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
        model, weights = config["model"], state["state_dict"]
        source_info = source_modality_info(config["data"], checkpoint)
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
        specs = model.get("backbones") or {}
        self.backbone = build_backbone(specs.get(modality, model.get("default_backbone", "standardize")),
                                       replace(source, name=modality))  # fmt: skip
        embed_dim = model.get("embed_dim", 128)
        self.head = HEADS[model.get("head", "mlp")](self.backbone.out_dim, model.get("head_hidden_dim", 256), embed_dim)
        own = {k.removeprefix(f"backbones.{modality}."): v for k, v in weights.items()
               if k.startswith(f"backbones.{modality}.")}  # fmt: skip
        unexpected = self.backbone.load_state_dict(own, strict=False).unexpected_keys
        if unexpected:
            raise ConfigError(f"bound backbone: {checkpoint} holds tensors its backbone does not have: {unexpected}")
        prefix = f"heads.{modality}."
        self.head.load_state_dict({k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)})
        self.out_dim, self.modality, self.checkpoint = embed_dim, modality, Path(checkpoint)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.backbone(x)).float(), dim=-1)

    def fingerprint(self) -> str | None:
        source = self.backbone.fingerprint()
        return f"bound:{sha256_file(self.checkpoint)}:{self.modality}|{source}" if source else None
