"""Transitive (relative-representation) retrieval scores, training-free (ASIF, arXiv 2210.01738, §3).

An item is represented by its cosines to n anchor items of its own modality; anchor k of the query side and anchor k
of the target side are one pair (the same row of a dataset observing both), so the two representations share their
coordinates and are compared directly. As in ASIF's code: keep the top-k cosines of each row, raise them to the
power p, L2-normalise the sparse row. With few anchors some kept cosines can be negative; they are clamped at 0
before the power (an even power would otherwise turn a dissimilar anchor into a similar one).

``blended`` scores with a share of each: a learned space's cosine and the relative representation's, so a method that
binds the query to the target can still borrow the anchors' pairs at retrieval. The relative rows are as wide as the
anchors are many, so ``anchor_subset`` bounds their number (and with it the memory of scoring).
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def relative_representation(x: Tensor, anchors: Tensor, top_k: int, power: float) -> Tensor:
    """(N, n) rows: cosines of ``x`` (N, d) to ``anchors`` (n, d), top-k kept, clamped at 0, raised to ``power``,
    L2-normalised (inputs are unit rows)."""
    sims = x.float() @ anchors.float().T
    k = min(top_k, sims.shape[1])
    values, columns = sims.topk(k, dim=1)
    sparse = torch.zeros_like(sims).scatter_(1, columns, values.clamp_min(0).pow(power))
    return F.normalize(sparse, dim=1)


def transitive_embeddings(
    query: Tensor, target: Tensor, anchor_query: Tensor, anchor_target: Tensor, top_k: int = 800, power: float = 8.0
) -> tuple[Tensor, Tensor]:
    """Query and target rows in the anchors' relative space: the score of query i for target j is the dot product of
    row i of the first with row j of the second. ``anchor_query`` are the anchors' embeddings in the modality the
    query is compared with (the pivot), ``anchor_target`` the same anchors' target embeddings."""
    if len(anchor_query) != len(anchor_target):
        raise ValueError(f"anchor pairs must align row by row, got {len(anchor_query)} and {len(anchor_target)}")
    return (
        relative_representation(query, anchor_query, top_k, power),
        relative_representation(target, anchor_target, top_k, power),
    )


def blended(direct: Tensor, relative: Tensor, weight: float) -> Tensor:
    """Rows whose dot products are ``(1 − weight)·`` those of the unit rows ``direct`` plus ``weight·`` those of the
    rows ``relative`` (one item per row in both): the two, scaled by the square roots of their shares, side by side,
    so retrieval's dot products are the blend (a relative row whose kept cosines are all ≤ 0 is zero: it adds
    nothing)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must lie in [0, 1], got {weight}")
    return torch.cat([direct.float() * (1.0 - weight) ** 0.5, relative.float() * weight**0.5], dim=1)


def anchor_subset(n: int, limit: int, seed: int = 0) -> Tensor | None:
    """Positions of at most ``limit`` of ``n`` anchor rows: None (all of them) when ``n <= limit``, else a fixed
    random subset in row order, the same on every rank and every epoch."""
    if n <= limit:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
