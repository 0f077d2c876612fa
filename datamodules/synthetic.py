"""Synthetic modalities with a known shared latent, the kind of ground truth CentroBind (arXiv 2410.02086) evaluates
on: every modality observes one shared latent through its own random nonlinear map, beside a latent of its own and
noise, so how much of the shared content a binding recovers can be measured against the truth.

Generative model, with s = ``shared_dim``, p = ``private_dim``, H = ``hidden_dim``, C = ``classes``, d_m and τ_m the
``feature_dim`` and ``noise`` of modality m, σ = ``class_spread``; instance i (0 ≤ i < ``instances``) has class
y_i = i mod C, so class sizes differ by at most one:

    μ_c = g_c / ‖g_c‖,                     g_c ~ N(0, I_s)          class means on the unit sphere of R^s
    z_i = μ_{y_i} + σ ε_i,                 ε_i ~ N(0, I_s)          the shared latent
    z_{i,m} ~ N(0, I_p)                                             modality m's private latent
    f_m(u) = A_m tanh(W_m u + b_m),        W_m ~ N(0, 1/(s+p)), b_m ~ N(0, 1), A_m ~ N(0, 1/H)   (H hidden units)
    x_{i,m} = (f_m([z_i; z_{i,m}]) − a_m) / r_m + τ_m η_{i,m},      η_{i,m} ~ N(0, I_{d_m})

where a_m and r_m are the mean and standard deviation of each output of f_m over all instances, so every noiseless
feature has unit variance and τ_m is the noise-to-signal ratio of a feature. Everything is drawn from ``data_seed``:
one generator for the classes and the shared latent, one per modality (keyed by its name) for its private latent, its
map and its noise, so a modality's draws do not depend on the other modalities, and changing a modality's noise only
rescales the same η. The instances are divided among the configured datasets (disjoint, with mfeat's class-prior
shift) and split train/val/test stratified by class, from ``split_seed`` alone (``datamodules.mfeat.assign_instances``).
"""

import math
import zlib
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from brokenbind.errors import ConfigError
from datamodules.base import PairedDataModule, TensorDictDataset
from datamodules.mfeat import assign_instances
from datamodules.splits import check_split_fractions


class Sample(NamedTuple):
    """Every instance of the data, rows aligned by global instance id."""

    features: dict[str, np.ndarray]  # modality -> (instances, feature_dim) float32
    labels: np.ndarray  # (instances,) int64
    shared: np.ndarray  # (instances, shared_dim)
    private: dict[str, np.ndarray]  # modality -> (instances, private_dim)


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{key} must be at least {low}, got {value}")


