"""Fashion views: Fashion-MNIST clothing photographs (Zalando; 10 classes: T-shirt, trouser, ..., ankle boot) cut
into instance-aligned views, a field other than handwritten digits.

Why this data: it ships in a Debian package (``dataset-fashion-mnist``, installed by ``make system-deps``; the idx
files land in /usr/share/datasets/fashion-mnist), so nothing is downloaded at run time; its rows are real images of
products, not digits, with instance-level structure (the bottom of a shoe is not a function of its class); and it is
large enough to subsample as mfeat is sized. The first ``per_class`` images of each class of the 10,000-image test
set, 2×2-average-pooled to 14×14 (values 0-255), are cut into the views of ``DigitViewsDataModule``: ``top``,
``bottom``, ``left``, ``right`` (98 values each) and ``profile`` (the 14 row sums and 14 column sums). Instances are
divided among datasets and splits exactly as for mfeat.
"""

import gzip
from functools import cache
from pathlib import Path

import numpy as np

from brokenbind.errors import DataError
from datamodules.digit_views import VIEWS, cut_views
from datamodules.mfeat import MfeatDataModule

ROOT = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip), as uint8: the 16-byte header of images or the 8-byte header of labels skipped."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


@cache
def load_fashion_views(per_class: int = 200) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every view (float32, one row per image) and the labels of the first ``per_class`` test images of each class."""
    images_file, labels_file = ROOT / "t10k-images-idx3-ubyte.gz", ROOT / "t10k-labels-idx1-ubyte.gz"
    if not images_file.exists() or not labels_file.exists():
        raise DataError(
            f"Fashion-MNIST is not installed ({images_file} missing): install the Debian package with "
            "`make system-deps` (apt-get install dataset-fashion-mnist)"
        )
    images, labels = read_idx(images_file).astype(np.float32), read_idx(labels_file).astype(np.int64)
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))
    pooled = images[keep].reshape(len(keep), 14, 2, 14, 2).mean(axis=(2, 4))
    return cut_views(pooled), labels[keep]


class FashionViewsDataModule(MfeatDataModule):
    """Several disjoint datasets of Fashion-MNIST views, each observing the views its config lists.

    Args:
        per_class: images per class (first in file order of the test set).
        **kwargs: those of ``MfeatDataModule`` (``class_shift``, ``split_fractions``, ``split_seed``,
            ``train_fraction``, the pretraining pool, and the pairing).
    """

    available_modalities = tuple(VIEWS)

    def __init__(self, per_class: int = 200, **kwargs):
        self.per_class = per_class
        super().__init__(**kwargs)

    def views(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return load_fashion_views(self.per_class)
