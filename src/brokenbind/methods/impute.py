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
from brokenbind.graph import PairingGraph
from brokenbind.methods.base import Encoder, Features
from brokenbind.methods.fabind import FABind
from brokenbind.transfer import (
    REGRESSORS,
    TRANSFERS,
    PivotMap,
    Regressor,
    Transfer,
    choose,
    fit_pivot_map,
)

DEFAULT_RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
# kernel ridge: λ against K/n (eigenvalues ≤ 1), and the RBF width as multiples of 1 / median squared distance
KERNEL_RIDGES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
KERNEL_WIDTHS = (0.5, 1.0, 2.0, 4.0)
KERNEL_ROWS = 4096  # the kernel map's memory: at most this many supporting rows (O(n³) fit, O(n) per prediction)
# the (λ, width) grid is searched on at most this many of the memory's rows: 20 candidates at 4,096 rows cost 8× one at
# 2,048 each; λ is per row (against K/n), so the choice carries to the whole memory, erring towards more smoothing
KERNEL_GRID_ROWS = 2048


def at_most(rows: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """At most ``rows`` of the pairs (``x``, ``y``), drawn with a fixed seed (all of them, in order, if fewer)."""
    if len(x) <= rows:
        return x, y
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:rows]
    return x[keep], y[keep]


class PivotImputer:
    """Pivot → target maps on frozen backbone features, one per (dataset, pivot, target) step of ``plan``.

    Fitted once before training (``fit``) on the training rows of the datasets observing both modalities (of every
    dataset with ``fit_on="all"``), a ``ridge`` (linear) or ``kernel`` (Gaussian kernel ridge, on at most
    ``KERNEL_ROWS`` rows drawn with a fixed seed) regressor whose λ (and kernel width) is chosen from a grid by the
    mean squared error on the validation rows of the observing datasets (never the hidden ones; the kernel's grid
    fitted on at most ``KERNEL_GRID_ROWS`` of its rows), then carried to the
    dataset that lacks the target by ``transfer`` (``brokenbind.transfer``: ``none``, ``importance``, ``coral`` or
    ``sinkhorn``) using that dataset's own training rows of the pivot (imputed ones along a chain). ``complete`` fills
    in the missing modalities.
    """

    def __init__(
        self,
        name: str,
        ridges: tuple[float, ...] = DEFAULT_RIDGES,
        fit_on: Literal["observed", "all"] = "observed",
        transfer: Transfer = "none",
        regressor: Regressor = "ridge",
    ):
        if not ridges or min(ridges) < 0:
            raise ConfigError(f"ridges must be a non-empty list of non-negative values, got {list(ridges)}")
        if fit_on not in ("observed", "all"):
            raise ConfigError(f"fit_on must be one of ['observed', 'all'], got {fit_on!r}")
        if transfer not in TRANSFERS:
            raise ConfigError(f"transfer must be one of {list(TRANSFERS)}, got {transfer!r}")
        if regressor not in REGRESSORS:
            raise ConfigError(f"regressor must be one of {list(REGRESSORS)}, got {regressor!r}")
        self.name, self.ridges, self.fit_on, self.transfer = name, tuple(ridges), fit_on, transfer
        self.regressor = regressor
        self.steps: list[tuple[str, str, str]] = []  # (dataset, pivot, target) in the order they apply
        self.maps: dict[tuple[str, str, str], PivotMap] = {}
        self.chosen_ridge: dict[tuple[str, str], float] = {}
        self.chosen_gamma: dict[tuple[str, str], float] = {}

    def fit(self, encode: Encoder, graph: PairingGraph) -> None:
        self.steps = graph.steps()
        if not self.steps:
            raise ConfigError(
                f"{self.name} found no dataset lacking a modality that a shared pivot links it to;"
                " every dataset observes every modality it could "
                "reach (one fully paired dataset?): bind it with --method fabind or centrobind"
            )
        pairs: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}
        for pivot, target in dict.fromkeys((p, t) for _, p, t in self.steps):
            holders = graph.holders(pivot, target)
            fit = list(graph.datasets) if self.fit_on == "all" else holders
            train = [encode(d, "train", [pivot, target]) for d in fit]
            val = [encode(d, "val", [pivot, target]) for d in holders]
            x, y = (torch.cat([f[m] for f in train]) for m in (pivot, target))
            if self.regressor == "kernel":
                x, y = at_most(KERNEL_ROWS, x, y)
            pairs[pivot, target] = x, y
            vx, vy = (torch.cat([f[m] for f in val]) for m in (pivot, target))
            searched = at_most(KERNEL_GRID_ROWS, x, y) if self.regressor == "kernel" else (x, y)
            (best, self.chosen_gamma[pivot, target]), errors = choose(self.regressor, *searched, vx, vy, self.grid(x))
            self.chosen_ridge[pivot, target] = best
            rank_zero_info(
                f"{self.name}: {pivot}→{target} {self.regressor} regressor on {len(x)} training rows of {fit}, "
                f"λ = {best:g}{f', γ = {self.chosen_gamma[pivot, target]:.3g}' if self.regressor == 'kernel' else ''} "
                f"(validation MSE {min(errors.values()):.4g} over {len(errors)} candidates"
                f"{f', searched on {len(searched[0])} of the rows' if len(searched[0]) < len(x) else ''})"
            )
        # each dataset's own training rows, completed step by step: what the transfer corrections adapt to
        rows = (
            {ds: encode(ds, "train", list(mods)) for ds, mods in graph.datasets.items()}
            if self.transfer != "none"
            else {}
        )
        for ds, pivot, target in self.steps:
            x, y = pairs[pivot, target]
            scored = rows[ds][pivot] if rows else x
            self.maps[ds, pivot, target] = fit_pivot_map(x, y, scored, self.transfer, self.chosen_ridge[pivot, target],
                                                         self.regressor, self.chosen_gamma[pivot, target])  # fmt: skip
            if rows:
                rows[ds][target] = self.maps[ds, pivot, target](scored)

    def grid(self, x: Tensor) -> list[tuple[float, float]]:
        """(λ, γ) candidates: ``ridges`` alone for the linear map (γ unused); for the kernel map ``KERNEL_RIDGES`` ×
        ``KERNEL_WIDTHS`` / the (lower) median squared distance between supporting rows (the median heuristic)."""
        if self.regressor == "ridge":
            return [(r, 0.0) for r in self.ridges]
        sample = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:1000]].double()
        median = torch.pdist(sample).square().median().item()
        return [(r, w / median) for r in KERNEL_RIDGES for w in KERNEL_WIDTHS]

    def complete(self, features: Features) -> Features:
        if not self.maps:
            raise ConfigError(
                f"{self.name} has no fitted regressor: it trains only under fit (prepare runs at fit start)"
            )
        out = {ds: dict(mods) for ds, mods in features.items()}
        for step in self.steps:
            ds, pivot, target = step
            if ds in out:
                self.maps[step] = self.maps[step].to(out[ds][pivot].device)
                out[ds][target] = self.maps[step](out[ds][pivot])
        return out

    def imputed(self) -> dict[str, set[str]]:
        """Dataset -> the modalities ``complete`` adds to it."""
        out: dict[str, set[str]] = {}
        for ds, _, target in self.steps:
            out.setdefault(ds, set()).add(target)
        return out


