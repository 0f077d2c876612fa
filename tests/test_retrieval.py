import math

import pytest
import torch
from sklearn.metrics import average_precision_score

from brokenbind.metrics.retrieval import average_precision, recall_at_k, retrieval_metrics


def _cosines(gen: torch.Generator, q: int, g: int, d: int = 8) -> torch.Tensor:
    a = torch.nn.functional.normalize(torch.randn(q, d, generator=gen), dim=1)
    b = torch.nn.functional.normalize(torch.randn(g, d, generator=gen), dim=1)
    return a @ b.T


def _relevance(gen: torch.Generator, q: int, g: int) -> torch.Tensor:
    rel = torch.rand(q, g, generator=gen) < 0.25
    # Guarantee every row is scoreable and some rows have several relevant items.
    rel[:, 0] = True
    rel[::2, 1] = True
    return rel


def _assert_matches_sklearn(scores: torch.Tensor, rel: torch.Tensor) -> None:
    ap = average_precision(scores, rel)
    assert ap.dtype == torch.float64 and ap.shape == (scores.shape[0],)
    for row in range(scores.shape[0]):
        expected = average_precision_score(rel[row].numpy(), scores[row].numpy())
        assert ap[row].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_ap_matches_sklearn_on_random_cosines(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = _cosines(gen, 12, 50)
    assert (scores < 0).any()
    _assert_matches_sklearn(scores, _relevance(gen, 12, 50))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("kind", ["one_decimal", "integer"])
def test_ap_matches_sklearn_with_ties(seed: int, kind: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    if kind == "one_decimal":
        scores = torch.round(_cosines(gen, 12, 50), decimals=1)
    else:
        scores = torch.randint(-3, 4, (12, 50), generator=gen).float()
    # Every row must really contain ties for this test to exercise them.
    assert all(row.unique().numel() < row.numel() for row in scores)
    _assert_matches_sklearn(scores, _relevance(gen, 12, 50))


def test_constant_score_row_gives_positive_rate() -> None:
    scores = torch.full((1, 8), -0.3)
    rel = torch.tensor([[False, True, False, False, False, False, True, False]])
    assert average_precision(scores, rel).item() == pytest.approx(0.25, abs=1e-12)
    _assert_matches_sklearn(scores, rel)


@pytest.mark.parametrize(
    ("scores", "rel", "expected"),
    [
        ([0.5, 0.3, -0.1], [True, False, True], 0.8333333),
        ([0.5, 0.5, 0.5, 0.1], [False, False, True, True], 0.4166667),
    ],
)
def test_ap_golden_cases(scores: list[float], rel: list[bool], expected: float) -> None:
    ap = average_precision(torch.tensor([scores]), torch.tensor([rel]))
    assert ap.item() == pytest.approx(expected, abs=1e-7)


def test_row_without_relevant_item_is_nan() -> None:
    scores = torch.tensor([[0.5, 0.3, -0.1], [0.2, 0.9, 0.1]])
    rel = torch.tensor([[True, False, True], [False, False, False]])
    ap = average_precision(scores, rel)
    assert ap[0].item() == pytest.approx(5 / 6, abs=1e-12)
    assert math.isnan(ap[1].item())


def test_recall_at_k_counts_ties_pessimistically() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.5, 0.5, 0.1],  # relevant item tied with an irrelevant one: ranked behind it (rank 2)
            [0.3, 0.3, 0.3, 0.3],  # all tied: behind all three others (rank 3)
            [-0.2, 0.4, 0.6, -0.5],  # best relevant item is the 0.4 one (rank 1)
            [0.7, 0.7, 0.1, 0.0],  # two relevant items tied at the top: one of them comes first (rank 0)
            [0.1, 0.2, 0.3, 0.4],  # no relevant item
        ]
    )
    rel = torch.tensor(
        [
            [False, False, True, False],
            [True, False, False, False],
            [True, True, False, False],
            [True, True, False, False],
            [False, False, False, False],
        ]
    )
    nan = float("nan")
    expected = {
        1: [0.0, 0.0, 0.0, 1.0, nan],
        2: [0.0, 0.0, 1.0, 1.0, nan],
        3: [1.0, 0.0, 1.0, 1.0, nan],
        4: [1.0, 1.0, 1.0, 1.0, nan],
    }
    out = recall_at_k(scores, rel, (1, 2, 3, 4))
    assert out.keys() == expected.keys()
    for k, values in expected.items():
        assert out[k].dtype == torch.float64
        torch.testing.assert_close(out[k], torch.tensor(values, dtype=torch.float64), equal_nan=True)


