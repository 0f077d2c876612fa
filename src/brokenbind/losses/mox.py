"""Modality extrapolation (MOX, BrokenBind Eqs. 5-9): pseudo embeddings of a modality a dataset lacks.

Row convention (ours: arXiv 2602.06451 §3.2 does not fix one): F is B×d, one row per sample. For a dataset D1
lacking c and a dataset D2 holding the pivot b and c:
    X-data (Eq. 8):  F~c1 = F_b1 (F_b2)^+ F_c2   any B1, B2: each D1 pivot row written in D2's pivot rows
    X-mod  (Eq. 7):  F~c1 = F_c2 (F_b2)^+ F_b1   needs B1 == B2: it pairs rows of two unpaired batches
    R_Fro  (Eq. 9):  ||X-mod − X-data||²_F       squared, unnormalised, as written
The pseudo-inverse is of the *detached* pivot embeddings and is recomputed every batch (Algorithm 1, line 4).
"""

import torch
from torch import Tensor

from brokenbind.losses.precision import fp32


@fp32
def pivot_pinv(pivot: Tensor, ridge: float = 0.0) -> Tensor:
    """(F)^+ (d×B) of detached pivot embeddings, in fp32.

    ``ridge`` = 0 is the paper's Moore-Penrose inverse; ridge > 0 gives Fᵀ(F Fᵀ + ridge·I)⁻¹, which stays bounded when
    F is ill-conditioned (batch close to the embedding dimension, duplicated rows).
    """
    f = pivot.detach().float()
    if ridge == 0.0:
        return torch.linalg.pinv(f)
    gram = f @ f.T + ridge * torch.eye(len(f), device=f.device)
    return torch.linalg.solve(gram, f).T


@fp32
def x_data(own_pivot: Tensor, other_pivot_pinv: Tensor, other_target: Tensor) -> Tensor:
    """Eq. 8: F_b1 (F_b2)^+ F_c2, B1×d; the contrastive part of MOX uses these (Algorithm 1, step 5)."""
    return own_pivot.float() @ other_pivot_pinv @ other_target.float()


@fp32
def x_mod(own_pivot: Tensor, other_pivot_pinv: Tensor, other_target: Tensor) -> Tensor:
    """Eq. 7: F_c2 (F_b2)^+ F_b1, B1×d; literal row form, so both datasets must contribute equally many rows."""
    if len(own_pivot) != len(other_target):
        raise ValueError(
            f"X-mod (Eq. 7) needs equal per-dataset batch sizes, got {len(own_pivot)} and {len(other_target)}"
        )
    return other_target.float() @ other_pivot_pinv @ own_pivot.float()


@fp32
def frobenius(x_mod_embeddings: Tensor, x_data_embeddings: Tensor) -> Tensor:
    """Eq. 9: R_Fro = ||X-mod − X-data||²_F (squared Frobenius norm, not normalised by B or d)."""
    return (x_mod_embeddings.float() - x_data_embeddings.float()).pow(2).sum()


@fp32
def kernel_transition(own_pivot: Tensor, memory_pivot: Tensor, memory_target: Tensor, temperature: float) -> Tensor:
    """A kernel (soft nearest-neighbour) transition: row i is Σ_k softmax_k(⟨b_i, b'_k⟩ / τ) c'_k, B1×d.

    C-MCR's semantic enhancement (arXiv 2305.14381, §3.2) retrieves the other modality this way from a memory of
    pivot-target pairs; X-data (Eq. 8) is its linear counterpart. τ → 0 copies the nearest pivot's target.
    """
    weights = torch.softmax(own_pivot.float() @ memory_pivot.float().T / temperature, dim=1)
    return weights @ memory_target.float()


@fp32
def recentre(pseudo: Tensor, target_mean: Tensor) -> Tensor:
    """C3's collapse (arXiv 2401.08567, §3) turned into a transport: move the pseudo embeddings' mean onto the real
    target's mean, removing the offset a pivot-derived estimate inherits from the pivot's side of the modality gap."""
    return pseudo.float() - pseudo.float().mean(0, keepdim=True) + target_mean.float()


@fp32
def orthogonal_logits(query: Tensor, keys: Tensor, pivot: Tensor, eps: float = 1e-6) -> Tensor:
    """Cosines between query i and key j after removing, from both, their component along query i's own pivot
    embedding b_i (unit): alignment only in the subspace the pivot does not already explain (EmergentBridge,
    arXiv 2604.11043). With α_i = ⟨q_i, b_i⟩ and β_ij = ⟨k_j, b_i⟩:
        ⟨q_i − α_i b_i, k_j − β_ij b_i⟩ = ⟨q_i, k_j⟩ − α_i β_ij,  |q_i − α_i b_i|² = |q_i|² − α_i²,
        |k_j − β_ij b_i|² = |k_j|² − β_ij².
    Returns the (B1, B2) matrix of those cosines (not scaled by the temperature)."""
    q, k, b = query.float(), keys.float(), pivot.float()
    alpha = (q * b).sum(1, keepdim=True)  # (B1, 1)
    beta = b @ k.T  # (B1, B2)
    inner = q @ k.T - alpha * beta
    q_norm = (q.pow(2).sum(1, keepdim=True) - alpha.pow(2)).clamp_min(eps).sqrt()
    k_norm = (k.pow(2).sum(1).unsqueeze(0) - beta.pow(2)).clamp_min(eps).sqrt()
    return inner / (q_norm * k_norm)
