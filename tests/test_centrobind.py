"""CentroBind (arXiv 2410.02086) against loop references: the loss for every switch, the stop-gradient through the
anchor, datasets observing one modality, and the DDP row offset.

The loss reference is plain Python over floats (centroids, dot products and log-sum-exp by hand); the gradient
reference is a float64 torch expression written from the docstring's objective. Neither calls the code under test.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from brokenbind.errors import ConfigError
from brokenbind.losses.distributed import Batch
from brokenbind.methods import CentroBind

from .binding import run

B, D = 5, 7
SCALES = {"a": 2.0, "b": 5.0, "c": 3.0, "e": 1.5}  # one per modality, so that a wrong modality's scale shows
LAYOUT = {"d1": ["a", "b"], "d2": ["b", "c", "e"], "d3": ["c"]}  # d3 observes one modality: it binds nothing
SWITCHES = list(itertools.product(["all", "leave_one_out"], [True, False], [True, False]))


def embeddings(seed: int, layout: dict[str, list[str]], rows: int = B) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {
        ds: {m: F.normalize(torch.randn(rows, D, generator=gen, dtype=torch.float64), dim=1).float() for m in mods}
        for ds, mods in layout.items()
    }


def centroids(mods: dict[str, list[list[float]]], m: str, anchor: str, renormalize: bool) -> list[list[float]]:
    """Row i: the mean over the anchor's modalities of their row i, L2-normalised if ``renormalize``."""
    members = [n for n in mods if anchor == "all" or n != m]
    rows = []
    for i in range(len(mods[m])):
        c = [sum(mods[n][i][k] for n in members) / len(members) for k in range(D)]
        if renormalize:
            norm = math.sqrt(sum(v * v for v in c))
            c = [v / norm for v in c]
        rows.append(c)
    return rows


def info_nce(queries: list[list[float]], keys: list[list[float]], scale: float, offset: int) -> float:
    """−(1/n) Σ_i log softmax_j(scale ⟨q_i, k_j⟩)_{offset+i}, log-sum-exp by hand."""
    total = 0.0
    for i, q in enumerate(queries):
        logits = [scale * sum(x * y for x, y in zip(q, k, strict=True)) for k in keys]
        top = max(logits)
        total += top + math.log(sum(math.exp(v - top) for v in logits)) - logits[offset + i]
    return total / len(queries)


def reference(
    full: dict[str, dict[str, torch.Tensor]], anchor: str, renormalize: bool, offset: int = 0, rows: int | None = None
) -> float:
    """Σ over datasets with two or more modalities and their modalities m of ½[InfoNCE(z_m → a_m) + InfoNCE(a_m → z_m)],
    this rank's rows ``offset .. offset + rows`` against every row of the batch."""
    total = 0.0
    for mods in full.values():
        if len(mods) < 2:
            continue
        values = {m: f.double().tolist() for m, f in mods.items()}
        own = range(offset, offset + (rows or len(next(iter(values.values())))))
        for m, z in values.items():
            a = centroids(values, m, anchor, renormalize)
            to_anchor = info_nce([z[i] for i in own], a, SCALES[m], offset)
            from_anchor = info_nce([a[i] for i in own], z, SCALES[m], offset)
            total += 0.5 * (to_anchor + from_anchor)
    return total


@pytest.mark.parametrize(("anchor", "renormalize", "detach_anchor"), SWITCHES)
def test_loss_matches_the_loop_reference_for_every_switch(anchor, renormalize, detach_anchor):
    emb = embeddings(0, LAYOUT)
    method = CentroBind(renormalize=renormalize, detach_anchor=detach_anchor, anchor=anchor, modality_scales=SCALES)
    terms = run(method, emb, epoch=0)
    assert list(terms) == ["centro"]
    assert terms["centro"].item() == pytest.approx(reference(emb, anchor, renormalize), rel=1e-6)


