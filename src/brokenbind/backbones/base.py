"""The backbone interface: what every per-modality encoder provides to the module and the feature cache."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn


@dataclass(frozen=True)
class ModalityInfo:
    """What a datamodule tells the model about one modality.

    ``kind`` is ``features`` (a float vector per sample), ``image`` (C×H×W float tensor in [0, 1]), ``audio`` (mono
    waveform at ``sample_rate``) or ``text`` (a string); ``shape`` is the per-sample tensor shape (None for text and
    variable-length audio); ``train_inputs`` are the training inputs of a ``features`` modality, for backbones fitted to
    data (standardisation), None otherwise; ``train_stats`` their per-feature mean and standard deviation when the
    inputs are too large to hold (memory-mapped arrays).
    """

    kind: str
    shape: tuple[int, ...] | None = None
    train_inputs: Tensor | None = None
    sample_rate: int | None = None
    train_stats: tuple[Tensor, Tensor] | None = None  # (mean, std) per feature, when train_inputs stay on disk
    name: str | None = None  # the modality's name (the model sets it when it builds the backbone)


class Backbone(nn.Module):
    """An encoder with a known output width.

    Frozen unless ``trainable``: a frozen backbone gets no gradient, stays in eval mode and is rebuilt from its source
    (weights file, data statistics) instead of being saved in checkpoints. Parameters that do require gradients inside
    a frozen backbone (LoRA adapters) are saved. ``fingerprint`` names the exact function the backbone computes
    (model, weights hash, preprocessing) so that cached outputs are never read for another one; None means "do not
    cache".
    """

    out_dim: int
    trainable: bool = False
    lora: bool = False  # LoRA adapters injected (``backbones.lora``): outputs change in training, never cached

    def fingerprint(self) -> str | None:
        return None


def sha256_file(path: str | Path) -> str:
    """sha256 of a file: pins weights files and names them in fingerprints."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
