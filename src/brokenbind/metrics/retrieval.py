"""Retrieval metrics on similarity matrices: average precision and recall@k, plus a chunked evaluator."""

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from torch import Tensor


def _check_pair(scores: Tensor, relevant: Tensor) -> None:
    if scores.ndim != 2 or scores.shape != relevant.shape:
        raise ValueError(
            f"scores and relevant must both be (Q, G); got {tuple(scores.shape)} and {tuple(relevant.shape)}"
        )
    if relevant.dtype != torch.bool:
        raise ValueError(f"relevant must be a bool tensor, got {relevant.dtype}")
    _check_finite(scores)


def _check_finite(scores: Tensor) -> None:
    # a NaN compares false with everything: it would rank as a hit. A finite sum proves every entry finite (NaN and
    # Inf propagate) in one cheap reduction; only a non-finite sum (perhaps a float overflow) needs the full check.
    if not torch.isfinite(scores.sum()) and not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or Inf: the embeddings are broken, there is nothing meaningful to rank")


def average_precision(scores: Tensor, relevant: Tensor) -> Tensor:
    """Average precision per query, equal to scikit-learn's ``average_precision_score`` row by row.

    Args:
        scores: (Q, G) score of each gallery item for each query; higher ranks first. Any sign.
        relevant: (Q, G) bool, True where the gallery item is relevant to the query.

    Returns:
        (Q,) float64. Exactly equal scores form one threshold, as in scikit-learn. Rows without a relevant
        item are NaN; callers skip them (e.g. with ``torch.nanmean``).
    """
    _check_pair(scores, relevant)
    return _average_precision(scores, relevant)


