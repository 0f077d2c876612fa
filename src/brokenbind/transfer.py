"""Carrying a pivot → target map from the dataset that observes the target to the dataset that is scored.

A regressor from the pivot's features to the target's is fitted on a *supporting* dataset (it observes both) and
applied to a *scored* dataset (it observes the pivot only). The two datasets differ (other instances, other class
proportions), so the map fitted on one is not the best map for the other. Each correction below uses the scored
dataset's own pivot rows, which are observed, never its hidden target:

- ``importance``: covariate-shift correction (Shimodaira 2000). The supporting rows are weighted by the density ratio
  p_scored(b) / p_supporting(b) of the pivot, estimated discriminatively by a logistic-regression classifier that tells
  the two datasets' pivot rows apart (Bickel, Brückner & Scheffer, ICML 2007): w(b) = P(scored | b) / P(supporting | b)
  · n_supporting / n_scored. Under label shift with class-clustered pivots it approximates the class-ratio weights of
  BBSE (Lipton et al. 2018) without labels.
- ``coral``: CORAL (Sun, Feng & Saenko, AAAI 2016, Eq. 1-2): the scored pivot rows are whitened with their own
  covariance and re-coloured with the supporting dataset's (means moved likewise), so that the regressor sees inputs
  with the second-order statistics it was fitted on.
- ``sinkhorn``: entropic optimal transport (Cuturi 2013) between the scored and the supporting pivot rows (the POT
  package's ``ot.sinkhorn``, squared Euclidean cost scaled to a maximum of 1); each scored row gets the barycentric
  target Σ_j P_ij y_j / Σ_j P_ij of the supporting rows it is coupled to, and the regressor is fitted on the supporting
  pairs together with these pseudo pairs (cycle-free pseudo pairs in the spirit of Ex-MCR's, arXiv 2310.08884 §3.2).

The map itself is ``ridge`` (linear, with intercept) or ``kernel``: kernel ridge regression with a Gaussian (RBF)
kernel (Schölkopf & Smola 2002, §4), the supporting rows as its memory. A nonlinear map is less sensitive to the
shift than a linear one: a linear map fitted on the supporting dataset's class mix is the best *global* linear fit
for that mix, while a kernel map fits each region of the pivot space from the supporting rows near it.

Everything is fitted in float64 on the CPU, once, before training.
"""

from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

Transfer = Literal["none", "importance", "coral", "sinkhorn"]
TRANSFERS = ("none", "importance", "coral", "sinkhorn")
Regressor = Literal["ridge", "kernel"]
REGRESSORS = ("ridge", "kernel")


class Ridge(NamedTuple):
    """A fitted ridge regressor: predictions are (x − x_mean) @ weight + y_mean."""

    x_mean: Tensor
    weight: Tensor
    y_mean: Tensor


def fit_ridge(x: Tensor, y: Tensor, ridge: float, sample_weight: Tensor | None = None) -> Ridge:
    """Ridge regression with intercept in float64, W = (X̄ᵀDX̄ + λI)⁻¹ X̄ᵀDȲ with D the sample weights normalised to
    sum 1 (uniform by default) and X̄, Ȳ centred on the weighted means, so that λ is in units of feature variance."""
    x, y = x.double(), y.double()
    w = torch.full((len(x),), 1.0 / len(x), dtype=x.dtype) if sample_weight is None else sample_weight.double()
    w = w / w.sum()
    mx, my = w @ x, w @ y
    xc, yc = x - mx, y - my
    gram = (xc * w[:, None]).T @ xc + ridge * torch.eye(x.shape[1], dtype=x.dtype)
    return Ridge(mx, torch.linalg.solve(gram, (xc * w[:, None]).T @ yc), my)


def predict_ridge(model: Ridge, x: Tensor) -> Tensor:
    mx, w, my = (t.to(x.device) for t in model)
    return ((x.double() - mx) @ w + my).to(x.dtype)


class KernelRidge(NamedTuple):
    """A fitted Gaussian-kernel ridge regressor: predictions are k(x, rows) @ dual + y_mean with
    k(x, z) = exp(−gamma·‖x − z‖²)."""

    rows: Tensor
    dual: Tensor
    y_mean: Tensor
    gamma: float


