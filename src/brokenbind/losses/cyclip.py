"""CyCLIP symmetry terms (Goel et al. 2022; BrokenBind Eqs. 11-12), from raw cosines with no temperature.

Normaliser: (1/N)·Σ_jk, as the official code computes it (mean over N² entries times N) and as BrokenBind restates
it; several re-implementations drop the ×N. Computed in fp32: squares of bf16 cosines are not on autocast's fp32 list.
"""

from torch import Tensor

from brokenbind.losses.precision import fp32


@fp32
def cross_modal_cyclic(x: Tensor, y: Tensor) -> Tensor:
    """L_X-mod (Eq. 11): (1/N) Σ_ij (⟨x_i, y_j⟩ − ⟨x_j, y_i⟩)²; zero iff the x–y similarity matrix is symmetric."""
    sim = x.float() @ y.float().T
    return (sim - sim.T).pow(2).sum() / len(x)


@fp32
def in_modal_cyclic(x: Tensor, y: Tensor) -> Tensor:
    """L_X-data (Eq. 12): (1/N) Σ_ij (⟨x_i, x_j⟩ − ⟨y_i, y_j⟩)²; zero iff both share one similarity geometry."""
    x, y = x.float(), y.float()
    return (x @ x.T - y @ y.T).pow(2).sum() / len(x)
