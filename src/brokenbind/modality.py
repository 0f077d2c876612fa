"""What a datamodule tells the model about one modality: a neutral module, so that datamodules and backbones share it
without one importing the other."""

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class ModalityInfo:
    """What a datamodule tells the model about one modality.

    ``kind`` is ``features`` (a float vector per sample), ``image`` (C×H×W float tensor in [0, 1]), ``audio`` (mono
    waveform at ``sample_rate``) or ``text`` (a string); ``shape`` is the per-sample tensor shape (None for text and
    variable-length audio); ``train_inputs`` are the training inputs of a ``features`` modality, for backbones fitted to
    data (standardisation), None otherwise; ``train_stats`` their per-feature mean and standard deviation when the
    inputs are too large to hold (``.npy`` arrays read row by row).
    """

    kind: str
    shape: tuple[int, ...] | None = None
    train_inputs: Tensor | None = None
    sample_rate: int | None = None
    train_stats: tuple[Tensor, Tensor] | None = None  # (mean, std) per feature, when train_inputs stay on disk
    name: str | None = None  # the modality's name (the model sets it when it builds the backbone)