def rbf(x: Tensor, z: Tensor, gamma: float) -> Tensor:
    return torch.exp(-gamma * torch.cdist(x, z).square())


def fit_kernel_ridge(
    x: Tensor, y: Tensor, ridge: float, gamma: float, sample_weight: Tensor | None = None
) -> KernelRidge:
    """Kernel ridge regression in float64 on targets centred on their (weighted) mean: the dual coefficients minimise
    Σ_i w_i ‖y_i − k_i·α‖² / Σw + λ αᵀKα, i.e. α = (D K + λI)⁻¹ D Ȳ with D the weights normalised to sum 1
    (uniform: (K + nλI)⁻¹ Ȳ, scikit-learn's KernelRidge with alpha = nλ)."""
    x, y = x.double(), y.double()
    w = torch.full((len(x),), 1.0 / len(x), dtype=x.dtype) if sample_weight is None else sample_weight.double()
    w = w / w.sum()
    y_mean = w @ y
    system = w[:, None] * rbf(x, x, gamma) + ridge * torch.eye(len(x), dtype=x.dtype)
    return KernelRidge(x, torch.linalg.solve(system, w[:, None] * (y - y_mean)), y_mean, gamma)


def predict_kernel_ridge(model: KernelRidge, x: Tensor) -> Tensor:
    rows, dual, y_mean = (t.to(x.device) for t in model[:3])
    return (rbf(x.double(), rows, model.gamma) @ dual + y_mean).to(x.dtype)


def fit_map(
    regressor: Regressor, x: Tensor, y: Tensor, ridge: float, gamma: float, sample_weight: Tensor | None = None
) -> "Ridge | KernelRidge":
    if regressor == "kernel":
        return fit_kernel_ridge(x, y, ridge, gamma, sample_weight)
    return fit_ridge(x, y, ridge, sample_weight)


def predict(model: "Ridge | KernelRidge", x: Tensor) -> Tensor:
    return predict_kernel_ridge(model, x) if isinstance(model, KernelRidge) else predict_ridge(model, x)


def choose(
    regressor: Regressor, x: Tensor, y: Tensor, vx: Tensor, vy: Tensor, grid: list[tuple[float, float]]
) -> tuple[tuple[float, float], dict[tuple[float, float], float]]:
    """The (λ, γ) of ``grid`` whose ``regressor`` fitted on (``x``, ``y``) has the least mean squared error on the
    validation pairs (``vx``, ``vy``), and every candidate's error (γ is unused by the ridge)."""
    if regressor == "kernel":
        errors = kernel_validation_errors(x, y, vx, vy, grid)
    else:
        errors = {(r, g): (predict_ridge(fit_ridge(x, y, r), vx) - vy).pow(2).mean().item() for r, g in grid}
    return min(errors, key=errors.__getitem__), errors


def kernel_validation_errors(
    x: Tensor, y: Tensor, vx: Tensor, vy: Tensor, grid: list[tuple[float, float]]
) -> dict[tuple[float, float], float]:
    """Validation mean squared error of ``fit_kernel_ridge`` (uniform weights) for every (λ, γ) of ``grid``.

    The same dual coefficients, (K/n + λI)⁻¹ Ȳ/n = (K + nλI)⁻¹ Ȳ, at less cost: the squared distances are computed
    once for every width, each kernel once for every λ, and each system is solved by Cholesky (K + nλI is positive
    definite), half the work of the general solve."""
    x, y, vx, vy = x.double(), y.double(), vx.double(), vy.double()
    distances, val_distances = torch.cdist(x, x).square(), torch.cdist(vx, x).square()
    y_mean = y.mean(0)
    errors, eye = {}, torch.eye(len(x), dtype=x.dtype)
    for gamma in dict.fromkeys(g for _, g in grid):
        kernel, val_kernel = torch.exp(-gamma * distances), torch.exp(-gamma * val_distances)
        for ridge in (r for r, g in grid if g == gamma):
            factor = torch.linalg.cholesky(kernel + len(x) * ridge * eye)
            prediction = val_kernel @ torch.cholesky_solve(y - y_mean, factor) + y_mean
            errors[ridge, gamma] = (prediction - vy).pow(2).mean().item()
    return errors