@pytest.mark.parametrize(("anchor", "renormalize"), [("all", True), ("leave_one_out", False)])
def test_this_ranks_rows_score_against_the_gathered_batch(anchor, renormalize):
    full = embeddings(1, LAYOUT, rows=2 * B)
    offset = B  # the second of two ranks
    local = {ds: {m: f[offset:] for m, f in mods.items()} for ds, mods in full.items()}
    method = CentroBind(renormalize=renormalize, anchor=anchor, modality_scales=SCALES)
    value = method.terms(Batch(local, full, offset), epoch=0, max_epochs=None)["centro"]
    assert value.item() == pytest.approx(reference(full, anchor, renormalize, offset, rows=B), rel=1e-6)


def torch_reference(emb: dict[str, dict[str, torch.Tensor]], anchor: str, detach: bool) -> torch.Tensor:
    """The objective in float64 torch with anchors renormalised, built from detached copies when ``detach``."""
    total = torch.zeros((), dtype=torch.float64)
    labels = torch.arange(B)
    for mods in emb.values():
        if len(mods) < 2:
            continue
        z = {m: f.double() for m, f in mods.items()}
        for m in z:
            members = [(z[n].detach() if detach else z[n]) for n in z if anchor == "all" or n != m]
            a = sum(members) / len(members)
            a = a / a.norm(dim=1, keepdim=True)
            logits = SCALES[m] * z[m] @ a.T
            rows = logits.logsumexp(1) - logits[labels, labels]
            cols = logits.T.logsumexp(1) - logits.T[labels, labels]
            total = total + 0.5 * (rows.mean() + cols.mean())
    return total


@pytest.mark.parametrize("anchor", ["all", "leave_one_out"])
@pytest.mark.parametrize("detach_anchor", [True, False])
def test_gradients_flow_through_the_anchor_only_without_stop_gradient(anchor, detach_anchor):
    emb = embeddings(2, LAYOUT)
    leaves = [f.requires_grad_(True) for mods in emb.values() for f in mods.values()]
    method = CentroBind(detach_anchor=detach_anchor, anchor=anchor, modality_scales=SCALES)
    assert all(a.requires_grad != detach_anchor for a in method.anchors(emb["d2"]).values())
    got = torch.autograd.grad(run(method, emb, epoch=0)["centro"], leaves, allow_unused=True)
    expected = torch.autograd.grad(torch_reference(emb, anchor, detach_anchor), leaves, allow_unused=True)
    for g, e in zip(got, expected, strict=True):
        if e is None:  # d3's embedding: the one-modality dataset adds no term
            assert g is None
        else:
            torch.testing.assert_close(g, e, atol=1e-6, rtol=0)


def test_the_stop_gradient_changes_the_gradient():
    # With two modalities and leave_one_out, z_a's anchor is z_b: detached, z_b gets no gradient from a's term.
    emb = embeddings(3, {"d1": ["a", "b"]})
    b = emb["d1"]["b"].requires_grad_(True)
    grads = {
        detach: torch.autograd.grad(
            run(CentroBind(detach_anchor=detach, anchor="leave_one_out"), emb, epoch=0)["centro"], b
        )
        for detach in (True, False)
    }
    assert not torch.allclose(grads[True][0], grads[False][0])


def test_a_dataset_observing_one_modality_adds_no_term():
    emb = embeddings(4, LAYOUT)
    with_single = run(CentroBind(modality_scales=SCALES), emb, epoch=0)["centro"]
    without = run(CentroBind(modality_scales=SCALES), {ds: emb[ds] for ds in ("d1", "d2")}, epoch=0)["centro"]
    assert with_single.item() == without.item()


@pytest.mark.parametrize("anchor", ["all", "leave_one_out"])
def test_only_one_modality_datasets_are_refused(anchor):
    emb = embeddings(5, {"d1": ["a"], "d2": ["b"]})
    with pytest.raises(ConfigError, match="centrobind needs at least one dataset observing two modalities"):
        run(CentroBind(anchor=anchor), emb, epoch=0)


def test_an_unknown_anchor_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match=r"anchor must be one of \['all', 'leave_one_out'\], got 'centroid'"):
        CentroBind(anchor="centroid")