def _finite_non_negative(key: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{key} must be finite and at least 0, got {value}")


def _per_modality(key: str, value: float | dict[str, float], names: list[str]) -> dict[str, float]:
    """One value per modality: ``value`` for each, or the dict, which must name exactly the modalities."""
    if not isinstance(value, dict):
        return dict.fromkeys(names, value)
    if sorted(value) != sorted(names):
        raise ConfigError(
            f"{key} per modality must name exactly the modalities {sorted(names)}, got {sorted(value)}; or give one "
            "value for all"
        )
    return {m: value[m] for m in names}


class SyntheticDataModule(PairedDataModule):
    """Synthetic instances with a shared latent seen by every modality (the module docstring's model), divided into
    several datasets of disjoint instances, each observing the modalities its config lists.

    Args:
        modalities: how many modalities (named m0, m1, ...), or their names; at least two.
        shared_dim: dimension s of the shared latent.
        private_dim: dimension p of each modality's private latent (0: none).
        feature_dim: features per modality: one for all, or a dict naming every modality.
        noise: noise-to-signal ratio τ of each feature: one for all, or a dict naming every modality.
        classes: number of classes C; their means lie on the unit sphere of the shared space.
        instances: number of instances in all datasets together.
        class_spread: standard deviation σ of the shared latent around its class mean, per dimension.
        hidden_dim: hidden units of each modality's random map.
        data_seed: seed of the data (latents, maps, noise), independent of the split and of the training seed.
        class_shift: as ``MfeatDataModule``'s: 0 gives every dataset the same class prior, 1 each dataset only its
            own block of classes.
        split_fractions: train / val / test fractions inside each dataset, stratified by class.
        split_seed: seed of the division into datasets and splits.
    """

    def __init__(
        self,
        modalities: int | list[str] = 4,
        shared_dim: int = 8,
        private_dim: int = 4,
        feature_dim: int | dict[str, int] = 32,
        noise: float | dict[str, float] = 0.1,
        classes: int = 10,
        instances: int = 2000,
        class_spread: float = 0.5,
        hidden_dim: int = 64,
        data_seed: int = 0,
        class_shift: float = 0.0,
        split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        split_seed: int = 0,
        **kwargs,
    ):
        """``kwargs`` are ``PairedDataModule``'s (datasets, pivot, flows, batch sizes, sampling, ...)."""
        names = [f"m{k}" for k in range(modalities)] if isinstance(modalities, int) else list(modalities)
        if len(names) < 2 or len(set(names)) < len(names) or not all(names):
            raise ConfigError(
                f"modalities must be a count of at least 2 or a list of two or more distinct names, got {modalities}"
            )
        minimum = {"shared_dim": (shared_dim, 1), "private_dim": (private_dim, 0), "hidden_dim": (hidden_dim, 1),
                   "classes": (classes, 2), "data_seed": (data_seed, 0), "split_seed": (split_seed, 0)}  # fmt: skip
        for key, (value, low) in minimum.items():
            _at_least(key, value, low)
        if instances < classes:
            raise ConfigError(f"instances must be at least classes ({classes}), one per class, got {instances}")
        self.feature_dims = _per_modality("feature_dim", feature_dim, names)
        self.noises = _per_modality("noise", noise, names)
        for m in names:  # an error names the key as given: feature_dim, or feature_dim.m1 for a dict's entry
            _at_least(f"feature_dim.{m}" if isinstance(feature_dim, dict) else "feature_dim", self.feature_dims[m], 1)
            _finite_non_negative(f"noise.{m}" if isinstance(noise, dict) else "noise", self.noises[m])
        _finite_non_negative("class_spread", class_spread)
        if not 0.0 <= class_shift <= 1.0:
            raise ConfigError(f"class_shift must lie in [0, 1], got {class_shift}")
        self.available_modalities = tuple(names)  # before the base's validation, which checks the datasets against it
        self.shared_dim, self.private_dim, self.hidden_dim = shared_dim, private_dim, hidden_dim
        self.classes, self.instances, self.class_spread = classes, instances, class_spread
        self.data_seed, self.class_shift, self.split_seed = data_seed, class_shift, split_seed
        self.split_fractions = check_split_fractions(split_fractions)
        self._sample: Sample | None = None  # generated once, on first use
        self._ids: dict[str, dict[str, np.ndarray]] | None = None  # the assignment, made once for all splits
        super().__init__(**kwargs)

    def sample(self) -> Sample:
        """Every instance: features, labels and latents (the module docstring's model)."""
        if self._sample is not None:
            return self._sample
        rng = np.random.default_rng([self.data_seed, 0])
        labels = np.arange(self.instances, dtype=np.int64) % self.classes
        means = rng.standard_normal((self.classes, self.shared_dim))
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        shared = means[labels] + self.class_spread * rng.standard_normal((self.instances, self.shared_dim))
        features, private = {}, {}
        inputs = self.shared_dim + self.private_dim
        for m in self.available_modalities:
            rng = np.random.default_rng([self.data_seed, 1, zlib.crc32(m.encode())])
            private[m] = rng.standard_normal((self.instances, self.private_dim))
            w = rng.standard_normal((inputs, self.hidden_dim)) / math.sqrt(inputs)
            b = rng.standard_normal(self.hidden_dim)
            a = rng.standard_normal((self.hidden_dim, self.feature_dims[m])) / math.sqrt(self.hidden_dim)
            clean = np.tanh(np.concatenate([shared, private[m]], axis=1) @ w + b) @ a
            clean = (clean - clean.mean(0)) / clean.std(0)
            noisy = clean + self.noises[m] * rng.standard_normal(clean.shape)
            features[m] = noisy.astype(np.float32)
        self._sample = Sample(features, labels, shared, private)
        return self._sample

    def latents(self, index: Tensor | np.ndarray) -> tuple[Tensor, dict[str, Tensor]]:
        """The ground truth of the instances with global ids ``index`` (a batch's or a split's ``index``), rows in
        that order: their shared latents (n, shared_dim) and each modality's private latents (n, private_dim)."""
        sample, rows = self.sample(), np.asarray(index)
        private = {m: torch.from_numpy(z[rows]).float() for m, z in sample.private.items()}
        return torch.from_numpy(sample.shared[rows]).float(), private

    def assignment(self) -> dict[str, dict[str, np.ndarray]]:
        """Instance ids per dataset and split: disjoint, a function of the labels and the split settings only."""
        return assign_instances(
            self.sample().labels, list(self.datasets), self.class_shift, self.split_fractions, self.split_seed
        )

    def load_split(self, dataset: str, split: str, modalities: list[str]) -> TensorDictDataset:
        features, labels, _, _ = self.sample()
        if self._ids is None:
            self._ids = self.assignment()
        ids = self._ids[dataset][split]
        return TensorDictDataset(
            {m: torch.from_numpy(features[m][ids]) for m in modalities},
            index=torch.from_numpy(ids),
            label=torch.from_numpy(labels[ids]),
        )
