"""The backbone interface: what every per-modality encoder provides to the module and the feature cache."""

import hashlib
from pathlib import Path

from torch import nn


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