class Impute(FABind):
    """Fine-tuning on rows completed by a pivot → target regressor (module docstring).

    Args:
        ridges: the λ grid (in units of feature variance) the validation error chooses from.
        fit_on: ``observed`` (the method: datasets observing both pivot and target) or ``all`` (the pivot ceiling:
            every dataset, hidden targets included).
        transfer: how the regressor is carried to the dataset lacking the target (``brokenbind.transfer``); ``none``
            is the published baseline.
        regressor: ``ridge`` (the baseline: linear) or ``kernel`` (Gaussian kernel ridge; ``ridges`` is then unused,
            the grid is ``KERNEL_RIDGES`` × ``KERNEL_WIDTHS``).
        anchor, logit_scale, learn_logit_scale, modality_scales: as ``FABind``.
    """

    name = "impute"

    def __init__(
        self,
        ridges: tuple[float, ...] = DEFAULT_RIDGES,
        fit_on: Literal["observed", "all"] = "observed",
        transfer: Transfer = "none",
        regressor: Regressor = "ridge",
        anchor: str | None = None,
        logit_scale: float = 10.0,
        learn_logit_scale: bool = False,
        modality_scales: dict[str, float] | None = None,
    ):
        super().__init__(anchor, logit_scale, learn_logit_scale, modality_scales)
        self.name = "pivot_ceiling" if fit_on == "all" else "impute"  # what its messages and result rows call it
        self.imputer = PivotImputer(self.name, ridges, fit_on, transfer, regressor)

    def prepare(self, encode: Encoder, graph: PairingGraph) -> None:
        super().prepare(encode, graph)
        self.imputer.fit(encode, graph)

    def complete(self, features: Features) -> Features:
        return self.imputer.complete(features)

    def pivot_map(self, dataset: str, pivot: str, target: str) -> PivotMap | None:
        return self.imputer.maps.get((dataset, pivot, target))
