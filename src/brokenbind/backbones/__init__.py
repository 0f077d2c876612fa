"""Per-modality backbones: raw inputs → features. A config names one per modality from ``BACKBONES``.

A spec is a registry name (``standardize``) or a mapping with ``name`` and the builder's options
(``{name: timm, model: tf_efficientnet_lite0, weights: efficientnet_lite0_wheel}``). A builder receives the modality's
``ModalityInfo`` and the options and returns a ``Backbone``. Adding an encoder means adding a builder here.
"""

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from brokenbind.backbones.audio import LogMelCNN
from brokenbind.backbones.base import Backbone, ModalityInfo
from brokenbind.backbones.image import TimmImage
from brokenbind.backbones.lora import apply_lora
from brokenbind.backbones.tabular import Identity, Standardize
from brokenbind.backbones.text import MiniLMText
from brokenbind.errors import ConfigError

BACKBONES: dict[str, Callable[..., Backbone]] = {
    "standardize": Standardize.fit,
    "identity": Identity,
    "timm": TimmImage,
    "minilm": MiniLMText,
    "logmel_cnn": LogMelCNN,
}

BackboneSpec = str | dict[str, Any]


def build_backbone(spec: BackboneSpec, info: ModalityInfo) -> Backbone:
    """Build, then freeze unless trainable; a ``lora`` option (``backbones.lora.apply_lora``'s arguments) adds
    adapters to a frozen backbone."""
    options = {"name": spec} if isinstance(spec, str) else dict(spec)
    name, lora = options.pop("name", None), options.pop("lora", None)
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; available: {sorted(BACKBONES)}")
    try:
        backbone = BACKBONES[name](info, **options)
    except TypeError as error:  # an option the builder does not take
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


__all__ = ["BACKBONES", "Backbone", "BackboneSpec", "ModalityInfo", "ProjectionHead", "build_backbone"]