def _average_precision(scores: Tensor, relevant: Tensor) -> Tensor:
    """``average_precision`` on inputs already checked (``retrieval_metrics`` checks each chunk once)."""
    n = scores.shape[1]
    sorted_scores, order = scores.sort(dim=1, descending=True)
    rel = relevant.gather(1, order).to(torch.float64)
    # float64 cumsum keeps hit counts exact for any realistic gallery size.
    hits = rel.cumsum(dim=1)
    pos = torch.arange(n, device=scores.device)
    # A position closes its tie group when the next score differs, or the row ends.
    closes = torch.ones_like(relevant)
    closes[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    # Each position's group end is the nearest closing position at or after it: a running min from the right.
    group_end = torch.where(closes, pos, n).flip(1).cummin(dim=1).values.flip(1)
    # scikit-learn scores a tie group as one threshold: each of its items gets the precision at the group end.
    precision = hits.gather(1, group_end) / (group_end + 1).to(torch.float64)
    # With no relevant item this is 0 / 0 = NaN, the documented marker for "skip this row".
    return (rel * precision).sum(dim=1) / rel.sum(dim=1)


def recall_at_k(scores: Tensor, relevant: Tensor, ks: Sequence[int]) -> dict[int, Tensor]:
    """Per-query hit indicator for each k: 1.0 if a relevant item ranks within the top k, else 0.0.

    Ties are broken pessimistically: an item tied with irrelevant items ranks behind all of them, so the
    metric never depends on sort order and never credits a coin flip. The query's rank is that of its
    best-ranked relevant item, i.e. the number of irrelevant items scoring >= the highest relevant score;
    relevant items tied with it do not push it down, since whichever of them comes first is a hit.

    Args:
        scores: (Q, G) score of each gallery item for each query; higher ranks first.
        relevant: (Q, G) bool relevance.
        ks: cut-offs, each >= 1.

    Returns:
        ``{k: (Q,) float64}``; rows without a relevant item are NaN.
    """
    _check_pair(scores, relevant)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    return _recall_at_k(scores, relevant, ks)


def _recall_at_k(scores: Tensor, relevant: Tensor, ks: Sequence[int]) -> dict[int, Tensor]:
    """``recall_at_k`` on inputs already checked."""
    best = scores.masked_fill(~relevant, float("-inf")).amax(dim=1, keepdim=True)
    rank = ((scores >= best) & ~relevant).sum(dim=1)
    has_relevant = relevant.any(dim=1)
    return {k: (rank < k).to(torch.float64).masked_fill(~has_relevant, float("nan")) for k in ks}


def single_match(query_ids: Tensor, gallery_ids: Tensor) -> Tensor | None:
    """Gallery column of each query's one relevant item (-1 where it has none), or None when gallery ids repeat."""
    order = torch.argsort(gallery_ids)
    ordered = gallery_ids[order]
    if len(ordered) > 1 and (ordered[1:] == ordered[:-1]).any():
        return None
    pos = torch.searchsorted(ordered, query_ids).clamp(max=len(ordered) - 1)
    return torch.where(ordered[pos] == query_ids, order[pos], -1)


def single_relevant_metrics(scores: Tensor, target: Tensor, ks: Sequence[int]) -> tuple[Tensor, dict[int, Tensor]]:
    """AP and recall@k per query when each query has one relevant item, at gallery column ``target`` (-1: none).

    With one relevant item, scikit-learn's AP is the precision at its score, 1 / #(items scoring >= it), and its
    pessimistic rank is that count minus one: one comparison pass over the row, no sort. Equal to
    ``average_precision`` and ``recall_at_k`` on the same input (tested).
    """
    _check_finite(scores)
    return _single_relevant_metrics(scores, target, ks)


def _single_relevant_metrics(scores: Tensor, target: Tensor, ks: Sequence[int]) -> tuple[Tensor, dict[int, Tensor]]:
    """``single_relevant_metrics`` on inputs already checked."""
    has = target >= 0
    relevant_score = scores.gather(1, target.clamp(min=0)[:, None])
    count = (scores >= relevant_score).sum(dim=1).to(torch.float64)
    nan = torch.full_like(count, float("nan"))
    ap = torch.where(has, 1.0 / count, nan)
    return ap, {k: torch.where(has, (count <= k).to(torch.float64), nan) for k in ks}


def class_average_precision(scores: Tensor, query_labels: Tensor, gallery_labels: Tensor) -> Tensor:
    """Average precision per query when the relevant items are the gallery items of the query's class: equal to
    ``average_precision(scores, query_labels[:, None] == gallery_labels[None, :])`` (ties as one threshold), and to
    scikit-learn, with a values-only sort of each row instead of a sort that carries relevance along.

    A relevant item j scores precision (#relevant ≥ s_j) / (#items ≥ s_j); both counts come from binary searches of
    the relevant scores in the row's sorted scores and in their own sorted copy. Rows whose class has no gallery item
    are NaN.
    """
    _check_finite(scores)
    if scores.ndim != 2 or scores.shape != (len(query_labels), len(gallery_labels)):
        raise ValueError(
            f"scores must be (Q, G) = ({len(query_labels)}, {len(gallery_labels)}), got {tuple(scores.shape)}"
        )
    return _class_average_precision(scores, query_labels, gallery_labels)


def _class_average_precision(scores: Tensor, query_labels: Tensor, gallery_labels: Tensor) -> Tensor:
    """``class_average_precision`` on inputs already checked, in blocks of one class's query rows, spread over
    ``torch.get_num_threads()`` threads on the CPU (NumPy's sort and torch's kernels release the GIL; a single
    thread left the sort, the bulk of the time, on one core)."""
    ap = torch.full((len(scores),), float("nan"), dtype=torch.float64, device=scores.device)
    blocks = []
    for label in query_labels.unique():
        relevant = (gallery_labels == label).nonzero().squeeze(1)
        if len(relevant):
            rows = (query_labels == label).nonzero().squeeze(1)
            blocks += [(block, relevant) for block in rows.split(_CLASS_BLOCK_ROWS)]
    threads = torch.get_num_threads() if scores.device.type == "cpu" else 1
    with ThreadPoolExecutor(threads) as pool:
        for (rows, _), block_ap in zip(blocks, pool.map(lambda b: _block_ap(scores, *b), blocks), strict=True):
            ap[rows] = block_ap
    return ap


# Query rows per block: 256 rows of a 10k gallery (10 MB of scores) keep a block's sort and search in cache.
_CLASS_BLOCK_ROWS = 256


def _block_ap(scores: Tensor, rows: Tensor, relevant: Tensor) -> Tensor:
    """Class AP of query rows ``rows`` whose relevant gallery items are ``relevant`` (indices)."""
    block = scores[rows]  # a copy, sorted in place below
    mine = _sort_values(block[:, relevant])
    ascending = _sort_values(block)
    # items scoring >= s: all minus those strictly below s (searchsorted's left side)
    above = block.shape[1] - torch.searchsorted(ascending, mine, right=False)
    # relevant items scoring >= mine[j]: R minus the first position of its tie group
    position = torch.arange(mine.shape[1], device=mine.device).expand_as(mine)
    starts = torch.ones_like(mine, dtype=torch.bool)
    starts[:, 1:] = mine[:, 1:] != mine[:, :-1]
    relevant_above = mine.shape[1] - torch.where(starts, position, 0).cummax(dim=1).values
    return (relevant_above.to(torch.float64) / above.to(torch.float64)).mean(dim=1)


def _sort_values(scores: Tensor) -> Tensor:
    """Each row of a tensor it may overwrite sorted ascending, values only. On the CPU NumPy's vectorised sort, in
    place, is several times faster than torch's, which computes indices too."""
    if scores.device.type == "cpu":
        scores.numpy().sort(axis=1)
        return scores
    return scores.sort(dim=1).values


def class_map_problem(labels: Tensor) -> str | None:
    """Why class-level mAP cannot be reported for a split whose rows carry ``labels`` (negative: unlabelled), or None.

    An unlabelled row has no class, so which items are relevant to it is undefined; when every row is in one class,
    every item is relevant and AP is 1.0 whatever the ranking. Either way the number would say nothing.
    """
    unlabelled = int((labels < 0).sum())
    if unlabelled:
        return f"{unlabelled} of its {len(labels)} rows have no label; label every row of the split to score classes"
    if len(torch.unique(labels)) < 2:
        return (
            f"all {len(labels)} of its rows are in one class, so every item is relevant and class mAP would be 1.0 "
            "whatever the ranking"
        )
    return None


def retrieval_metrics(
    query: Tensor,
    gallery: Tensor,
    query_ids: Tensor,
    gallery_ids: Tensor,
    query_labels: Tensor | None = None,
    gallery_labels: Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Instance-level (and optionally class-level) retrieval metrics of queries against a gallery.

    Similarity is the fp32 dot product, so the caller must pass L2-normalised embeddings for cosine; nothing
    is renormalised here. Queries are processed ``chunk_size`` rows at a time, so memory is
    O(chunk_size x G); per-query values are pooled before averaging, so chunking does not change the means.
    (BLAS may round a similarity differently by a few ulps for different chunk shapes, which can only matter
    for near-ties below fp32 resolution.)

    Args:
        query: (Q, d) query embeddings.
        gallery: (G, d) gallery embeddings.
        query_ids: (Q,) int64 instance ids; gallery item g is relevant to query q iff the ids match.
        gallery_ids: (G,) int64 instance ids.
        query_labels: (Q,) class labels, for class-level mAP (negative: unlabelled). Give both label tensors or
            neither.
        gallery_labels: (G,) class labels.
        ks: cut-offs for recall@k.
        chunk_size: query rows per similarity block.

    Returns:
        ``"mAP"`` and ``"R@k"`` for each k (instance level), plus ``"mAP_class"`` when labels are given. Each
        is a mean over the queries with at least one relevant item (NaN if there are none). ``"mAP_class"`` is NaN
        when ``class_map_problem`` finds the labels undefined or trivial.
    """
    if (query_labels is None) != (gallery_labels is None):
        raise ValueError("pass both query_labels and gallery_labels, or neither")
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        shapes = f"{tuple(query.shape)} and {tuple(gallery.shape)}"
        raise ValueError(f"need (Q, d) query and (G, d) gallery embeddings, got {shapes}")
    if query_ids.shape != query.shape[:1] or gallery_ids.shape != gallery.shape[:1]:
        raise ValueError("query_ids and gallery_ids must be 1-D with one id per embedding row")
    if query.shape[0] == 0:
        raise ValueError("need at least one query")
    if gallery.shape[0] < 2:  # a lone candidate ranks first whatever the scores: AP 1 measures nothing
        raise ValueError(f"need at least two gallery rows to rank, got {gallery.shape[0]}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")

    device = query.device
    gallery_t = gallery.float().T
    # Ids and labels often stay on the CPU while embeddings sit on the GPU.
    query_ids, gallery_ids = query_ids.to(device), gallery_ids.to(device)
    with_labels = query_labels is not None and gallery_labels is not None
    class_problem = None
    if with_labels:
        query_labels, gallery_labels = query_labels.to(device), gallery_labels.to(device)
        class_problem = class_map_problem(torch.cat([query_labels, gallery_labels]))

    # Per-query results go into buffers made up front: small tensors kept from every chunk would sit above that
    # chunk's large freed temporaries in the C heap and pin them (glibc then kept GBs of freed memory at 100k x 100k).
    per_query = partial(torch.empty, query.shape[0], dtype=torch.float64, device=device)
    ap, hits = per_query(), {k: per_query() for k in ks}
    score_classes = with_labels and class_problem is None
    ap_class = per_query() if score_classes else None
    match = single_match(query_ids, gallery_ids)  # the usual case: instance ids are unique in the gallery
    for start in range(0, query.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        scores = query[rows].float() @ gallery_t
        _check_finite(scores)  # once per chunk; the cores below skip their public wrappers' checks
        if match is not None:
            ap[rows], chunk_hits = _single_relevant_metrics(scores, match[rows], ks)
        else:
            relevant = query_ids[rows, None] == gallery_ids[None, :]
            ap[rows], chunk_hits = _average_precision(scores, relevant), _recall_at_k(scores, relevant, ks)
        for k, hit in chunk_hits.items():
            hits[k][rows] = hit
        if ap_class is not None:
            ap_class[rows] = _class_average_precision(scores, query_labels[rows], gallery_labels)

    # The mean over every query, not over chunk means (which would weight chunks, not queries).
    out = {"mAP": ap.nanmean().item()}
    out.update({f"R@{k}": hit.nanmean().item() for k, hit in hits.items()})
    if with_labels:
        out["mAP_class"] = float("nan") if ap_class is None else ap_class.nanmean().item()
    return out