def importance_weights(supporting: Tensor, scored: Tensor, inverse_regularisation: float = 0.01) -> Tensor:
    """Density ratio p_scored / p_supporting at each supporting row (module docstring), normalised to mean 1.

    ``inverse_regularisation`` is scikit-learn's C of the L2-penalised logistic regression on standardised rows:
    small values keep the weights near 1 (a classifier that separates the datasets perfectly would give weights 0 and
    ∞)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = torch.cat([supporting, scored]).double().cpu().numpy()
    side = np.r_[np.zeros(len(supporting)), np.ones(len(scored))]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=inverse_regularisation, max_iter=5000))
    log_odds = model.fit(x, side).decision_function(x[: len(supporting)])
    weights = torch.from_numpy(np.exp(log_odds) * len(supporting) / len(scored))
    return weights / weights.mean()


def coral(scored: Tensor, supporting: Tensor, eps: float = 1.0) -> tuple[Tensor, Tensor]:
    """CORAL's affine map (A, c), x ↦ x A + c, taking rows of the scored dataset to the supporting dataset's mean and
    covariance: A = C_s^{-1/2} C_t^{1/2}, c = μ_t − μ_s A, with C + eps·I on both sides (the original's regulariser,
    eps = 1 on standardised features)."""

    def power(rows: Tensor, p: float) -> Tensor:
        cov = torch.cov(rows.T) + eps * torch.eye(rows.shape[1], dtype=torch.float64)
        values, vectors = torch.linalg.eigh(cov)
        return vectors @ torch.diag(values.clamp_min(1e-12) ** p) @ vectors.T

    scored, supporting = scored.double().cpu(), supporting.double().cpu()
    matrix = power(scored, -0.5) @ power(supporting, 0.5)
    return matrix, supporting.mean(0) - scored.mean(0) @ matrix


def sinkhorn_targets(scored: Tensor, supporting: Tensor, supporting_target: Tensor, reg: float = 0.05) -> Tensor:
    """Barycentric targets of the scored pivot rows under the entropic OT plan to the supporting pivot rows (uniform
    marginals, squared Euclidean cost divided by its maximum, entropic regularisation ``reg``)."""
    import ot

    a, b = scored.double().cpu().numpy(), supporting.double().cpu().numpy()
    cost = ot.dist(a, b)
    cost /= cost.max()
    plan = ot.sinkhorn(np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b)), cost, reg)
    plan = torch.from_numpy(plan / plan.sum(1, keepdims=True))
    return (plan @ supporting_target.double().cpu()).to(supporting_target.dtype)


class PivotMap(NamedTuple):
    """A pivot → target regressor for one scored dataset, after CORAL's affine input map when it has one."""

    model: Ridge | KernelRidge
    align: tuple[Tensor, Tensor] | None = None

    def to(self, device: torch.device) -> "PivotMap":
        """This map with its tensors on ``device``: moved once, where a call would copy them every batch."""
        if self.model[0].device == device:
            return self
        model = type(self.model)(*(t.to(device) if isinstance(t, Tensor) else t for t in self.model))
        return PivotMap(model, None if self.align is None else tuple(t.to(device) for t in self.align))

    def __call__(self, x: Tensor) -> Tensor:
        if self.align is not None:
            matrix, shift = (t.to(x.device) for t in self.align)
            x = (x.double() @ matrix + shift).to(x.dtype)
        return predict(self.model, x)


def fit_pivot_map(
    x: Tensor,
    y: Tensor,
    scored: Tensor,
    transfer: Transfer,
    ridge: float,
    regressor: Regressor = "ridge",
    gamma: float = 0.0,
    sinkhorn_reg: float = 0.05,
) -> PivotMap:
    """The ``regressor`` fitted on supporting pairs (``x`` pivot, ``y`` target) and carried to the ``scored``
    dataset's pivot rows by ``transfer`` (module docstring)."""
    if transfer == "importance":
        return PivotMap(fit_map(regressor, x, y, ridge, gamma, importance_weights(x, scored)))
    if transfer == "sinkhorn":
        pseudo = sinkhorn_targets(scored, x, y, sinkhorn_reg)
        return PivotMap(fit_map(regressor, torch.cat([x, scored]), torch.cat([y, pseudo]), ridge, gamma))
    return PivotMap(fit_map(regressor, x, y, ridge, gamma), coral(scored, x) if transfer == "coral" else None)
