"""Tabular feature vectors (mfeat views, precomputed ``.npy`` features)."""

import torch
from torch import Tensor

from brokenbind.backbones.base import Backbone
from brokenbind.errors import ConfigError
from brokenbind.modality import ModalityInfo

# What to name in model.backbones per modality kind (the default, standardize, is for feature vectors only).
CHOICES = {
    "image": "timm, open_clip (tower: image), hf or import",
    "text": "minilm, hf, open_clip (tower: text) or import",
    "audio": "logmel_cnn (trainable), hf or import",
}


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
        """From the training inputs, or from their statistics (``train_stats``: what an array file gives
        without loading every row)."""
        if info.kind != "features":
            raise ConfigError(
                f"the standardize backbone (the default) encodes feature vectors; modality kind {info.kind!r} needs a "
                f"backbone named in model.backbones: {CHOICES.get(info.kind, 'import')}"
            )
        if info.train_stats is not None:
            return cls(*info.train_stats)
        if info.train_inputs is None:
            raise ConfigError("the standardize backbone needs the modality's training inputs; the data gives none")
        x = info.train_inputs.flatten(1).double()
        return cls(x.mean(0), x.std(0))

    def forward(self, x: Tensor) -> Tensor:
        return (x.flatten(1).float() - self.mean) / self.std


class Identity(Backbone):
    """Precomputed features used as they are (e.g. ``.npy`` embeddings of a user's own encoder)."""

    def __init__(self, info: ModalityInfo):
        super().__init__()
        if info.shape is None:
            raise ValueError(f"the identity backbone needs fixed-size feature vectors, got a {info.kind!r} modality")
        self.out_dim = int(torch.Size(info.shape).numel())

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1).float()
