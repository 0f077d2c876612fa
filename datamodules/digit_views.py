"""Digit views: scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes), cut into instance-aligned views.

Each image yields five views of the same instance: ``top`` and ``bottom`` (rows 0-3 and 4-7, 32 pixels each),
``left`` and ``right`` (columns 0-3 and 4-7) and ``profile`` (the 8 row sums and 8 column sums). Retrieving one half
from another is instance-level (the other half of the same drawing is the one relevant item) and not a linear
function of the query: it needs the digit's class and its writer's style. The data ship inside the scikit-learn wheel
(UCI optdigits test set), so nothing is downloaded. Instances are divided among datasets and splits exactly as for
mfeat (``MfeatDataModule``: disjoint datasets, ``class_shift``, stratified 60/20/20 split, ``split_seed``).
"""

from functools import cache

import numpy as np

from datamodules.mfeat import MfeatDataModule

VIEWS = {"top": 32, "bottom": 32, "left": 32, "right": 32, "profile": 16}


@cache
def load_digit_views() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every view (float32, one row per image) and the labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return cut_views(digits.images.astype(np.float32)), digits.target.astype(np.int64)  # (1797, 8, 8), values 0-16


def cut_views(images: np.ndarray) -> dict[str, np.ndarray]:
    """The five views of (N, H, W) images: top and bottom halves, left and right halves, row and column sums."""
    h, w = images.shape[1] // 2, images.shape[2] // 2
    return {
        "top": images[:, :h, :].reshape(len(images), -1),
        "bottom": images[:, h:, :].reshape(len(images), -1),
        "left": images[:, :, :w].reshape(len(images), -1),
        "right": images[:, :, w:].reshape(len(images), -1),
        "profile": np.concatenate([images.sum(2), images.sum(1)], axis=1),
    }


class DigitViewsDataModule(MfeatDataModule):
    """Several disjoint datasets of scikit-learn digits, each observing the views its config lists.

    Args: those of ``MfeatDataModule`` (``class_shift``, ``split_fractions``, ``split_seed``, ``train_fraction``,
    the pretraining pool, and the pairing).
    """

    available_modalities = tuple(VIEWS)

    def views(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return load_digit_views()
