"""Imputation: predict the missing modality's backbone features from the pivot's, then train on completed rows.

The missing-view baseline of incomplete multi-view learning (COMPLETER, Lin et al., CVPR 2021, §3.2 "dual
prediction": a mapping from one view's representation to the other's, trained on the instances that observe both,
fills in the view an instance lacks). Here the mapping is a ridge regression on frozen backbone features (the
source leaves the predictor open; a closed-form ridge is exact, deterministic and cheap), fitted once at the start of
fit on the training rows of every dataset observing both the pivot and the target; its ridge λ is chosen from
``ridges`` by the mean squared error on the validation rows of the same datasets (never the hidden ones). Each
training batch then gets the target's features predicted from its pivot's, the target's head embeds them like real
ones, and the method trains as the oracle does (``FABind`` on every pair a dataset now holds, the (query, imputed
target) pair included). Chains of datasets impute level by level (pivot → bridge modality → target).

``fit_on="all"`` (preset ``pivot_ceiling``) fits the regressor on the real pivot-target pairs of *every* dataset,
including those whose target is hidden: the target's best linear prediction from the pivot, with information no
method may use. It is an analysis row, not a method: how far training against a pivot-derived target can go.
"""

from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from brokenbind.errors import ConfigError
from brokenbind.methods.base import Encoder, Features, next_level
from brokenbind.methods.fabind import FABind

DEFAULT_RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def fit_ridge(x: Tensor, y: Tensor, ridge: float) -> tuple[Tensor, Tensor, Tensor]:
    """Ridge regression with intercept, in float64: returns (mean of x, W, mean of y) with
    W = (X̄ᵀX̄/n + λI)⁻¹ X̄ᵀȲ/n on centred X̄, Ȳ, so that λ is in units of feature variance."""
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc / len(x) + ridge * torch.eye(x.shape[1], dtype=x.dtype)
    return mx, torch.linalg.solve(gram, xc.T @ yc / len(x)), my


def predict_ridge(model: tuple[Tensor, Tensor, Tensor], x: Tensor) -> Tensor:
    mx, w, my = model
    return ((x.double() - mx.to(x.device)) @ w.to(x.device) + my.to(x.device)).to(x.dtype)


class Impute(FABind):
    """Fine-tuning on rows completed by a pivot → target regressor (module docstring).

    Args:
        ridges: the λ grid (in units of feature variance) the validation error chooses from.
        fit_on: ``observed`` (the method: datasets observing both pivot and target) or ``all`` (the pivot ceiling:
            every dataset, hidden targets included).
        anchor, logit_scale, learn_logit_scale, modality_scales: as ``FABind``.
    """

    name = "impute"

    def __init__(
        self,
        ridges: tuple[float, ...] = DEFAULT_RIDGES,
        fit_on: Literal["observed", "all"] = "observed",
        anchor: str | None = None,
        logit_scale: float = 10.0,
        learn_logit_scale: bool = False,
        modality_scales: dict[str, float] | None = None,
    ):
        super().__init__(anchor, logit_scale, learn_logit_scale, modality_scales)
        if not ridges or min(ridges) < 0:
            raise ConfigError(f"ridges must be a non-empty list of non-negative values, got {list(ridges)}")
        if fit_on not in ("observed", "all"):
            raise ConfigError(f"fit_on must be one of ['observed', 'all'], got {fit_on!r}")
        self.ridges, self.fit_on = tuple(ridges), fit_on
        self.name = "pivot_ceiling" if fit_on == "all" else "impute"  # what its messages and result rows call it
        # (dataset, pivot, target) in the order they apply; one regressor per (pivot, target)
        self.steps: list[tuple[str, str, str]] = []
        self.regressors: dict[tuple[str, str], tuple[Tensor, Tensor, Tensor]] = {}
        self.chosen_ridge: dict[tuple[str, str], float] = {}

    def prepare(self, encode: Encoder, datasets: dict[str, list[str]]) -> None:
        self.steps = plan(datasets)
        if not self.steps:
            raise ConfigError("impute found no dataset lacking a modality that a shared pivot links it to")
        for pivot, target in dict.fromkeys((p, t) for _, p, t in self.steps):
            holders = [d for d, mods in datasets.items() if {pivot, target} <= set(mods)]
            fit = list(datasets) if self.fit_on == "all" else holders
            train = [encode(d, "train", [pivot, target]) for d in fit]
            val = [encode(d, "val", [pivot, target]) for d in holders]
            x, y = (torch.cat([f[m] for f in train]) for m in (pivot, target))
            vx, vy = (torch.cat([f[m] for f in val]) for m in (pivot, target))
            errors = {r: (predict_ridge(fit_ridge(x, y, r), vx) - vy).pow(2).mean().item() for r in self.ridges}
            best = min(errors, key=errors.__getitem__)
            self.regressors[pivot, target], self.chosen_ridge[pivot, target] = fit_ridge(x, y, best), best
            rank_zero_info(
                f"{self.name}: {pivot}→{target} ridge regressor on {len(x)} training rows of {fit}, λ = {best:g} "
                f"(validation MSE {errors[best]:.4g}; {', '.join(f'{r:g}: {e:.4g}' for r, e in errors.items())})"
            )

    def complete(self, features: Features) -> Features:
        if not self.regressors:
            raise ConfigError("impute has no fitted regressor: it trains only under fit (prepare runs at fit start)")
        out = {ds: dict(mods) for ds, mods in features.items()}
        for ds, pivot, target in self.steps:
            out[ds][target] = predict_ridge(self.regressors[pivot, target], out[ds][pivot])
        return out


def plan(datasets: dict[str, list[str]]) -> list[tuple[str, str, str]]:
    """(dataset, pivot, target) imputation steps: every modality a dataset lacks and reaches through shared
    modalities, level by level along the shortest chains (a step's pivot may be imputed by an earlier level)."""
    steps = []
    for ds, mods in datasets.items():
        have = set(mods)
        while level := next_level(ds, have, datasets):
            steps += [(ds, pivot, target) for target, (_, pivot) in level.items()]
            have |= set(level)
    return steps
