"""Prior-art methods (cmcr, impute, transitive) and issue 15's MOX variants against loop and closed-form references.

References are written from the docstrings' formulas with Python loops or NumPy on float64 values of the inputs; none
calls the function it checks. The CLI tests at the end run each method end to end on mfeat.
"""

import csv
import logging
import math
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import Ridge

from brokenbind.callbacks import EmergentBinding
from brokenbind.callbacks.emergent import anchor_holder
from brokenbind.cli import cli as main
from brokenbind.errors import ConfigError
from brokenbind.graph import PairingGraph
from brokenbind.losses.mox import kernel_transition, orthogonal_logits, recentre
from brokenbind.methods import CMCR, BrokenBind, FABind, Impute, Transitive
from brokenbind.methods.brokenbind import PAPER_RECIPE
from brokenbind.methods.impute import DEFAULT_RIDGES
from brokenbind.metrics.transitive import anchor_subset, blended, transitive_embeddings
from brokenbind.transfer import PivotMap, fit_ridge, predict_ridge
from datamodules.base import Flow

from .binding import pseudo_of, run
from .test_faults import stop_at
from .test_losses import _ref_centred, _ref_cross_cyclic, _ref_in_cyclic
from .test_methods import ce_loop

B, D = 5, 12
TWO = {"d1": ["a", "b"], "d2": ["b", "c"]}
CHAIN = {"d1": ["a", "b"], "d2": ["b", "c"], "d3": ["c", "e"]}
SCALES = {"a": 2.0, "b": 5.0, "c": 9.0, "e": 3.0}  # a different logit scale per modality: each term's anchor counts
ROOT = Path(__file__).resolve().parents[1]


def layout(seed: int, spec: dict[str, list[str]], rows: int = B) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {
        ds: {m: F.normalize(torch.randn(rows, D, generator=gen, dtype=torch.float64), dim=1).float() for m in mods}
        for ds, mods in spec.items()
    }


