"""CyCLIP symmetry terms (Goel et al. 2022; BrokenBind Eqs. 11-12), from cosines with no temperature: of the
embeddings as they are (the paper's), or of each modality's rows centred on their batch mean (``centred``).

Normaliser: (1/N)·Σ_jk, as the official code computes it (mean over N² entries times N) and as BrokenBind restates
it; several re-implementations drop the ×N. Computed in fp32: squares of bf16 cosines are not on autocast's fp32 list.
"""

import torch.nn.functional as F
from torch import Tensor

from brokenbind.losses.precision import fp32


@fp32
def cross_modal_cyclic(x: Tensor, y: Tensor, x_full: Tensor | None = None, y_full: Tensor | None = None) -> Tensor:
    """L_X-mod (Eq. 11): (1/N) Σ_ij (⟨x_i, y_j⟩ − ⟨x_j, y_i⟩)²; zero iff the x–y similarity matrix is symmetric.

    Under DDP, i runs over this rank's rows (``x``, ``y``) and j over the gathered ``x_full``, ``y_full``, divided by
    the local batch: the mean over ranks is then the global loss and DDP's gradient is exact.
    """
    x_full = x if x_full is None else x_full
    y_full = y if y_full is None else y_full
    sim = x.float() @ y_full.float().T  # ⟨x_i, y_j⟩
    sim_t = y.float() @ x_full.float().T  # ⟨x_j, y_i⟩
    return (sim - sim_t).pow(2).sum() / len(x)


@fp32
def in_modal_cyclic(x: Tensor, y: Tensor, x_full: Tensor | None = None, y_full: Tensor | None = None) -> Tensor:
    """L_X-data (Eq. 12): (1/N) Σ_ij (⟨x_i, x_j⟩ − ⟨y_i, y_j⟩)²; zero iff both share one similarity geometry.

    Local rows × gathered columns under DDP, as ``cross_modal_cyclic``.
    """
    x_full = x if x_full is None else x_full
    y_full = y if y_full is None else y_full
    return (x.float() @ x_full.float().T - y.float() @ y_full.float().T).pow(2).sum() / len(x)


# Rows closer than this to their batch mean are scaled by 1/CENTRED_EPS instead of normalised: the gradient of a
# normalisation grows as 1/distance, and a modality whose rows have all but met would otherwise get an unbounded one.
# Embeddings are unit rows, so training rows lie far further out and are normalised exactly.
CENTRED_EPS = 1e-3


@fp32
def centred(x: Tensor, x_full: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` and ``x_full`` less the mean of ``x_full`` (the whole batch, gathered under DDP), L2-normalised again:
    a modality's geometry around its own centre. The symmetry terms then compare how rows spread, not how far the
    whole modality sits from the origin: matched on raw cosines, a modality whose rows all point one way (short
    templated sentences in a pretrained text encoder) pulls its partner's rows together with it."""
    mean = x_full.float().mean(0)
    return (
        F.normalize(x.float() - mean, dim=-1, eps=CENTRED_EPS),
        F.normalize(x_full.float() - mean, dim=-1, eps=CENTRED_EPS),
    )