def _paired_setup() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(7)
    query = torch.nn.functional.normalize(torch.randn(10, 16, generator=gen), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(12, 16, generator=gen), dim=1)
    # Every query but 4 has exactly one paired gallery item (shuffled). Query 4 has none, so its row is NaN;
    # it sits mid-chunk so that averaging chunk means instead of queries would change the result.
    gallery_ids = torch.tensor([0, 1, 2, 3, 5, 6, 7, 8, 9, 100, 101, 102])
    gallery_ids = gallery_ids[torch.randperm(12, generator=gen)]
    query_ids = torch.arange(10)
    query_labels = torch.randint(0, 3, (10,), generator=gen)
    gallery_labels = torch.randint(0, 3, (12,), generator=gen)
    return query, gallery, query_ids, gallery_ids, query_labels, gallery_labels


def test_chunked_equals_unchunked_exactly() -> None:
    args = _paired_setup()
    chunked = retrieval_metrics(*args, ks=(1, 5, 10), chunk_size=3)
    full = retrieval_metrics(*args, ks=(1, 5, 10), chunk_size=1024)
    assert set(full) == {"mAP", "R@1", "R@5", "R@10", "mAP_class"}
    assert all(isinstance(v, float) for v in full.values())
    assert chunked == full


def test_instance_map_is_mean_reciprocal_rank_and_skips_unpaired_query() -> None:
    query, gallery, query_ids, gallery_ids, _, _ = _paired_setup()
    sims = query @ gallery.T
    assert all(row.unique().numel() == row.numel() for row in sims)  # no ties, so ranks are unambiguous
    ranks = []
    for q in [0, 1, 2, 3, 5, 6, 7, 8, 9]:
        paired = (gallery_ids == query_ids[q]).nonzero().item()
        ranks.append(int((sims[q] > sims[q, paired]).sum()))
    out = retrieval_metrics(query, gallery, query_ids, gallery_ids, ks=(1, 2, 5), chunk_size=4)
    assert set(out) == {"mAP", "R@1", "R@2", "R@5"}
    assert out["mAP"] == pytest.approx(sum(1 / (r + 1) for r in ranks) / 9, abs=1e-12)
    for k in (1, 2, 5):
        assert out[f"R@{k}"] == pytest.approx(sum(r < k for r in ranks) / 9, abs=1e-12)


def test_class_map_matches_sklearn_mean() -> None:
    query, gallery, query_ids, gallery_ids, query_labels, gallery_labels = _paired_setup()
    sims = (query @ gallery.T).numpy()
    rel = (query_labels[:, None] == gallery_labels[None, :]).numpy()
    scored = [q for q in range(10) if rel[q].any()]
    expected = sum(average_precision_score(rel[q], sims[q]) for q in scored) / len(scored)
    labels = (query_labels, gallery_labels)
    out = retrieval_metrics(query, gallery, query_ids, gallery_ids, *labels, chunk_size=3)
    assert out["mAP_class"] == pytest.approx(expected, abs=1e-6)


def test_similarity_is_plain_dot_product_without_renormalising() -> None:
    # Cosine would rank gallery item 0 first; the dot product ranks the longer item 1 first.
    query = torch.tensor([[1.0, 0.3]])
    gallery = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    out = retrieval_metrics(query, gallery, torch.tensor([5]), torch.tensor([5, 6]), ks=(1,))
    assert out == {"mAP": 0.5, "R@1": 0.0}


def test_labels_must_come_in_pairs() -> None:
    query, gallery, query_ids, gallery_ids, query_labels, _ = _paired_setup()
    with pytest.raises(ValueError, match="both"):
        retrieval_metrics(query, gallery, query_ids, gallery_ids, query_labels=query_labels)