def arr(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def kernel_loop(own: torch.Tensor | np.ndarray, pivot, target, tau: float) -> np.ndarray:
    """Row i: Σ_k softmax_k(⟨own_i, pivot_k⟩ / τ) target_k, one row and one memory row at a time."""
    own, pivot, target = (np.asarray(arr(x) if isinstance(x, torch.Tensor) else x) for x in (own, pivot, target))
    out = np.zeros((len(own), target.shape[1]))
    for i in range(len(own)):
        logits = [float(own[i] @ pivot[k]) / tau for k in range(len(pivot))]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        total = math.fsum(weights)
        for k in range(len(pivot)):
            out[i] += weights[k] / total * target[k]
    return out


def sym_ce(x, y, sx: float, sy: float) -> float:
    """C-MCR / CLIP's symmetric InfoNCE: the mean of x→y (scale of x) and y→x (scale of y)."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    return 0.5 * (ce_loop(x, y, sx) + ce_loop(y, x, sy))


# ----------------------------------------------------------------------------------------------------------------------
# losses.mox: kernel transition, recentring, orthogonal-subspace cosines
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rows", "memory", "tau"), [(5, 5, 0.05), (3, 8, 0.5), (6, 2, 0.01)])
def test_kernel_transition_matches_a_row_by_row_softmax_loop(rows, memory, tau):
    gen = torch.Generator().manual_seed(rows + memory)
    own, pivot, target = (F.normalize(torch.randn(n, D, generator=gen), dim=1) for n in (rows, memory, memory))
    got = kernel_transition(own, pivot, target, tau)
    assert got.shape == (rows, D) and got.dtype == torch.float32
    np.testing.assert_allclose(arr(got), kernel_loop(own, pivot, target, tau), rtol=1e-5, atol=1e-6)


def test_kernel_transition_at_a_small_temperature_copies_the_nearest_pivot_s_target():
    emb = layout(1, TWO)
    nearest = (emb["d1"]["b"] @ emb["d2"]["b"].T).argmax(1)
    got = kernel_transition(emb["d1"]["b"], emb["d2"]["b"], emb["d2"]["c"], 1e-4)
    torch.testing.assert_close(got, emb["d2"]["c"][nearest])


def test_orthogonal_logits_equal_cosines_after_explicit_projection_per_pair():
    gen = torch.Generator().manual_seed(2)
    # queries and keys of any length (the closed form uses |q|², |k|²); the pivot rows are unit, as embeddings are
    query, keys = torch.randn(4, D, generator=gen), 2.0 * torch.randn(6, D, generator=gen)
    pivot = F.normalize(torch.randn(4, D, generator=gen), dim=1)
    q, k, b = arr(query), arr(keys), arr(pivot)
    expected = np.zeros((4, 6))
    for i in range(4):
        for j in range(6):
            qp = q[i] - (q[i] @ b[i]) * b[i]
            kp = k[j] - (k[j] @ b[i]) * b[i]
            expected[i, j] = qp @ kp / (np.linalg.norm(qp) * np.linalg.norm(kp))
    np.testing.assert_allclose(arr(orthogonal_logits(query, keys, pivot)), expected, rtol=1e-5, atol=1e-6)


def test_orthogonal_logits_ignore_the_pivot_direction():
    emb = layout(3, TWO)
    q, b, k = emb["d1"]["a"], emb["d1"]["b"], emb["d2"]["c"]
    shifted = F.normalize(q + 3.0 * b, dim=1)  # the same query plus more of its own pivot
    torch.testing.assert_close(orthogonal_logits(shifted, k, b), orthogonal_logits(q, k, b), rtol=1e-4, atol=1e-5)


def test_recentre_moves_the_mean_onto_the_target_mean_and_keeps_the_spread():
    gen = torch.Generator().manual_seed(4)
    pseudo, target = torch.randn(7, D, generator=gen), torch.randn(9, D, generator=gen) + 2.0
    got = recentre(pseudo, target.mean(0))
    np.testing.assert_allclose(arr(got).mean(0), arr(target).mean(0), atol=1e-6)
    np.testing.assert_allclose(arr(got) - arr(pseudo), np.tile(arr(target).mean(0) - arr(pseudo).mean(0), (7, 1)),
                               atol=1e-5)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# CMCR
# ----------------------------------------------------------------------------------------------------------------------
def cmcr_reference(emb, memory, tau: float, intra_weight: float, scales=SCALES) -> dict[str, float]:
    """C-MCR's terms written out for the two-dataset layout d1 (a, b), d2 (b, c), noise off: retrieval of the missing
    modality from ``memory`` through b, symmetric InfoNCE for every real and pseudo pair, L2 within observed pairs."""
    a1, b1, b2, c2 = (arr(emb[ds][m]) for ds, m in (("d1", "a"), ("d1", "b"), ("d2", "b"), ("d2", "c")))
    c1 = unit_rows(kernel_loop(b1, memory["d2"]["b"], memory["d2"]["c"], tau))
    a2 = unit_rows(kernel_loop(b2, memory["d1"]["b"], memory["d1"]["a"], tau))
    s = scales
    clip = sym_ce(a1, b1, s["a"], s["b"]) + sym_ce(b2, c2, s["b"], s["c"])
    pseudo = (sym_ce(a1, c1, s["a"], s["c"]) + sym_ce(b1, c1, s["b"], s["c"])) / 2
    pseudo += (sym_ce(b2, a2, s["b"], s["a"]) + sym_ce(c2, a2, s["c"], s["a"])) / 2
    intra = (np.mean(np.sum((a1 - b1) ** 2, 1)) + np.mean(np.sum((b2 - c2) ** 2, 1))) / 2
    return {"clip": clip, "pseudo": pseudo, "intra": intra_weight * intra}


def assert_terms(got: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert got[name].item() == pytest.approx(value, rel=1e-5), name


@pytest.mark.parametrize("tau", [0.01, 0.2])
def test_cmcr_terms_match_a_loop_reference(tau):
    emb = layout(10, TWO)
    method = CMCR(retrieval_temperature=tau, noise_std=0.0, intra_weight=0.3, modality_scales=SCALES)
    assert_terms(run(method, emb, epoch=0), cmcr_reference(emb, emb, tau, 0.3))  # first step: the memory is the batch


def test_cmcr_without_intra_weight_has_no_intra_term_and_weights_pseudo():
    emb = layout(11, TWO)
    reference = cmcr_reference(emb, emb, 0.1, 0.0)
    got = run(CMCR(retrieval_temperature=0.1, noise_std=0.0, intra_weight=0.0, pseudo_weight=0.5,
               modality_scales=SCALES), emb, epoch=0)  # fmt: skip
    assert sorted(got) == ["clip", "pseudo"]
    assert got["pseudo"].item() == pytest.approx(0.5 * reference["pseudo"], rel=1e-5)


def test_cmcr_memory_is_a_queue_of_the_newest_rows_and_later_steps_retrieve_from_it():
    first, second = layout(12, TWO), layout(13, TWO)
    method = CMCR(memory_size=7, retrieval_temperature=0.2, noise_std=0.0, intra_weight=0.1, modality_scales=SCALES)
    run(method, first, epoch=0)
    assert {ds: {m: len(f) for m, f in mods.items()} for ds, mods in method.memory.rows.items()} == {
        "d1": {"a": 5, "b": 5}, "d2": {"b": 5, "c": 5}
    }  # fmt: skip
    terms = run(method, second, epoch=0)
    for ds, mods in TWO.items():
        for m in mods:
            expected = torch.cat([second[ds][m], first[ds][m]])[:7]  # the newest first, then truncated
            assert torch.equal(method.memory.rows[ds][m], expected)
            assert not method.memory.rows[ds][m].requires_grad
    memory = {ds: {m: arr(f) for m, f in mods.items()} for ds, mods in method.memory.rows.items()}
    assert_terms(terms, cmcr_reference(second, memory, 0.2, 0.1))


def test_cmcr_memory_smaller_than_a_batch_keeps_its_first_rows():
    emb = layout(14, TWO)
    method = CMCR(memory_size=3, noise_std=0.0)
    run(method, emb, epoch=0)
    assert all(torch.equal(method.memory.rows[ds][m], emb[ds][m][:3]) for ds, mods in TWO.items() for m in mods)


def test_cmcr_noise_is_drawn_from_its_own_seeded_generator():
    emb = layout(15, TWO)
    torch.manual_seed(21)
    got = run(CMCR(retrieval_temperature=0.2, noise_std=0.05, intra_weight=0.3, modality_scales=SCALES), emb, epoch=0)
    gen = torch.Generator().manual_seed(21)  # SharedNoise seeds from torch.initial_seed(), dataset by dataset
    noisy = {ds: {m: F.normalize(f + 0.05 * torch.randn(f.shape, generator=gen), dim=1) for m, f in mods.items()}
             for ds, mods in emb.items()}  # fmt: skip
    # retrieval: noisy queries against the clean memory; intra: the clean embeddings
    reference = cmcr_reference(noisy, emb, 0.2, 0.3)
    reference["intra"] = cmcr_reference(emb, emb, 0.2, 0.3)["intra"]
    assert_terms(got, reference)


def test_cmcr_state_round_trip_gives_identical_subsequent_terms(tmp_path):
    steps = [layout(seed, TWO) for seed in (16, 17, 18)]
    torch.manual_seed(3)
    trained = CMCR(memory_size=8, retrieval_temperature=0.2, noise_std=0.05)
    for emb in steps[:2]:
        run(trained, emb, epoch=0)
    torch.save(trained.state_dict(), tmp_path / "state.pt")
    assert {"memory._extra_state", "noise._extra_state"} <= set(trained.state_dict())
    resumed = CMCR(memory_size=8, retrieval_temperature=0.2, noise_std=0.05)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))  # as a checkpoint is loaded
    fresh = CMCR(memory_size=8, retrieval_temperature=0.2, noise_std=0.05)
    expected, got, other = (run(m, steps[2], epoch=0) for m in (trained, resumed, fresh))
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert not torch.equal(other["pseudo"], expected["pseudo"])  # the restored state matters
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    older = {("_extra_state" if k == "memory._extra_state" else k): v for k, v in saved.items()}
    from_older = CMCR(memory_size=8, retrieval_temperature=0.2, noise_std=0.05)
    from_older.load_state_dict(older)  # a checkpoint from before methods.memory held the queue as the method's state
    assert torch.equal(run(from_older, steps[2], epoch=0)["pseudo"], expected["pseudo"])


def test_cmcr_chains_retrieve_level_by_level():
    emb = layout(19, CHAIN)
    tau = 0.2
    method = CMCR(retrieval_temperature=tau, noise_std=0.0, intra_weight=0.0, modality_scales=SCALES)
    terms = run(method, emb, epoch=0)
    e = {ds: {m: arr(f) for m, f in mods.items()} for ds, mods in emb.items()}
    c1 = unit_rows(kernel_loop(e["d1"]["b"], e["d2"]["b"], e["d2"]["c"], tau))
    b3 = unit_rows(kernel_loop(e["d3"]["c"], e["d2"]["c"], e["d2"]["b"], tau))
    expected = {
        "d1": {"c": c1, "e": unit_rows(kernel_loop(c1, e["d3"]["c"], e["d3"]["e"], tau))},  # e through pseudo c
        "d2": {"a": unit_rows(kernel_loop(e["d2"]["b"], e["d1"]["b"], e["d1"]["a"], tau)),
               "e": unit_rows(kernel_loop(e["d2"]["c"], e["d3"]["c"], e["d3"]["e"], tau))},
        "d3": {"b": b3, "a": unit_rows(kernel_loop(b3, e["d1"]["b"], e["d1"]["a"], tau))},
    }  # fmt: skip
    pseudo = 0.0
    for ds, targets in expected.items():
        got = method.retrieve(emb, ds)
        assert sorted(got) == sorted(targets)
        for t, rows in targets.items():
            np.testing.assert_allclose(arr(got[t]), rows, rtol=1e-5, atol=1e-6)
            pseudo += sum(sym_ce(e[ds][m], rows, SCALES[m], SCALES[t]) for m in e[ds]) / len(e[ds])
    assert terms["pseudo"].item() == pytest.approx(pseudo, rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "spec", "match"),
    [
        ({"memory_size": 0}, TWO, "memory_size must be a positive number of rows, got 0"),
        ({"retrieval_temperature": 0.0}, TWO, "retrieval_temperature must be positive, got 0.0"),
        ({"noise_std": -0.1}, TWO, "noise_std must be non-negative, got -0.1"),
        ({"pseudo_weight": -1.0}, TWO, "pseudo_weight must be non-negative"),
        ({"intra_weight": float("nan")}, TWO, "intra_weight must be non-negative"),
        ({}, {"d1": ["a"], "d2": ["a"]}, "cmcr needs at least one dataset observing two modalities"),
        ({}, {"d1": ["a", "b"]}, "cmcr found no dataset lacking a modality that a shared pivot links it to"),
        ({}, {"d1": ["a", "b", "e"], "d2": ["a", "b", "c"]}, "share several modalities"),
    ],
)
def test_cmcr_configuration_errors(kwargs, spec, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        run(CMCR(**kwargs), layout(20, spec), epoch=0)


# ----------------------------------------------------------------------------------------------------------------------
# Impute
# ----------------------------------------------------------------------------------------------------------------------
def regression_data(seed: int, rows: int, k: int = 6, noise: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(k, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(rows, k, generator=gen, dtype=torch.float64) + 1.5
    return x.float(), (x @ weights + 3.0 + noise * torch.randn(rows, 4, generator=gen, dtype=torch.float64)).float()


@pytest.mark.parametrize("ridge", [0.0, 0.1, 10.0])
def test_fit_ridge_equals_the_closed_form_with_intercept_and_sklearn(ridge):
    x, y = regression_data(30, 40)
    model = fit_ridge(x, y, ridge)
    xs, ys = arr(x), arr(y)
    xc, yc = xs - xs.mean(0), ys - ys.mean(0)
    w = np.linalg.solve(xc.T @ xc / len(xs) + ridge * np.eye(xs.shape[1]), xc.T @ yc / len(xs))
    np.testing.assert_allclose(arr(model[1]), w, rtol=1e-9)
    query = arr(regression_data(31, 7)[0])
    expected = (query - xs.mean(0)) @ w + ys.mean(0)
    got = predict_ridge(model, torch.as_tensor(query, dtype=torch.float32))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(arr(got), expected, rtol=1e-5, atol=1e-5)
    # sklearn's penalty is α‖W‖² against the summed squared error: α = λ·n on centred data
    sk = Ridge(alpha=ridge * len(xs), fit_intercept=True, solver="cholesky").fit(xs, ys)
    np.testing.assert_allclose(arr(model[1]), sk.coef_.T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(expected, sk.predict(query), rtol=1e-7, atol=1e-9)


def test_plan_imputes_both_ways_for_two_datasets_and_level_by_level_along_a_chain():
    assert PairingGraph(TWO).steps() == [("d1", "b", "c"), ("d2", "b", "a")]
    assert PairingGraph({"support": ["pix", "zer"], "evaluation": ["fou", "pix"]}).steps() == [
        ("support", "pix", "fou"), ("evaluation", "pix", "zer")
    ]  # fmt: skip
    assert PairingGraph(CHAIN).steps() == [
        ("d1", "b", "c"), ("d1", "c", "e"),  # e from the imputed c
        ("d2", "b", "a"), ("d2", "c", "e"),
        ("d3", "c", "b"), ("d3", "b", "a"),
    ]  # fmt: skip
    assert PairingGraph({"d1": ["a", "b"], "d2": ["a", "b"]}).steps() == []
    with pytest.raises(ConfigError, match="share several modalities"):
        PairingGraph({"d1": ["a", "b", "e"], "d2": ["a", "b", "c"]}).steps()


def fitted(spec: dict[str, list[str]], seed: int = 40) -> Impute:
    """An Impute whose regressors are fitted on random features, without ``prepare``."""
    method = Impute(logit_scale=5.0)
    method.imputer.steps = PairingGraph(spec).steps()
    for i, step in enumerate(method.imputer.steps):
        x, y = regression_data(seed + i, 30)
        method.imputer.maps[step] = PivotMap(fit_ridge(x, y[:, :3].repeat(1, 2), 0.1))
    return method


def test_complete_adds_exactly_the_imputed_modality_and_chains_through_imputed_ones():
    method = fitted(CHAIN)
    gen = torch.Generator().manual_seed(41)
    features = {ds: {m: torch.randn(B, 6, generator=gen) for m in mods} for ds, mods in CHAIN.items()}
    before = {ds: dict(mods) for ds, mods in features.items()}
    out = method.complete(features)
    assert features == before  # the batch's own dict is not modified
    assert {ds: sorted(mods) for ds, mods in out.items()} == {ds: ["a", "b", "c", "e"] for ds in CHAIN}
    for ds, mods in features.items():
        for m, f in mods.items():
            assert out[ds][m] is f  # real features pass through untouched
    maps = {step: m.model for step, m in method.imputer.maps.items()}
    c1 = predict_ridge(maps["d1", "b", "c"], features["d1"]["b"])
    torch.testing.assert_close(out["d1"]["c"], c1)
    torch.testing.assert_close(out["d1"]["e"], predict_ridge(maps["d1", "c", "e"], c1))
    b3 = predict_ridge(maps["d3", "c", "b"], features["d3"]["c"])
    torch.testing.assert_close(out["d3"]["a"], predict_ridge(maps["d3", "b", "a"], b3))


def test_impute_trains_as_the_oracle_on_completed_rows():
    method = fitted(TWO)
    gen = torch.Generator().manual_seed(42)
    features = {ds: {m: torch.randn(B, 6, generator=gen) for m in mods} for ds, mods in TWO.items()}
    emb = {ds: {m: F.normalize(f, dim=1) for m, f in mods.items()} for ds, mods in method.complete(features).items()}
    pairs = (("a", "b"), ("a", "c"), ("b", "c"))  # the imputed modality joins every pair of its row
    expected = sum(sym_ce(arr(emb[ds][m]), arr(emb[ds][n]), 5.0, 5.0) for ds in TWO for m, n in pairs)
    assert run(method, emb, epoch=0)["clip"].item() == pytest.approx(expected, rel=1e-5)


def fake_encoder(data: dict[str, dict[str, dict[str, torch.Tensor]]], calls: list):
    def encode(dataset: str, split: str, modalities: list[str]) -> dict[str, torch.Tensor]:
        calls.append((dataset, split, tuple(modalities)))
        return {m: data[dataset][split][m] for m in modalities}

    return encode


def split_data(seed: int) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """Features of d1 (a, b) and d2 (b, c), every modality in every split (encode_split loads hidden ones too):
    c is a noisy linear function of b (few training rows, so that a middle λ generalises best), a another one."""
    data = {}
    for i, ds in enumerate(TWO):
        data[ds] = {}
        for j, split in enumerate(("train", "val")):
            x, y = regression_data(seed + 10 * i + j, 12 if split == "train" else 200, k=10, noise=2.0)
            data[ds][split] = {"b": x, "c": y, "a": -y}
    return data


def validation_errors(x, y, vx, vy, ridges) -> dict[float, float]:
    errors = {}
    for r in ridges:
        xc = arr(x) - arr(x).mean(0)
        w = np.linalg.solve(xc.T @ xc / len(x) + r * np.eye(x.shape[1]), xc.T @ (arr(y) - arr(y).mean(0)) / len(x))
        errors[r] = float(np.mean(((arr(vx) - arr(x).mean(0)) @ w + arr(y).mean(0) - arr(vy)) ** 2))
    return errors


def test_impute_chooses_the_ridge_with_the_least_validation_error_on_the_datasets_observing_both():
    data, calls = split_data(50), []
    method = Impute()
    method.prepare(fake_encoder(data, calls), PairingGraph(TWO))
    assert method.imputer.steps == [("d1", "b", "c"), ("d2", "b", "a")]
    assert calls == [("d2", "train", ("b", "c")), ("d2", "val", ("b", "c")),
                     ("d1", "train", ("b", "a")), ("d1", "val", ("b", "a"))]  # fmt: skip
    for (scored, pivot, target), holder in ((("d1", "b", "c"), "d2"), (("d2", "b", "a"), "d1")):
        train, val = data[holder]["train"], data[holder]["val"]
        errors = validation_errors(train[pivot], train[target], val[pivot], val[target], DEFAULT_RIDGES)
        best = min(errors, key=errors.__getitem__)
        assert best not in (DEFAULT_RIDGES[0], DEFAULT_RIDGES[-1])  # the data make the choice a real one
        assert method.imputer.chosen_ridge[pivot, target] == best
        for got, want in zip(method.imputer.maps[scored, pivot, target].model,
                             fit_ridge(train[pivot], train[target], best), strict=True):  # fmt: skip
            torch.testing.assert_close(got, want)


def test_impute_fit_on_all_fits_on_every_dataset_and_validates_on_the_observing_ones():
    data, calls = split_data(60), []
    method = Impute(fit_on="all", ridges=(0.01, 1.0, 100.0))
    method.prepare(fake_encoder(data, calls), PairingGraph(TWO))
    assert calls == [("d1", "train", ("b", "c")), ("d2", "train", ("b", "c")), ("d2", "val", ("b", "c")),
                     ("d1", "train", ("b", "a")), ("d2", "train", ("b", "a")), ("d1", "val", ("b", "a"))]  # fmt: skip
    x = torch.cat([data[ds]["train"]["b"] for ds in TWO])
    y = torch.cat([data[ds]["train"]["c"] for ds in TWO])
    val = data["d2"]["val"]
    errors = validation_errors(x, y, val["b"], val["c"], (0.01, 1.0, 100.0))
    best = min(errors, key=errors.__getitem__)
    assert method.imputer.chosen_ridge["b", "c"] == best
    torch.testing.assert_close(method.imputer.maps["d1", "b", "c"].model.weight, fit_ridge(x, y, best).weight)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ridges": ()}, "ridges must be a non-empty list of non-negative values, got []"),
        ({"ridges": (0.1, -1.0)}, "ridges must be a non-empty list of non-negative values, got [0.1, -1.0]"),
        ({"fit_on": "hidden"}, "fit_on must be one of ['observed', 'all'], got 'hidden'"),
    ],
)
def test_impute_configuration_errors(kwargs, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        Impute(**kwargs)


def test_impute_refuses_layouts_without_a_missing_modality_and_completion_before_fit():
    with pytest.raises(ConfigError, match="impute found no dataset lacking a modality"):
        Impute().prepare(fake_encoder({}, []), PairingGraph({"d1": ["a", "b"], "d2": ["a", "b"]}))
    with pytest.raises(ConfigError, match="impute has no fitted regressor"):
        Impute().complete({"d1": {"a": torch.zeros(2, 3)}})


# ----------------------------------------------------------------------------------------------------------------------
# Transitive (ASIF relative representations)
# ----------------------------------------------------------------------------------------------------------------------
def asif_score(q: np.ndarray, t: np.ndarray, anchor_q: np.ndarray, anchor_t: np.ndarray, k: int, p: float) -> float:
    """ASIF's score of one query against one target, from scratch: cosines to every anchor, top-k kept, clamped at 0,
    raised to p, normalised, then the dot product of the two sparse vectors."""

    def relative(x: np.ndarray, anchors: np.ndarray) -> list[float]:
        sims = [float(x @ a) for a in anchors]
        keep = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        row = [max(sims[i], 0.0) ** p if i in keep else 0.0 for i in range(len(sims))]
        norm = math.sqrt(math.fsum(v * v for v in row))
        return [v / norm for v in row]

    return math.fsum(u * v for u, v in zip(relative(q, anchor_q), relative(t, anchor_t), strict=True))


@pytest.mark.parametrize(("top_k", "power"), [(3, 8.0), (7, 3.0), (9, 1.0)])
def test_transitive_scores_equal_asif_computed_pair_by_pair(top_k, power):
    gen = torch.Generator().manual_seed(70)
    query, target, anchor_q, anchor_t = (F.normalize(torch.randn(n, D, generator=gen), dim=1) for n in (4, 6, 9, 9))
    rq, rt = transitive_embeddings(query, target, anchor_q, anchor_t, top_k, power)
    scores = arr(rq @ rt.T)
    q, t, aq, at = (arr(x) for x in (query, target, anchor_q, anchor_t))
    expected = np.array([[asif_score(q[i], t[j], aq, at, top_k, power) for j in range(6)] for i in range(4)])
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)
    assert ((arr(rq) > 0).sum(1) <= top_k).all()


def test_transitive_top_k_beyond_the_anchor_count_keeps_every_anchor():
    gen = torch.Generator().manual_seed(71)
    query, target = (F.normalize(torch.randn(4, D, generator=gen), dim=1) for _ in range(2))
    anchors = F.normalize(torch.randn(5, D, generator=gen), dim=1)
    anchors_t = F.normalize(torch.randn(5, D, generator=gen), dim=1)
    every = transitive_embeddings(query, target, anchors, anchors_t, top_k=5, power=2.0)
    for top_k in (6, 800):
        beyond = transitive_embeddings(query, target, anchors, anchors_t, top_k=top_k, power=2.0)
        assert all(torch.equal(x, y) for x, y in zip(beyond, every, strict=True))
    dense = F.normalize((query @ anchors.T).clamp_min(0).pow(2), dim=1)
    torch.testing.assert_close(every[0], dense)


def test_transitive_anchor_pairs_must_align():
    x = torch.eye(3, D)
    with pytest.raises(ValueError, match="anchor pairs must align row by row, got 3 and 2"):
        transitive_embeddings(x, x, x, x[:2])


def anchored_module(method, datasets: dict[str, list[str]], anchors: dict[str, torch.Tensor], calls: list):
    """A LightningModule as ``EmergentBinding._represent`` reads it: ``encode`` gives ``anchors`` and records its calls,
    the model's ``project`` is the identity."""

    def encode(dataset, split, modalities, rows=None):
        calls.append((dataset, split, modalities) if rows is None else (dataset, split, modalities, rows.tolist()))
        return anchors if rows is None else {m: a[rows] for m, a in anchors.items()}

    n = len(next(iter(anchors.values()))) if anchors else 0
    splits = {d: {"train": range(n)} for d in datasets}
    graph = PairingGraph(datasets)
    return SimpleNamespace(
        trainer=SimpleNamespace(datamodule=SimpleNamespace(graph=graph, splits=splits)), encode=encode,
        model=SimpleNamespace(project=lambda m, f: f), method=method,
    )  # fmt: skip


def test_transitive_retrieval_goes_through_the_anchors_and_direct_retrieval_never_computes_them():
    gen = torch.Generator().manual_seed(72)
    query, target, anchor_q, anchor_t = (F.normalize(torch.randn(n, D, generator=gen), dim=1) for n in (3, 3, 8, 8))
    datasets, flow = {"evaluation": ["fou", "pix"], "support": ["pix", "zer"]}, Flow("evaluation", "fou->pix->zer")
    calls = []
    module = anchored_module(Transitive(top_k=4, power=2.0), datasets, {"pix": anchor_q, "zer": anchor_t}, calls)
    got = EmergentBinding._represent(module, flow, query, target)
    expected = transitive_embeddings(query, target, anchor_q, anchor_t, 4, 2.0)
    assert all(torch.equal(x, y) for x, y in zip(got, expected, strict=True))
    assert calls == [("support", "train", ["pix", "zer"])]
    assert (Transitive.transitive_weight, FABind.transitive_weight, BrokenBind().transitive_weight) == (1, 0, 0.25)
    assert BrokenBind(**PAPER_RECIPE).transitive_weight == 0

    calls.clear()
    direct = EmergentBinding._represent(anchored_module(FABind(), datasets, {}, calls), flow, query, target)
    assert direct == (query, target) and calls == []


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_blended_scores_are_the_weighted_sum_of_the_cosine_and_the_relative_score(weight):
    gen = torch.Generator().manual_seed(5)
    q, t = (F.normalize(torch.randn(n, D, generator=gen), dim=1) for n in (4, 6))
    rq, rt = (F.normalize(torch.rand(n, 9, generator=gen), dim=1) for n in (4, 6))
    bq, bt = blended(q, rq, weight), blended(t, rt, weight)
    expected = [[(1 - weight) * float(q[i] @ t[j]) + weight * float(rq[i] @ rt[j]) for j in range(6)] for i in range(4)]
    np.testing.assert_allclose(arr(bq @ bt.T), np.array(expected), atol=1e-6)
    np.testing.assert_allclose(arr(bq.norm(dim=1)), np.ones(4), atol=1e-6)
    np.testing.assert_allclose(arr(bt.norm(dim=1)), np.ones(6), atol=1e-6)
    with pytest.raises(ValueError, match=r"weight must lie in \[0, 1\], got 1.5"):
        blended(q, rq, 1.5)


def test_a_blended_brokenbind_score_goes_through_the_anchors_where_a_dataset_observes_pivot_and_target():
    gen = torch.Generator().manual_seed(73)
    query, target, anchor_q, anchor_t = (F.normalize(torch.randn(n, D, generator=gen), dim=1) for n in (3, 3, 8, 8))
    calls, flow = [], Flow("evaluation", "fou->pix->zer")
    method = BrokenBind(transitive_weight=0.25)
    module = anchored_module(method, {"evaluation": ["fou", "pix"], "support": ["pix", "zer"]},
                             {"pix": anchor_q, "zer": anchor_t}, calls)  # fmt: skip
    got = EmergentBinding._represent(module, flow, query, target)
    rq, rt = transitive_embeddings(query, target, anchor_q, anchor_t, method.top_k, method.power)
    np.testing.assert_allclose(arr(got[0] @ got[1].T), arr(0.75 * query @ target.T + 0.25 * rq @ rt.T), atol=1e-6)
    assert calls == [("support", "train", ["pix", "zer"])]

    calls.clear()  # a chain: no dataset observes pix and zer, so the cosine alone (Transitive refuses it)
    chain = {"evaluation": ["fou", "pix"], "middle": ["pix", "kar"], "support": ["kar", "zer"]}
    assert EmergentBinding._represent(anchored_module(method, chain, {}, calls), flow, query, target) == (query, target)
    no_pivot = Flow("evaluation", "fou->zer")
    assert EmergentBinding._represent(module, no_pivot, query, target) == (query, target)
    assert calls == []
    for refusing, flow_refused in ((Transitive(), flow), (BrokenBind(transitive_weight=1.0), flow)):
        with pytest.raises(ConfigError, match="no training dataset observes both"):
            EmergentBinding._represent(anchored_module(refusing, chain, {}, calls), flow_refused, query, target)
    with pytest.raises(ConfigError, match="has no pivot"):
        EmergentBinding._represent(anchored_module(Transitive(), chain, {}, calls), no_pivot, query, target)


def test_anchors_beyond_max_anchors_are_a_fixed_subset_of_the_training_rows():
    assert anchor_subset(5, 5) is None
    subset = anchor_subset(10, 4)
    assert subset.tolist() == sorted(set(subset.tolist())) and len(subset) == 4 and subset.max() < 10
    assert torch.equal(subset, anchor_subset(10, 4)) and not torch.equal(subset, anchor_subset(10, 4, seed=1))

    gen = torch.Generator().manual_seed(74)
    query, target, anchor_q, anchor_t = (F.normalize(torch.randn(n, D, generator=gen), dim=1) for n in (3, 3, 10, 10))
    calls, flow, method = [], Flow("evaluation", "fou->pix->zer"), Transitive(top_k=800, power=2.0)
    method.max_anchors = 4
    module = anchored_module(method, {"evaluation": ["fou", "pix"], "support": ["pix", "zer"]},
                             {"pix": anchor_q, "zer": anchor_t}, calls)  # fmt: skip
    got = EmergentBinding._represent(module, flow, query, target)
    expected = transitive_embeddings(query, target, anchor_q[subset], anchor_t[subset], 800, 2.0)
    assert all(torch.equal(x, y) for x, y in zip(got, expected, strict=True))
    assert calls == [("support", "train", ["pix", "zer"], subset.tolist())]


def test_a_blended_score_names_at_fit_start_the_flows_scored_by_the_cosine_alone(caplog):
    chain = {"evaluation": ["fou", "pix"], "middle": ["pix", "kar"], "support": ["kar", "zer"]}
    module = anchored_module(BrokenBind(transitive_weight=0.25), chain, {}, [])
    flows = [Flow("evaluation", "fou->pix->zer"), Flow("middle", "pix->kar->zer")]
    module.trainer = SimpleNamespace(ckpt_path=None, datamodule=SimpleNamespace(graph=PairingGraph(chain), flows=flows))
    with caplog.at_level(logging.INFO):
        EmergentBinding().on_fit_start(module.trainer, module)
    assert "scored by the embeddings' cosine alone: ['fou->pix->zer']" in caplog.text
    module.method = Transitive()
    with pytest.raises(ConfigError, match="no training dataset observes both"):
        EmergentBinding().on_fit_start(module.trainer, module)
    module.method = SimpleNamespace(name="mine", transitive_weight=1.5)  # a class attribute of one's own method
    with pytest.raises(ConfigError, match=r"method 'mine': transitive_weight must lie in \[0, 1\], got 1.5"):
        EmergentBinding().on_fit_start(module.trainer, module)


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_brokenbind_transitive_weight_outside_the_unit_interval_is_an_error(weight):
    with pytest.raises(ConfigError, match=rf"transitive_weight must lie in \[0, 1\], got {weight}"):
        BrokenBind(transitive_weight=weight)


def test_anchors_are_the_training_rows_of_the_first_dataset_observing_pivot_and_target():
    calls, flow = [], Flow("evaluation", "fou->pix->zer")
    anchors = {"pix": torch.randn(4, 3), "zer": torch.randn(4, 3)}
    datasets = {"evaluation": ["fou", "pix"], "first": ["pix", "zer"], "second": ["zer", "pix"]}
    assert anchor_holder(anchored_module(Transitive(), datasets, anchors, calls), flow) == "first"
    module = anchored_module(Transitive(), {"evaluation": ["fou", "pix"], "support": ["pix", "kar"]}, anchors, calls)
    with pytest.raises(ConfigError, match="no training dataset observes both: three-dataset chains have no such rows"):
        anchor_holder(module, flow)
    with pytest.raises(ConfigError, match="flow 'fou->zer' has no pivot"):
        anchor_holder(module, Flow("evaluation", "fou->zer"))


@pytest.mark.parametrize("kwargs", [{"top_k": 0}, {"power": 0.0}])
def test_transitive_configuration_errors(kwargs):
    with pytest.raises(ConfigError, match="top_k must be >= 1 and power positive"):
        Transitive(**kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# BrokenBind's MOX variants
# ----------------------------------------------------------------------------------------------------------------------
def ridge_pinv(f: np.ndarray, ridge: float) -> np.ndarray:
    return f.T @ np.linalg.inv(f @ f.T + ridge * np.eye(len(f)))


def linear_pseudo(emb, ridge: float = 0.1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(X-data, X-mod) of c in d1 and of a in d2 through b (Eqs. 7-8, ridge pseudo-inverse)."""
    a1, b1, b2, c2 = (arr(emb[ds][m]) for ds, m in (("d1", "a"), ("d1", "b"), ("d2", "b"), ("d2", "c")))
    p1, p2 = ridge_pinv(b1, ridge), ridge_pinv(b2, ridge)
    return {"d1": (b1 @ p2 @ c2, c2 @ p2 @ b1), "d2": (b2 @ p1 @ a1, a1 @ p1 @ b2)}


def mox_reference(emb, candidates: dict[str, np.ndarray], orthogonal: bool = False, both: bool = False) -> float:
    """L_MOX for d1 (a, b) → pseudo c and d2 (b, c) → pseudo a: the mean over the dataset's real modalities of one-way
    InfoNCE from the real rows to the unit pseudo rows; with ``orthogonal`` the non-pivot modality's cosines are taken
    after projecting out that real row's own pivot embedding b_i (per (i, j), explicitly); with ``both`` each term is
    the mean of that and the InfoNCE from each pseudo row j over the real rows (the columns of the same cosines), at
    the target's scale."""

    def cross_entropy(logits: list[list[float]]) -> float:  # row i's positive is column i
        return math.fsum(math.log(math.fsum(math.exp(v) for v in row)) - row[i] for i, row in enumerate(logits)) / B

    total = 0.0
    for ds, other, target in (("d1", "a", "c"), ("d2", "c", "a")):
        keys, pivot = candidates[ds], arr(emb[ds]["b"])
        for m in ("b", other):  # the pivot's own term is in the full space
            query, cos = arr(emb[ds][m]), [[0.0] * B for _ in range(B)]
            for i in range(B):
                for j in range(B):
                    qp, kp = query[i], keys[j]
                    if orthogonal and m != "b":
                        qp, kp = qp - (qp @ pivot[i]) * pivot[i], kp - (kp @ pivot[i]) * pivot[i]
                    cos[i][j] = float(qp @ kp) / (np.linalg.norm(qp) * np.linalg.norm(kp))
            term = cross_entropy([[SCALES[m] * v for v in row] for row in cos])
            if both:
                backward = [[SCALES[target] * cos[i][j] for i in range(B)] for j in range(B)]
                term = (term + cross_entropy(backward)) / 2
            total += term / 2
    return total


def mox_only(**kwargs) -> BrokenBind:
    """L_MOX alone, weighed 1; the paper's full-space term unless ``mox_subspace`` is given (the references are written
    for it)."""
    kwargs = {"mox_subspace": "full", "embedding_noise": 0.0, "mox_weight": 1.0, **kwargs}
    return BrokenBind(consistency_epochs=0, clip_weight=0.0, sym_weight=0.0, modality_scales=SCALES, **kwargs)


def test_default_recipe_terms_equal_the_explicit_formulas():
    """Without its noise on the real embeddings (``embedding_noise``: its own test below)."""
    emb = layout(80, TWO)
    got = run(BrokenBind(consistency_epochs=0, modality_scales=SCALES, embedding_noise=0.0), emb, epoch=0)
    e = {ds: {m: arr(f) for m, f in mods.items()} for ds, mods in emb.items()}
    pseudo = linear_pseudo(emb)
    s = SCALES
    # push_away "none": each anchor's L_CLIP is its InfoNCE against the other modality of its dataset
    clip = sum(ce_loop(emb[ds][m], emb[ds][n], s[m]) for ds, (m, n) in
               (("d1", "ab"), ("d1", "ba"), ("d2", "bc"), ("d2", "cb")))  # fmt: skip
    centred = {ds: {m: _ref_centred(f.tolist(), f.tolist()) for m, f in mods.items()} for ds, mods in e.items()}
    # sym_centring: L_Sym on each modality's rows less their batch mean
    sym = sum(_ref_cross_cyclic(centred[ds][m], centred[ds][n]) + _ref_in_cyclic(centred[ds][m], centred[ds][n])
              for ds, (m, n) in (("d1", "ab"), ("d2", "bc")))  # fmt: skip
    # mox_subspace "orthogonal": each non-pivot modality meets the pseudo target orthogonally to its row's pivot
    mox = mox_reference(emb, {ds: unit_rows(data) for ds, (data, _) in pseudo.items()}, orthogonal=True)
    fro = sum(np.sum((mod - data) ** 2) / (B * D) for data, mod in pseudo.values())  # fro_reduction "mean"
    assert_terms(got, {"clip": clip, "sym": sym, "mox": 4.0 * mox, "fro": fro})  # mox_weight 4
    assert not [k for k in BrokenBind(embedding_noise=0.0).state_dict() if "extra_state" in k]  # no state to save


def test_the_default_noise_follows_the_transition():
    """C-MCR's noise with the fitted map (the regressor transition, auto's choice on frozen backbones), none with a
    batch transition (auto's fallback on trainable ones), unless embedding_noise says otherwise."""
    assert BrokenBind().embedding_noise is None and BrokenBind().noise_std == 0.0  # auto, before prepare: linear
    assert BrokenBind(transition="regressor").noise_std == 0.063
    assert BrokenBind(transition="kernel").noise_std == 0.0
    assert BrokenBind(transition="kernel", embedding_noise=0.05).noise_std == 0.05
    assert BrokenBind(transition="regressor", embedding_noise=0.0).noise_std == 0.0


def test_the_default_noise_state_is_saved_and_a_checkpoint_written_without_it_still_loads():
    assert "noise._extra_state" in BrokenBind().state_dict()
    method = BrokenBind()
    loaded = method.load_state_dict(BrokenBind(embedding_noise=0.0).state_dict())
    assert (loaded.missing_keys, loaded.unexpected_keys) == ([], [])
    assert method.noise.generator is None  # seeded at first use, as in a fresh run


def test_orthogonal_subspace_mox_matches_a_per_pair_projection_loop():
    emb = layout(81, TWO)
    got = run(mox_only(mox_subspace="orthogonal", fro_weight=0.0), emb, epoch=0)
    candidates = {ds: unit_rows(data) for ds, (data, _) in linear_pseudo(emb).items()}
    assert sorted(got) == ["mox"]
    assert got["mox"].item() == pytest.approx(mox_reference(emb, candidates, orthogonal=True), rel=1e-5)
    full = run(mox_only(fro_weight=0.0), emb, epoch=0)["mox"].item()
    assert full == pytest.approx(mox_reference(emb, candidates), rel=1e-5) and abs(full - got["mox"].item()) > 1e-3


@pytest.mark.parametrize("subspace", ["orthogonal", "full"])
def test_mox_in_both_directions_adds_the_pseudo_to_real_infonce_over_the_same_cosines(subspace):
    emb = layout(79, TWO)
    candidates = {ds: unit_rows(data) for ds, (data, _) in linear_pseudo(emb).items()}
    got = run(mox_only(mox_subspace=subspace, mox_direction="both", fro_weight=0.0), emb, epoch=0)["mox"].item()
    orthogonal = subspace == "orthogonal"
    assert got == pytest.approx(mox_reference(emb, candidates, orthogonal=orthogonal, both=True), rel=1e-5)
    assert abs(got - mox_reference(emb, candidates, orthogonal=orthogonal)) > 1e-3  # the paper's one-way term differs


def test_chain_pseudo_embeddings_keep_the_real_modality_they_start_from():
    steps = pseudo_of(BrokenBind(), layout(82, CHAIN), "d1")
    assert {t: (p.origin, p.source) for t, p in steps.items()} == {"c": ("b", "d2"), "e": ("b", "d3")}


def test_target_mean_centring_and_noise_give_the_real_target_mean_before_normalisation():
    emb = layout(83, TWO)
    torch.manual_seed(9)
    got = run(mox_only(pseudo_centring="target_mean", pseudo_noise=0.05, fro_weight=0.0), emb, epoch=0)
    gen = torch.Generator().manual_seed(9)  # SharedNoise: seeded from torch.initial_seed(), d1's draw first
    real = {"d1": arr(emb["d2"]["c"]), "d2": arr(emb["d1"]["a"])}  # the target's rows in the dataset holding it
    candidates = {}
    for ds, (data, _) in linear_pseudo(emb).items():
        centred = data - data.mean(0) + real[ds].mean(0)
        np.testing.assert_allclose(centred.mean(0), real[ds].mean(0), atol=1e-12)
        candidates[ds] = unit_rows(centred + arr(0.05 * torch.randn(B, D, generator=gen)))
    assert got["mox"].item() == pytest.approx(mox_reference(emb, candidates), rel=1e-5)


def test_target_mean_centring_without_noise_uses_the_centred_pseudo_rows():
    emb = layout(84, TWO)
    method = mox_only(pseudo_centring="target_mean")
    pseudo = pseudo_of(method, emb, "d1")["c"]
    candidates = method.mox_candidates(pseudo, emb["d2"]["c"])
    data = linear_pseudo(emb)["d1"][0]
    expected = unit_rows(data - data.mean(0) + arr(emb["d2"]["c"]).mean(0))
    np.testing.assert_allclose(arr(candidates), expected, rtol=1e-5, atol=1e-6)
    assert method.noise is None  # no noise module unless pseudo_noise > 0


def test_kernel_transition_mox_has_no_fro_term_and_matches_the_softmax_loop():
    emb = layout(85, TWO)
    got = run(mox_only(transition="kernel", kernel_temperature=0.2), emb, epoch=0)
    assert sorted(got) == ["fro", "mox"] and got["fro"].item() == 0.0
    e = {ds: {m: arr(f) for m, f in mods.items()} for ds, mods in emb.items()}
    candidates = {
        "d1": unit_rows(kernel_loop(e["d1"]["b"], e["d2"]["b"], e["d2"]["c"], 0.2)),
        "d2": unit_rows(kernel_loop(e["d2"]["b"], e["d1"]["b"], e["d1"]["a"], 0.2)),
    }
    assert got["mox"].item() == pytest.approx(mox_reference(emb, candidates), rel=1e-5)


def test_kernel_transition_along_a_chain_uses_the_normalised_pseudo_pivot():
    emb = layout(86, CHAIN)
    steps = pseudo_of(BrokenBind(transition="kernel", kernel_temperature=0.3), emb, "d1")
    e = {ds: {m: arr(f) for m, f in mods.items()} for ds, mods in emb.items()}
    c1 = kernel_loop(e["d1"]["b"], e["d2"]["b"], e["d2"]["c"], 0.3)
    np.testing.assert_allclose(arr(steps["c"].data), c1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arr(steps["e"].data), kernel_loop(unit_rows(c1), e["d3"]["c"], e["d3"]["e"], 0.3),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert steps["c"].mod is None and steps["e"].mod is None


def test_kernel_transition_with_a_memory_reads_this_batch_then_the_newest_past_rows():
    """kernel_memory = 7 rows, batches of 5: the second step retrieves from its own 5 rows (with their gradient) and
    the first step's first 2 (detached)."""
    first, second = layout(87, TWO), layout(88, TWO)
    method = mox_only(transition="kernel", kernel_temperature=0.2, kernel_memory=7)
    run(method, first, epoch=0)
    second = {ds: {m: f.clone().requires_grad_() for m, f in mods.items()} for ds, mods in second.items()}
    got = run(method, second, epoch=0)
    e1, e2 = ({ds: {m: arr(f) for m, f in mods.items()} for ds, mods in emb.items()} for emb in (first, second))
    bank = {ds: {m: np.concatenate([e2[ds][m], e1[ds][m][:2]]) for m in mods} for ds, mods in e2.items()}
    candidates = {
        "d1": unit_rows(kernel_loop(e2["d1"]["b"], bank["d2"]["b"], bank["d2"]["c"], 0.2)),
        "d2": unit_rows(kernel_loop(e2["d2"]["b"], bank["d1"]["b"], bank["d1"]["a"], 0.2)),
    }
    assert got["mox"].item() == pytest.approx(mox_reference(second, candidates), rel=1e-5)
    for ds, mods in method.memory.rows.items():  # the queue: this batch first, then the first's newest rows
        for m, rows in mods.items():
            assert torch.equal(rows, torch.cat([second[ds][m], first[ds][m][:2]]).detach())
            assert not rows.requires_grad
    got["mox"].backward()  # the batch's target rows lent to the other dataset take gradient, as without a memory
    assert second["d2"]["c"].grad.abs().sum() > 0 and second["d1"]["a"].grad.abs().sum() > 0


def test_kernel_memory_is_filled_before_mox_starts_and_saved_in_the_state():
    method = BrokenBind(transition="kernel", kernel_memory=8, consistency_epochs=5)
    terms = run(method, layout(89, TWO), epoch=0)
    assert "mox" not in terms and {len(f) for mods in method.memory.rows.values() for f in mods.values()} == {B}
    assert "memory._extra_state" in method.state_dict()
    assert "memory._extra_state" not in BrokenBind(transition="kernel").state_dict()  # no memory: as before


def test_embedding_noise_corrupts_the_real_embeddings_of_every_term_but_not_the_pseudo_rows():
    emb = layout(90, TWO)
    kwargs = {"consistency_epochs": 0, "transition": "kernel", "kernel_temperature": 0.2, "mox_subspace": "full",
              "modality_scales": SCALES, "mox_weight": 1.0}  # fmt: skip
    torch.manual_seed(21)
    got = run(BrokenBind(embedding_noise=0.05, **kwargs), emb, epoch=0)
    gen = torch.Generator().manual_seed(21)  # SharedNoise seeds from torch.initial_seed(), dataset by dataset
    noisy = {ds: {m: F.normalize(f + 0.05 * torch.randn(f.shape, generator=gen), dim=1) for m, f in mods.items()}
             for ds, mods in emb.items()}  # fmt: skip
    # L_CLIP and L_Sym of the noisy rows
    on_noisy = run(BrokenBind(**kwargs | {"mox_weight": 0.0, "embedding_noise": 0.0}), noisy, epoch=0)
    assert (got["clip"].item(), got["sym"].item()) == pytest.approx((on_noisy["clip"].item(), on_noisy["sym"].item()))
    e = {ds: {m: arr(f) for m, f in mods.items()} for ds, mods in emb.items()}
    candidates = {  # extrapolated from the clean rows; the noisy rows are the queries
        "d1": unit_rows(kernel_loop(e["d1"]["b"], e["d2"]["b"], e["d2"]["c"], 0.2)),
        "d2": unit_rows(kernel_loop(e["d2"]["b"], e["d1"]["b"], e["d1"]["a"], 0.2)),
    }
    assert got["mox"].item() == pytest.approx(mox_reference(noisy, candidates), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel_memory": 64}, "kernel_memory is read by the kernel transition only, not the auto one"),
        ({"transition": "kernel", "kernel_memory": -1}, "kernel_memory must be a non-negative number of rows, got -1"),
        ({"embedding_noise": -0.1}, "embedding_noise must be non-negative, got -0.1"),
        ({"transition": "kernel", "mox_contrast": "x_mod"},
         "mox_contrast x_mod needs transition linear: the kernel transition has no X-mod form"),
        ({"kernel_temperature": 0.0}, "kernel_temperature must be positive, got 0.0"),
        ({"pseudo_noise": -0.1}, "pseudo_noise must be non-negative, got -0.1"),
        ({"transition": "cubic"}, "transition must be one of ['auto', 'linear', 'kernel', 'regressor'], got 'cubic'"),
        ({"pseudo_centring": "pivot_mean"}, "pseudo_centring must be one of ['none', 'target_mean'], got 'pivot_mean'"),
        ({"mox_subspace": "half"}, "mox_subspace must be one of ['full', 'orthogonal'], got 'half'"),
        ({"mox_direction": "pseudo_to_real"},
         "mox_direction must be one of ['real_to_pseudo', 'both'], got 'pseudo_to_real'"),
    ],
)  # fmt: skip
def test_mox_variant_configuration_errors(kwargs, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        BrokenBind(**kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# End to end through the CLI (mfeat, two epochs)
# ----------------------------------------------------------------------------------------------------------------------
TWO_DATASET = str(ROOT / "experiments" / "two_dataset.yaml")
# two epochs of 5 batches: enough for a mid-epoch stop (batch 3 of epoch 1) and a memory queue spanning both epochs
SHORT = ["--config", TWO_DATASET, "--trainer.max_epochs=2", "--trainer.limit_train_batches=5",
         "--trainer.enable_progress_bar=false"]  # fmt: skip


def run_rows(run: Path) -> list[dict[str, str]]:
    with (run / "results.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cmcr_uninterrupted(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cmcr"))
        main(["fit", *SHORT, "--method", "cmcr"])
        return Path.cwd() / "logs" / "two_dataset" / "cmcr" / "version_0"


@pytest.mark.parametrize("method", ["cmcr", "impute", "pivot_ceiling", "transitive"])
def test_prior_art_methods_fit_test_and_write_their_rows(method, request, tmp_path, monkeypatch, caplog):
    if method == "cmcr":  # the run the resume test compares with
        run = request.getfixturevalue("cmcr_uninterrupted")
    else:
        monkeypatch.chdir(tmp_path)
        with caplog.at_level("INFO"):
            main(["fit", *SHORT, "--method", method])
        run = tmp_path / "logs" / "two_dataset" / method / "version_0"
    rows = run_rows(run)
    assert [(r["method"], r["stage"], r["flow"]) for r in rows] == [
        (method, "val", "fou->pix->zer"), (method, "test", "fou->pix->zer")
    ]  # fmt: skip
    assert all(0 < float(r["map_instance"]) <= 1 and 0 < float(r["map_class"]) <= 1 for r in rows)
    fitted_on = {"impute": ("600", "['support']"), "pivot_ceiling": ("1200", "['support', 'evaluation']")}
    if method in fitted_on:  # the pix→zer regressor: the support dataset's pairs, or every dataset's
        rows_, datasets = fitted_on[method]
        assert f"{method}: pix→zer ridge regressor on {rows_} training rows of {datasets}, λ = " in caplog.text


def test_cmcr_stopped_mid_run_and_resumed_equals_an_uninterrupted_run(cmcr_uninterrupted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["fit", *SHORT, "--method", "cmcr", stop_at(1, 3)])
    assert stopped.value.code == 128 + signal.SIGTERM
    main(["fit", *SHORT, "--method", "cmcr", "--ckpt_path", "last"])
    run = tmp_path / "logs" / "two_dataset" / "cmcr" / "version_0"
    got, expected = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
                     for r in (run, cmcr_uninterrupted))  # fmt: skip
    assert got.keys() == expected.keys() and "method.memory._extra_state" in got
    for key, value in expected.items():
        if key == "method.memory._extra_state":  # the memory queue
            for ds, mods in value.items():
                for m, rows in mods.items():
                    torch.testing.assert_close(got[key][ds][m], rows, rtol=0, atol=1e-6)
        else:
            torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6)
    for got_row, row in zip(run_rows(run), run_rows(cmcr_uninterrupted), strict=True):
        assert float(got_row["map_instance"]) == pytest.approx(float(row["map_instance"]), abs=1e-6)
