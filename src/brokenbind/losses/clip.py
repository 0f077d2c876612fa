"""Contrastive terms: InfoNCE (CLIP) and the cross-dataset push-away partition of BrokenBind Eq. 10.

All inputs are L2-normalised embeddings, one row per sample; ``scale`` is the logit scale (1/τ).
Computed in fp32 whatever the autocast context (``losses.precision``).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from brokenbind.losses.precision import fp32


@fp32
def info_nce(query: Tensor, keys: Tensor, scale: Tensor | float, offset: int = 0) -> Tensor:
    """One-way InfoNCE: −(1/B) Σ_i log softmax_j(scale·⟨q_i, k_j⟩)_{offset+i}.

    Row ``offset + i`` of ``keys`` is the positive of query row i (``offset`` > 0 when ``keys`` are gathered from
    several ranks and ``query`` holds this rank's rows).
    """
    logits = scale * query.float() @ keys.float().T
    return F.cross_entropy(logits, offset + torch.arange(len(query), device=query.device))


@fp32
def symmetric_info_nce(
    a: Tensor,
    b: Tensor,
    scale_a: Tensor | float,
    scale_b: Tensor | float,
    a_full: Tensor | None = None,
    b_full: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """CLIP loss: the mean of a→b and b→a InfoNCE, each with its anchor modality's scale.

    ``a``/``b`` are this rank's rows; ``a_full``/``b_full`` the gathered columns (default: the same rows).
    """
    a_full = a if a_full is None else a_full
    b_full = b if b_full is None else b_full
    return 0.5 * (info_nce(a, b_full, scale_a, offset) + info_nce(b, a_full, scale_b, offset))


@fp32
def push_away(query: Tensor, others: Tensor, scale: Tensor | float) -> Tensor:
    """Eq. 10's push-away term: (1/B) Σ_i log Σ_k exp(scale·⟨q_i, o_k⟩) against every row of another dataset.

    A separate partition term per (dataset, modality), not one softmax over the union of negatives (arXiv 2602.06451
    Eq. 10).
    """
    return torch.logsumexp(scale * query.float() @ others.float().T, dim=1).mean()