@pytest.mark.parametrize("block_rows", [256, 3], ids=["one block per class", "blocks of 3 rows"])
@pytest.mark.parametrize("seed", range(6))
def test_class_average_precision_equals_the_sorting_path_and_sklearn_with_ties_and_negative_scores(
    seed: int, block_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Class relevance takes a values-only sort and binary searches, in blocks of query rows over threads; it must
    equal the general path and scikit-learn row by row, with tied (quantised) and negative scores, and NaN for a
    query whose class the gallery lacks; the caller's scores are left as they were (blocks are sorted in place)."""
    from brokenbind.metrics import retrieval

    monkeypatch.setattr(retrieval, "_CLASS_BLOCK_ROWS", block_rows)
    g = torch.Generator().manual_seed(seed)
    classes = 1 + seed
    scores = (torch.randn(37, 53, generator=g) * 3).round() / 3
    given = scores.clone()
    query_labels = torch.randint(0, classes + 1, (37,), generator=g)
    query_labels[0] = classes + 1  # in no gallery row
    gallery_labels = torch.randint(0, classes + 1, (53,), generator=g)
    ap = retrieval.class_average_precision(scores, query_labels, gallery_labels)
    assert torch.equal(scores, given)
    general = average_precision(scores, query_labels[:, None] == gallery_labels[None, :])
    assert torch.equal(ap.isnan(), general.isnan()) and ap[0].isnan()
    assert torch.allclose(ap[~ap.isnan()], general[~general.isnan()], rtol=0, atol=1e-12)
    for i in (~ap.isnan()).nonzero().squeeze(1).tolist():
        relevant = (query_labels[i] == gallery_labels).numpy()
        assert ap[i].item() == pytest.approx(average_precision_score(relevant, scores[i].numpy()), abs=1e-12)


@pytest.mark.parametrize("gallery_ids", [[5, 6], [5, 5]], ids=["unique ids", "repeated ids"])
def test_broken_embeddings_and_bad_cutoffs_are_refused_on_both_paths(gallery_ids: list[int]) -> None:
    """Unique gallery ids take the counting path, repeated ones the sorting path; each checks its input once."""
    gallery, ids = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor(gallery_ids)
    with pytest.raises(ValueError, match="scores contain NaN or Inf"):
        retrieval_metrics(torch.tensor([[math.nan, 1.0]]), gallery, torch.tensor([5]), ids)
    with pytest.raises(ValueError, match=r"every k must be >= 1, got \[1, 0\]"):
        retrieval_metrics(torch.tensor([[1.0, 0.0]]), gallery, torch.tensor([5]), ids, ks=(1, 0))


@pytest.mark.parametrize("seed", range(4))
def test_single_relevant_fast_path_equals_the_sorting_path_and_sklearn(seed: int) -> None:
    """Unique gallery ids take the counting path; it must equal the general (sorting) path and scikit-learn, with
    negative scores, ties (quantised scores) and queries whose paired item is missing."""
    from brokenbind.metrics.retrieval import single_match, single_relevant_metrics

    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(-3, 4, (12, 9), generator=g).float() / 2  # few distinct values: many ties, negatives
    query_ids = torch.randperm(12, generator=g)[:12] + 100
    gallery_ids = torch.randperm(12, generator=g)[:9] + 100  # 3 queries have no paired item
    relevant = query_ids[:, None] == gallery_ids[None, :]
    match = single_match(query_ids, gallery_ids)
    assert match is not None and ((match >= 0) == relevant.any(dim=1)).all()
    ap, hits = single_relevant_metrics(scores, match, ks=(1, 3))
    torch.testing.assert_close(ap, average_precision(scores, relevant), equal_nan=True)
    for k, hit in recall_at_k(scores, relevant, (1, 3)).items():
        torch.testing.assert_close(hits[k], hit, equal_nan=True)
    for q in relevant.any(dim=1).nonzero().flatten().tolist():
        assert ap[q].item() == pytest.approx(average_precision_score(relevant[q].numpy(), scores[q].numpy()))


def test_repeated_gallery_ids_take_the_general_path() -> None:
    from brokenbind.metrics.retrieval import single_match

    assert single_match(torch.tensor([1, 2]), torch.tensor([1, 2, 2])) is None
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1]])
    out = retrieval_metrics(query, gallery, torch.tensor([7]), torch.tensor([7, 7, 3]), ks=(1,))
    assert out["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 2)  # relevant items at ranks 1 and 3


def test_a_gallery_of_one_row_is_refused():
    """A lone candidate ranks first whatever the scores: AP would be 1 for any model."""
    with pytest.raises(ValueError, match="need at least two gallery rows to rank, got 1"):
        retrieval_metrics(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([5]), torch.tensor([5]))
