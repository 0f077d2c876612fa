"""Per-modality backbones: raw inputs → features. A config names one per modality from ``BACKBONES``.

A builder receives the modality's ``ModalityInfo`` (input shape and the training inputs, for backbones fitted to data)
and returns a ``Backbone``. Adding an encoder (timm, text, audio) means adding a builder, not touching the module.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ModalityInfo:
    """What a datamodule tells the model about one modality."""

    shape: tuple[int, ...]
    train_inputs: Tensor


class Backbone(nn.Module):
    """An encoder with a known output width. Frozen unless ``trainable``: frozen ones get no gradient, stay in eval
    mode and are rebuilt rather than saved in checkpoints."""

    out_dim: int
    trainable: bool = False


class Standardize(Backbone):
    """The fixed per-feature standardisation used as the backbone of tabular views (mfeat).

    Mean and standard deviation are measured once on the training inputs of the modality, so they are a deterministic
    function of the data split and need not be checkpointed. Constant features keep unit scale instead of dividing by 0.
    """

    def __init__(self, mean: Tensor, std: Tensor):
        super().__init__()
        self.out_dim = mean.numel()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", torch.where(std > 0, std, torch.ones_like(std)).float())

    @classmethod
    def fit(cls, info: ModalityInfo) -> "Standardize":
        x = info.train_inputs.flatten(1).double()
        return cls(x.mean(0), x.std(0))

    def forward(self, x: Tensor) -> Tensor:
        return (x.flatten(1).float() - self.mean) / self.std


BACKBONES: dict[str, Callable[[ModalityInfo], Backbone]] = {"standardize": Standardize.fit}


def build_backbone(name: str, info: ModalityInfo) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {sorted(BACKBONES)}")
    backbone = BACKBONES[name](info)
    if not backbone.trainable:
        backbone.requires_grad_(False).eval()
    return backbone


class ProjectionHead(nn.Module):
    """Trainable head: Linear → GELU → Linear. LayerNorm-free and BatchNorm-free, so a sample's embedding never
    depends on the rest of its batch (DDP and eval give the same result)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
