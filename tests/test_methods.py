"""Methods beyond the two-dataset paper recipe: chains, switches, CentroBind, FABind's anchor (loop references)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import brokenbind
from brokenbind.errors import ConfigError
from brokenbind.losses.distributed import Batch
from brokenbind.methods import BrokenBind, CentroBind, FABind
from brokenbind.methods.brokenbind import PAPER_RECIPE

from .binding import pseudo_of, run

B, D = 5, 12
METHODS = Path(brokenbind.__file__).parent / "configs" / "methods"


def unit(gen: torch.Generator, rows: int = B) -> torch.Tensor:
    return F.normalize(torch.randn(rows, D, generator=gen, dtype=torch.float64), dim=1).float()


def layout(seed: int, spec: dict[str, list[str]]) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {ds: {m: unit(gen) for m in mods} for ds, mods in spec.items()}


def ce_loop(query: torch.Tensor, keys: torch.Tensor, scale: float) -> float:
    """−(1/B) Σ_i log softmax_j(scale ⟨q_i, k_j⟩)_i with Python loops."""
    q, k = query.double().tolist(), keys.double().tolist()
    total = 0.0
    for i, qi in enumerate(q):
        logits = [scale * sum(a * b for a, b in zip(qi, kj, strict=True)) for kj in k]
        total += math.log(sum(math.exp(v) for v in logits)) - logits[i]
    return total / len(q)


def pinv(x: torch.Tensor) -> np.ndarray:
    return np.linalg.pinv(x.double().numpy())


# -- chains (Appendix B, Eqs. 13-22) ---------------------------------------------------------------------------------
CHAIN = {"d1": ["a"], "d2": ["a", "b"], "d3": ["b", "c"]}


def test_three_dataset_chain_composes_eqs_20_and_21():
    emb = layout(0, CHAIN)
    steps = pseudo_of(BrokenBind(pinv_ridge=0.0), emb, "d1")
    assert sorted(steps) == ["b", "c"]
    a1, b2 = emb["d1"]["a"].double().numpy(), emb["d2"]["b"].double().numpy()
    c3 = emb["d3"]["c"].double().numpy()
    b1_data = a1 @ pinv(emb["d2"]["a"]) @ b2  # Eq. 16
    np.testing.assert_allclose(steps["b"][0].double().numpy(), b1_data, atol=1e-4)
    np.testing.assert_allclose(steps["b"][1].double().numpy(), b2 @ pinv(emb["d2"]["a"]) @ a1, atol=1e-4)  # Eq. 15
    np.testing.assert_allclose(steps["c"][0].double().numpy(), b1_data @ pinv(emb["d3"]["b"]) @ c3, atol=1e-4)  # Eq. 21
    np.testing.assert_allclose(steps["c"][1].double().numpy(), c3 @ pinv(emb["d3"]["b"]) @ b1_data, atol=1e-4)  # Eq. 20


def test_chain_mox_contrasts_the_real_modality_with_both_pseudo_modalities():
    emb = layout(1, CHAIN)
    method = BrokenBind(consistency_epochs=0, logit_scale=4.0, sym_weight=0.0, clip_weight=0.0, mox_subspace="full",
                        embedding_noise=0.0, mox_weight=1.0)  # fmt: skip
    terms = run(method, emb, epoch=0)
    expected = 0.0
    for ds, mods in emb.items():
        for data, *_ in pseudo_of(method, emb, ds).values():
            expected += sum(ce_loop(f, F.normalize(data, dim=1), 4.0) for f in mods.values()) / len(mods)
    assert terms["mox"].item() == pytest.approx(expected, rel=1e-5)


def test_single_modality_dataset_only_lends_negatives_to_clip():
    emb = layout(2, CHAIN)
    method = BrokenBind(logit_scale=3.0, push_away="none", consistency_epochs=25, embedding_noise=0.0)
    value = run(method, emb, epoch=0)["clip"]
    expected = sum(
        ce_loop(emb[ds][m], emb[ds][n], 3.0) for ds in ("d2", "d3") for m in emb[ds] for n in emb[ds] if m != n
    )
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_ambiguous_pivot_is_a_clear_error():
    emb = layout(3, {"d1": ["a", "b", "e"], "d2": ["a", "b", "c"]})
    with pytest.raises(ConfigError, match="share several modalities"):
        run(BrokenBind(consistency_epochs=0), emb, epoch=0)


# -- switches --------------------------------------------------------------------------------------------------------
TWO = {"d1": ["a", "b"], "d2": ["b", "c"]}


@pytest.mark.parametrize("weight", [1.0, 0.3])
@pytest.mark.parametrize("mode", ["all", "observed_pairs", "none"])
def test_push_away_modes_choose_which_partitions_enter_eq_10(mode, weight):
    emb = layout(4, TWO)
    value = BrokenBind(logit_scale=2.0, push_away=mode, push_away_weight=weight).clip(Batch(emb, emb, 0))
    expected = 0.0
    for ds, other in (("d1", "d2"), ("d2", "d1")):
        for m in emb[ds]:
            (n,) = set(emb[ds]) - {m}
            parts = [ce_loop(emb[ds][m], emb[ds][n], 2.0)]
            # a1 may push against b2 (same modality) and c2; c2 against b1 and a1; "observed_pairs" drops a↔c
            for o in emb[other]:
                keep = mode == "all" or (mode == "observed_pairs" and (o == m or {m, o} in ({"a", "b"}, {"b", "c"})))
                if keep:
                    s = 2.0 * emb[ds][m].double() @ emb[other][o].double().T
                    parts.append(weight * torch.logsumexp(s, dim=1).mean().item())
            expected += sum(parts) / len(parts)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_fro_mean_divides_by_entries_and_normalize_pseudo_makes_unit_rows():
    emb = layout(5, TWO)
    summed = run(BrokenBind(consistency_epochs=0, fro_reduction="sum"), emb, epoch=0)["fro"]
    mean = run(BrokenBind(consistency_epochs=0, fro_reduction="mean"), emb, epoch=0)["fro"]
    assert mean.item() == pytest.approx(summed.item() / (B * D), rel=1e-6)
    steps = pseudo_of(BrokenBind(normalize_pseudo=True), emb, "d1")
    torch.testing.assert_close(steps["c"][0].norm(dim=1), torch.ones(B))


def test_mox_contrast_x_mod_uses_the_x_mod_pseudo_embeddings():
    emb = layout(6, TWO)
    method = BrokenBind(
        consistency_epochs=0, mox_contrast="x_mod", transition="linear", logit_scale=3.0, mox_subspace="full",
        embedding_noise=0.0, mox_weight=1.0,
    )  # fmt: skip
    expected = 0.0
    for ds in emb:
        for _, mod, *_ in pseudo_of(method, emb, ds).values():
            expected += sum(ce_loop(f, F.normalize(mod, dim=1), 3.0) for f in emb[ds].values()) / 2
    assert run(method, emb, epoch=0)["mox"].item() == pytest.approx(expected, rel=1e-5)


def test_ridge_pinv_bounds_pseudo_embeddings_of_an_ill_conditioned_pivot():
    gen = torch.Generator().manual_seed(7)
    emb = layout(7, TWO)
    base = unit(gen, 1)
    emb["d2"]["b"] = F.normalize(base + 1e-4 * torch.randn(B, D, generator=gen), dim=1)  # nearly identical rows
    plain = pseudo_of(BrokenBind(pinv_ridge=0.0), emb, "d1")["c"][0].norm(dim=1).max()
    ridge = pseudo_of(BrokenBind(pinv_ridge=0.1), emb, "d1")["c"][0].norm(dim=1).max()
    assert plain > 10 and ridge < 2


def test_sym_normalizer_pairs_divides_the_cyclip_sum_by_the_batch_once_more():
    emb = layout(11, TWO)
    batch = BrokenBind(sym_normalizer="batch").symmetry(Batch(emb, emb, 0))
    pairs = BrokenBind(sym_normalizer="pairs").symmetry(Batch(emb, emb, 0))
    assert pairs.item() == pytest.approx(batch.item() / B, rel=1e-6)


def test_sym_centring_takes_cyclip_of_each_modality_centred_on_its_batch_mean():
    emb = layout(14, TWO)
    expected = 0.0
    for mods in emb.values():
        x, y = (F.normalize(mods[m] - mods[m].mean(0), dim=1) for m in sorted(mods))
        gram = lambda u, v: u @ v.T  # noqa: E731
        expected += ((gram(x, y) - gram(y, x)).square().sum() + (gram(x, x) - gram(y, y)).square().sum()) / B
    assert BrokenBind().symmetry(Batch(emb, emb, 0)).item() == pytest.approx(expected.item(), rel=1e-5)  # default
    raw = BrokenBind(sym_centring=False).symmetry(Batch(emb, emb, 0))  # the paper's
    assert raw.item() != pytest.approx(expected.item(), rel=1e-2)


# -- when MOX switches on --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("max_epochs", "start"), [(50, 25), (10, 5), (7, 3), (1, 0)])
def test_consistency_fraction_is_a_share_of_the_run_length(max_epochs, start):
    emb = layout(12, TWO)
    method = BrokenBind(consistency_fraction=0.5)
    # BindingModule passes its trainer's max_epochs with each batch (test_suite checks that)
    assert "mox" in run(method, emb, epoch=start, max_epochs=max_epochs)
    if start > 0:
        assert "mox" not in run(method, emb, epoch=start - 1, max_epochs=max_epochs)


def test_paper_preset_switches_mox_on_after_25_of_50_epochs_and_spells_out_the_paper():
    spec = yaml.safe_load((METHODS / "brokenbind_paper.yaml").read_text())["model"]["method"]["init_args"]
    assert BrokenBind(**spec).mox_start(max_epochs=50) == 25
    assert {k: spec[k] for k in PAPER_RECIPE} == PAPER_RECIPE
    assert spec["push_away_weight"] == 1.0 and spec["sym_normalizer"] == "batch" and spec["logit_scale"] == 10.0
    assert all(spec[f"{w}_weight"] == 1.0 for w in ("clip", "sym", "mox", "fro"))


def test_consistency_epochs_overrides_the_fraction_and_a_missing_run_length_is_a_clear_error():
    emb = layout(13, TWO)
    assert "mox" in run(BrokenBind(consistency_epochs=0, consistency_fraction=0.9), emb, epoch=0)
    assert "mox" in run(BrokenBind(consistency_fraction=0.0), emb, epoch=0)  # no run length needed
    assert "mox" not in run(BrokenBind(consistency_fraction=1.0), emb, epoch=10**6)
    for unbounded in (None, -1):  # Lightning's -1: no epoch limit
        with pytest.raises(ConfigError, match="consistency_fraction needs the run length"):
            run(BrokenBind(consistency_fraction=0.3), emb, epoch=0, max_epochs=unbounded)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"push_away_weight": -0.1}, "push_away_weight must be non-negative"),
        ({"sym_weight": float("nan")}, "sym_weight must be non-negative"),
        ({"consistency_fraction": 1.5}, "consistency_fraction must lie in"),
        ({"consistency_epochs": -1}, "consistency_epochs must be"),
        ({"push_away": "some"}, "push_away must be one of"),
        ({"sym_normalizer": "rows"}, "sym_normalizer must be one of"),
    ],
)
def test_brokenbind_rejects_bad_recipe_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BrokenBind(**kwargs)


# -- CentroBind and FABind -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("renormalize", [True, False])
def test_centrobind_aligns_each_modality_to_the_per_sample_centroid(renormalize):
    emb = layout(8, {"d1": ["a", "b"], "d2": ["b", "c", "e"]})
    value = run(CentroBind(renormalize=renormalize, logit_scale=3.0), emb, epoch=0)["centro"]
    expected = 0.0
    for mods in emb.values():
        centroid = sum(mods.values()) / len(mods)
        if renormalize:
            centroid = F.normalize(centroid, dim=1)
        for f in mods.values():
            expected += 0.5 * (ce_loop(f, centroid, 3.0) + ce_loop(centroid, f, 3.0))
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_centrobind_stop_gradient_is_a_switch():
    emb = layout(9, TWO)
    for ds in emb:
        for m in emb[ds]:
            emb[ds][m].requires_grad_(True)
    detached = torch.autograd.grad(run(CentroBind(), emb, epoch=0)["centro"], emb["d1"]["a"])[0]
    through = torch.autograd.grad(run(CentroBind(detach_anchor=False), emb, epoch=0)["centro"], emb["d1"]["a"])[0]
    assert not torch.allclose(detached, through)


def test_fabind_anchor_keeps_only_pairs_with_the_anchor_and_requires_it_everywhere():
    emb = layout(10, {"d1": ["a", "b", "c"], "d2": ["b", "c"]})
    value = run(FABind(anchor="b", logit_scale=2.0), emb, epoch=0)["clip"]
    expected = sum(
        0.5 * (ce_loop(emb[ds]["b"], emb[ds][n], 2.0) + ce_loop(emb[ds][n], emb[ds]["b"], 2.0))
        for ds, n in (("d1", "a"), ("d1", "c"), ("d2", "c"))
    )
    assert value.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="anchor 'a' is not observed by datasets"):
        run(FABind(anchor="a"), emb, epoch=0)
