"""Carrying the pivot → target map across datasets (``brokenbind.transfer``), the imputer built on it and BrokenBind's
regressor transition, against scikit-learn, SciPy and loop references (none calls the function it checks)."""

import re

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial
import torch
import torch.nn.functional as F
from sklearn.kernel_ridge import KernelRidge as SkKernelRidge
from sklearn.linear_model import Ridge as SkRidge
from torch import Tensor

from brokenbind.callbacks.diagnosis import transfer_error
from brokenbind.errors import ConfigError, TrainableBackboneError
from brokenbind.graph import PairingGraph
from brokenbind.methods import BrokenBind, Impute
from brokenbind.methods.impute import KERNEL_RIDGES, KERNEL_WIDTHS, PivotImputer
from brokenbind.transfer import (
    choose,
    coral,
    fit_kernel_ridge,
    fit_pivot_map,
    fit_ridge,
    importance_weights,
    predict_kernel_ridge,
    predict_ridge,
    sinkhorn_targets,
)

from .binding import pseudo_of, run
from .test_losses import _ref_centred, _ref_cross_cyclic, _ref_in_cyclic
from .test_methods import ce_loop
from .test_prior_art import SCALES, TWO, arr, fake_encoder, layout, mox_reference

GEN = torch.Generator().manual_seed


def data(seed: int, rows: int, k: int = 5, out: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = GEN(seed)
    x = torch.randn(rows, k, generator=gen, dtype=torch.float64)
    y = torch.sin(x @ torch.randn(k, out, generator=GEN(99), dtype=torch.float64)) + 0.1 * torch.randn(
        rows, out, generator=gen, dtype=torch.float64
    )
    return x, y


# -- regressors --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_weighted_ridge_equals_sklearn_with_sample_weights(ridge):
    x, y = data(1, 40)
    w = torch.rand(40, generator=GEN(2), dtype=torch.float64) + 0.1
    model = fit_ridge(x, y, ridge, w)
    # sklearn minimises Σ w_i ‖y_i − x_i W − b‖² + α‖W‖²: with weights summing to 1, α = λ
    sk = SkRidge(alpha=ridge, solver="cholesky").fit(arr(x), arr(y), sample_weight=arr(w / w.sum()))
    np.testing.assert_allclose(arr(model.weight), sk.coef_.T, rtol=1e-7, atol=1e-9)
    query = data(3, 6)[0]
    np.testing.assert_allclose(arr(predict_ridge(model, query)), sk.predict(arr(query)), rtol=1e-7, atol=1e-9)
    # uniform weights are the unweighted fit
    for got, want in zip(fit_ridge(x, y, ridge, torch.ones(40)), fit_ridge(x, y, ridge), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("ridge", "gamma", "weighted"), [(1e-3, 0.2, False), (1e-2, 1.0, True)])
def test_kernel_ridge_equals_sklearn_on_centred_targets(ridge, gamma, weighted):
    x, y = data(4, 50)
    w = torch.rand(50, generator=GEN(5), dtype=torch.float64) + 0.1 if weighted else torch.ones(50, dtype=torch.float64)
    p = w / w.sum()
    model = fit_kernel_ridge(x, y, ridge, gamma, w if weighted else None)
    # sklearn's KernelRidge has no intercept: fit on targets centred on their weighted mean. It minimises
    # Σ w_i (y_i − k_i·α)² + α_sk αᵀKα: with weights summing to 1, α_sk = λ (n·λ unweighted, weights 1)
    mean = arr(p @ y)
    sk = SkKernelRidge(alpha=ridge, kernel="rbf", gamma=gamma).fit(arr(x), arr(y) - mean, sample_weight=arr(p))
    query = data(6, 7)[0]
    np.testing.assert_allclose(arr(predict_kernel_ridge(model, query)), sk.predict(arr(query)) + mean, rtol=1e-6,
                               atol=1e-8)  # fmt: skip
    if not weighted:
        sk = SkKernelRidge(alpha=ridge * 50, kernel="rbf", gamma=gamma).fit(arr(x), arr(y) - mean)
        np.testing.assert_allclose(arr(predict_kernel_ridge(model, query)), sk.predict(arr(query)) + mean,
                                   rtol=1e-6, atol=1e-8)  # fmt: skip


def test_kernel_ridge_far_from_every_row_predicts_the_target_mean():
    x, y = data(7, 30)
    model = fit_kernel_ridge(x, y, 1e-3, 1.0)
    torch.testing.assert_close(predict_kernel_ridge(model, torch.full((2, 5), 1e3, dtype=torch.float64)),
                               y.mean(0).expand(2, -1))  # fmt: skip


# -- corrections -------------------------------------------------------------------------------------------------------
def test_importance_weights_recover_a_known_density_ratio():
    # supporting ~ N(0, 1), scored ~ N(1, 1): p_scored / p_supporting = exp(x − 1/2), a logistic model exactly
    supporting = torch.randn(20000, 1, generator=GEN(8), dtype=torch.float64)
    scored = torch.randn(20000, 1, generator=GEN(9), dtype=torch.float64) + 1.0
    w = importance_weights(supporting, scored, inverse_regularisation=100.0)
    assert w.mean().item() == pytest.approx(1.0)
    slope, _ = np.polyfit(arr(supporting[:, 0]), np.log(arr(w)), 1)
    assert slope == pytest.approx(1.0, abs=0.05)
    # the reweighted supporting mean is the scored mean
    assert (w @ supporting[:, 0] / len(w)).item() == pytest.approx(1.0, abs=0.05)


def test_importance_weights_of_indistinguishable_datasets_are_one():
    rows = torch.randn(500, 4, generator=GEN(10), dtype=torch.float64)
    torch.testing.assert_close(importance_weights(rows, rows.clone()), torch.ones(500, dtype=torch.float64))


def test_coral_without_regulariser_gives_the_supporting_mean_and_covariance():
    scored = (
        torch.randn(300, 3, generator=GEN(11), dtype=torch.float64)
        @ torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, -0.3, 0.2]], dtype=torch.float64)
        + 4.0
    )
    supporting = torch.randn(200, 3, generator=GEN(12), dtype=torch.float64) * torch.tensor([0.5, 3.0, 1.0]) - 1.0
    matrix, shift = coral(scored, supporting, eps=0.0)
    moved = scored @ matrix + shift
    np.testing.assert_allclose(arr(moved.mean(0)), arr(supporting.mean(0)), atol=1e-9)
    np.testing.assert_allclose(np.cov(arr(moved).T), np.cov(arr(supporting).T), rtol=1e-7, atol=1e-9)
    # CORAL's closed form with SciPy's matrix square roots, regulariser included
    cs, ct = (np.cov(arr(r).T) + np.eye(3) for r in (scored, supporting))
    expected = np.linalg.inv(scipy.linalg.sqrtm(cs)).real @ scipy.linalg.sqrtm(ct).real
    np.testing.assert_allclose(arr(coral(scored, supporting, eps=1.0)[0]), expected, rtol=1e-7, atol=1e-9)


def sinkhorn_loop(a: np.ndarray, b: np.ndarray, cost: np.ndarray, reg: float, iterations: int = 5000) -> np.ndarray:
    """The entropic OT plan by Sinkhorn's matrix scaling (Cuturi 2013, Algorithm 1), uniform marginals."""
    kernel = np.exp(-cost / reg)
    u, v = np.ones(len(a)), np.ones(len(b))
    for _ in range(iterations):
        u = a / (kernel @ v)
        v = b / (kernel.T @ u)
    return u[:, None] * kernel * v[None, :]


def test_sinkhorn_targets_are_barycentres_under_the_entropic_plan():
    scored, supporting = data(13, 12)[0], data(14, 9)[0] + 0.5
    target = torch.randn(9, 2, generator=GEN(15), dtype=torch.float64)
    s, p = arr(scored), arr(supporting)
    cost = ((s[:, None] - p[None]) ** 2).sum(-1)
    plan = sinkhorn_loop(np.full(12, 1 / 12), np.full(9, 1 / 9), cost / cost.max(), 0.1)
    expected = plan / plan.sum(1, keepdims=True) @ arr(target)
    np.testing.assert_allclose(arr(sinkhorn_targets(scored, supporting, target, 0.1)), expected, rtol=1e-5)


def test_pivot_maps_apply_each_correction():
    x, y = data(16, 60)
    scored = data(17, 40)[0] * 2.0 + 1.0
    query = data(18, 5)[0]
    plain = fit_pivot_map(x, y, scored, "none", 0.1)
    torch.testing.assert_close(plain(query), predict_ridge(fit_ridge(x, y, 0.1), query))
    weighted = fit_pivot_map(x, y, scored, "importance", 0.1, "kernel", 0.5)
    expected = fit_kernel_ridge(x, y, 0.1, 0.5, importance_weights(x, scored))
    torch.testing.assert_close(weighted(query), predict_kernel_ridge(expected, query))
    aligned = fit_pivot_map(x, y, scored, "coral", 0.1)
    matrix, shift = coral(scored, x)
    torch.testing.assert_close(aligned(query), predict_ridge(fit_ridge(x, y, 0.1), query @ matrix + shift))
    paired = fit_pivot_map(x, y, scored, "sinkhorn", 0.1)
    pseudo = sinkhorn_targets(scored, x, y)
    expected = fit_ridge(torch.cat([x, scored]), torch.cat([y, pseudo]), 0.1)
    torch.testing.assert_close(paired(query), predict_ridge(expected, query))


# -- the imputer -------------------------------------------------------------------------------------------------------
def split_layout(seed: int) -> dict:
    """d1 observes (a, b), d2 (b, c): c a smooth nonlinear function of b; d1's pivot rows shifted."""
    out = {}
    for i, ds in enumerate(TWO):
        out[ds] = {}
        for j, split in enumerate(("train", "val")):
            x, y = data(seed + 10 * i + j, 40 if split == "train" else 60)
            x = x + 0.7 * i
            out[ds][split] = {"b": x.float(), "c": y.float(), "a": (-y).float()}
    return out


def test_kernel_imputer_chooses_lambda_and_width_by_validation_error_against_sklearn():
    layout_, calls = split_layout(20), []
    imputer = PivotImputer("impute", regressor="kernel")
    imputer.fit(fake_encoder(layout_, calls), PairingGraph(TWO))
    train, val = layout_["d2"]["train"], layout_["d2"]["val"]
    x, y, vx, vy = (arr(t) for t in (train["b"], train["c"], val["b"], val["c"]))
    distances = np.sort(scipy.spatial.distance.pdist(x, "sqeuclidean"))
    median = distances[(len(distances) - 1) // 2]  # the lower median (torch's)
    errors = {}
    for r in KERNEL_RIDGES:
        for w in KERNEL_WIDTHS:
            sk = SkKernelRidge(alpha=r * len(x), kernel="rbf", gamma=w / median).fit(x, y - y.mean(0))
            errors[r, w / median] = float(np.mean((sk.predict(vx) + y.mean(0) - vy) ** 2))
    best = min(errors, key=errors.__getitem__)
    assert best[0] not in (KERNEL_RIDGES[0], KERNEL_RIDGES[-1]) or best[1] * median not in (0.5, 4.0)
    assert imputer.chosen_ridge["b", "c"] == best[0]
    assert imputer.chosen_gamma["b", "c"] == pytest.approx(best[1], rel=1e-9)
    # transfer none: the scored dataset's rows are never read
    assert ("d1", "train", ("a", "b")) not in calls


def test_kernel_imputer_searches_its_grid_on_a_capped_subset_and_fits_the_whole_memory(monkeypatch):
    monkeypatch.setattr("brokenbind.methods.impute.KERNEL_GRID_ROWS", 25)
    layout_ = split_layout(22)
    imputer = PivotImputer("impute", regressor="kernel")
    imputer.fit(fake_encoder(layout_, []), PairingGraph(TWO))
    train, val = layout_["d2"]["train"], layout_["d2"]["val"]
    subset = torch.randperm(40, generator=torch.Generator().manual_seed(0))[:25]
    (ridge, gamma), _ = choose(
        "kernel", train["b"][subset], train["c"][subset], val["b"], val["c"], imputer.grid(train["b"])
    )
    assert (imputer.chosen_ridge["b", "c"], imputer.chosen_gamma["b", "c"]) == (ridge, gamma)
    everything, _ = choose("kernel", train["b"], train["c"], val["b"], val["c"], imputer.grid(train["b"]))
    assert everything != (ridge, gamma)  # on these rows the search on all 40 would choose otherwise
    memory = imputer.maps["d1", "b", "c"].model
    torch.testing.assert_close(memory.rows, train["b"].double())  # every row, in order: the cap is the grid's only
    expected = fit_kernel_ridge(train["b"], train["c"], ridge, gamma)
    torch.testing.assert_close(memory.dual, expected.dual)


def test_imputer_transfer_adapts_to_the_scored_dataset_s_own_training_pivot_rows():
    layout_, calls = split_layout(21), []
    imputer = PivotImputer("impute", transfer="importance", ridges=(0.1,))
    imputer.fit(fake_encoder(layout_, calls), PairingGraph(TWO))
    assert ("d1", "train", ("a", "b")) in calls and ("d2", "train", ("b", "c")) in calls
    train = layout_["d2"]["train"]
    expected = fit_pivot_map(train["b"], train["c"], layout_["d1"]["train"]["b"], "importance", 0.1)
    query = layout_["d1"]["val"]["b"]
    torch.testing.assert_close(imputer.maps["d1", "b", "c"](query), expected(query))
    assert imputer.imputed() == {"d1": {"c"}, "d2": {"a"}}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"transfer": "magic"}, "transfer must be one of ['none', 'importance', 'coral', 'sinkhorn'], got 'magic'"),
        ({"regressor": "tree"}, "regressor must be one of ['ridge', 'kernel'], got 'tree'"),
    ],
)
def test_imputer_configuration_errors(kwargs, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        Impute(**kwargs)


# -- BrokenBind's regressor transition ---------------------------------------------------------------------------------
def test_regressor_transition_scores_real_pairs_with_clip_and_sym_and_imputed_targets_with_mox():
    emb = layout(30, {"d1": ["a", "b", "c"], "d2": ["a", "b", "c"]})  # c of d1 and a of d2 stand for imputed rows
    method = BrokenBind(consistency_epochs=0, modality_scales=SCALES, transition="regressor", embedding_noise=0.0,
                        mox_weight=1.0)  # fmt: skip
    method.imputer.steps = [("d1", "b", "c"), ("d2", "b", "a")]
    got = run(method, emb, TWO, epoch=0)
    e = {ds: {m: arr(f) for m, f in mods.items()} for ds, mods in emb.items()}
    clip = sum(ce_loop(emb[ds][m], emb[ds][n], SCALES[m]) for ds, (m, n) in
               (("d1", "ab"), ("d1", "ba"), ("d2", "bc"), ("d2", "cb")))  # fmt: skip
    centred = {ds: {m: _ref_centred(f.tolist(), f.tolist()) for m, f in mods.items()} for ds, mods in e.items()}
    # sym_centring: L_Sym on each modality's rows less their batch mean
    sym = sum(_ref_cross_cyclic(centred[ds][m], centred[ds][n]) + _ref_in_cyclic(centred[ds][m], centred[ds][n])
              for ds, (m, n) in (("d1", "ab"), ("d2", "bc")))  # fmt: skip
    mox = mox_reference(emb, {"d1": e["d1"]["c"], "d2": e["d2"]["a"]}, orthogonal=True)
    assert sorted(got) == ["clip", "fro", "mox", "sym"] and got["fro"].item() == 0.0  # no X-mod: R_Fro is 0
    for name, value in {"clip": clip, "sym": sym, "mox": mox}.items():
        assert got[name].item() == pytest.approx(value, rel=1e-5), name


def test_detached_pseudo_embeddings_keep_l_mox_and_leave_the_imputed_rows_without_gradient():
    emb = layout(33, {"d1": ["a", "b", "c"], "d2": ["a", "b", "c"]})  # c of d1 and a of d2 stand for imputed rows

    def mox_and_grads(detach: bool | float) -> tuple[float, dict[str, Tensor | None]]:
        leaves = {ds: {m: f.clone().requires_grad_() for m, f in mods.items()} for ds, mods in emb.items()}
        method = BrokenBind(consistency_epochs=0, clip_weight=0.0, sym_weight=0.0, modality_scales=SCALES,
                            transition="regressor", detach_pseudo=detach)  # fmt: skip
        method.imputer.steps = [("d1", "b", "c"), ("d2", "b", "a")]
        mox = run(method, leaves, TWO, epoch=0)["mox"]
        mox.backward()
        return mox.item(), {f"{ds}/{m}": f.grad for ds, mods in leaves.items() for m, f in mods.items()}

    value, grads = mox_and_grads(detach=False)
    detached_value, detached_grads = mox_and_grads(detach=True)
    assert detached_value == pytest.approx(value, rel=1e-6)
    for imputed in ("d1/c", "d2/a"):  # the target head's only gradient from L_MOX came through the pseudo rows
        assert grads[imputed].abs().sum() > 0 and detached_grads[imputed] is None
    for real in ("d1/a", "d1/b", "d2/b", "d2/c"):  # the real query rows move as before
        torch.testing.assert_close(detached_grads[real], grads[real])
    # a share: the same value, the imputed rows get (1 − share) of their gradient, the real rows all of theirs
    shared_value, shared_grads = mox_and_grads(detach=0.75)
    assert shared_value == pytest.approx(value, rel=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(shared_grads[name], grad * (0.25 if name in ("d1/c", "d2/a") else 1.0))


def test_auto_transition_fits_the_kernel_map_on_frozen_features_and_stops_l_mox_at_its_pseudo_rows(caplog):
    layout_ = split_layout(34)
    method = BrokenBind()  # transition auto, regressor kernel, detach_pseudo None
    assert (method.imputer, method.extrapolator.transition, method.stopped_gradient) == (None, "linear", 0.0)
    with caplog.at_level("INFO", logger="lightning.pytorch"):  # a suite before may have quietened Lightning
        method.prepare(fake_encoder(layout_, []), PairingGraph(TWO))
    assert method.extrapolator is None and method.stopped_gradient == 1.0 and method.noise_std == 0.063
    assert "MOX: transition auto → regressor (kernel map" in caplog.text
    want = BrokenBind(transition="regressor", regressor="kernel")
    want.prepare(fake_encoder(layout_, []), PairingGraph(TWO))
    rows = layout_["d1"]["val"]["b"]
    torch.testing.assert_close(method.imputer.maps["d1", "b", "c"](rows), want.imputer.maps["d1", "b", "c"](rows))


def test_auto_transition_extrapolates_linearly_when_a_backbone_trains(caplog):
    def adapted(dataset: str, split: str, modalities: list[str]) -> dict[str, Tensor]:
        raise TrainableBackboneError("fits on backbone features before training, but ...", ["c"])

    method = BrokenBind(detach_pseudo=None)
    with caplog.at_level("INFO", logger="lightning.pytorch"):
        method.prepare(adapted, PairingGraph(TWO))
    assert (method.imputer, method.extrapolator.transition, method.stopped_gradient) == (None, "linear", 0.0)
    assert method.noise_std == 0.0  # C-MCR's noise only with the fitted map
    assert (
        "MOX: transition auto → linear (Eqs. 5-8 on each batch): ['c'] have trainable or adapted backbones"
        in caplog.text
    )
    with pytest.raises(TrainableBackboneError):  # the regressor transition itself refuses them
        BrokenBind(transition="regressor").prepare(adapted, PairingGraph(TWO))
    with pytest.raises(ConfigError, match="found no dataset lacking a modality"):  # other errors are not swallowed
        BrokenBind().prepare(fake_encoder(split_layout(35), []), PairingGraph({"d1": ["a", "b"]}))


def test_regressor_transition_completes_features_through_its_imputer():
    layout_ = split_layout(31)
    method = BrokenBind(transition="regressor")
    method.prepare(fake_encoder(layout_, []), PairingGraph(TWO))
    features = {ds: {m: layout_[ds]["val"][m] for m in mods} for ds, mods in TWO.items()}
    out = method.complete(features)
    torch.testing.assert_close(out["d1"]["c"], method.imputer.maps["d1", "b", "c"](features["d1"]["b"]))
    assert sorted(out["d2"]) == ["a", "b", "c"]
    assert BrokenBind().complete(features) is features  # the batch transitions impute nothing


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"transition": "linear", "transfer": "coral"},
            "transfer and regressor configure the regressor transition, "
            "not the linear one: set transition: regressor (or auto)",
        ),
        ({"transition": "kernel", "regressor": "ridge"}, "transfer and regressor configure the regressor transition"),
        ({"transition": "regressor", "mox_contrast": "x_mod"}, "the regressor transition has no X-mod form"),
        ({"mox_contrast": "x_mod"}, "mox_contrast x_mod needs transition linear: the auto transition has no X-mod"),
        ({"transition": "regressor", "transfer": "x"}, "transfer must be one of"),
        ({"detach_pseudo": 1.5}, "detach_pseudo must be true, false, null or a share in [0, 1], got 1.5"),
    ],
)
def test_regressor_transition_configuration_errors(kwargs, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        BrokenBind(**kwargs)


def test_unit_pseudo_rows_from_the_regressor_are_the_embedded_imputed_features():
    method = BrokenBind(transition="regressor")
    method.imputer.steps = [("d1", "b", "c"), ("d2", "b", "a")]
    emb = layout(32, {"d1": ["a", "b", "c"], "d2": ["a", "b", "c"]})
    pseudo = pseudo_of(method, emb, "d1", TWO)
    assert {t: (p.origin, p.source, p.mod) for t, p in pseudo.items()} == {"c": ("b", "d2", None)}
    assert pseudo["c"].data is emb["d1"]["c"]
    assert F.normalize(pseudo["c"].data, dim=1).allclose(emb["d1"]["c"])


# -- the transfer error (callbacks.diagnosis) --------------------------------------------------------------------------
def mrr(pred: np.ndarray, real: np.ndarray) -> float:
    """Instance mAP with one relevant item per query: the mean reciprocal rank of row i's own target by cosine."""
    p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    r = real / np.linalg.norm(real, axis=1, keepdims=True)
    sims = p @ r.T
    return float(np.mean([1.0 / (1 + np.sum(sims[i] > sims[i, i])) for i in range(len(sims))]))


def test_transfer_error_against_sklearn_ridge_and_a_reciprocal_rank_loop():
    layout_, calls = split_layout(40), []
    got = transfer_error(fake_encoder(layout_, calls), "d1", ["d2"], "b", "c", ridges=(0.01, 1.0))
    assert ("d1", "train", ("b", "c")) not in calls  # the scored dataset's hidden training rows are never read

    def best(train, val):
        x, y, vx, vy = (arr(t) for t in (train["b"], train["c"], val["b"], val["c"]))
        models = [SkRidge(alpha=r * len(x)).fit(x, y) for r in (0.01, 1.0)]
        return min(models, key=lambda m: np.mean((m.predict(vx) - vy) ** 2))

    supporting = best(layout_["d2"]["train"], layout_["d2"]["val"])
    expected = {}
    for name, ds in (("supporting", "d2"), ("scored", "d1")):
        vx, vy = arr(layout_[ds]["val"]["b"]), arr(layout_[ds]["val"]["c"])
        expected[f"rel_mse_{name}"] = np.mean((supporting.predict(vx) - vy) ** 2) / np.mean((vy - vy.mean(0)) ** 2)
        expected[f"mAP_{name}"] = mrr(supporting.predict(vx), vy)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-4), name
    assert got["rel_mse_scored"] > got["rel_mse_supporting"]  # d1's pivot rows are shifted: the map transfers worse


def test_transfer_error_of_a_given_map_reads_only_the_validation_rows():
    layout_, calls = split_layout(41), []
    weight = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    got = transfer_error(fake_encoder(layout_, calls), "d1", ["d2"], "b", "c", lambda x: x @ weight)
    assert {split for _, split, _ in calls} == {"val"}  # nothing to fit: no training rows read
    for name, ds in (("supporting", "d2"), ("scored", "d1")):
        vx, vy = arr(layout_[ds]["val"]["b"]), arr(layout_[ds]["val"]["c"])
        predicted = vx @ arr(weight)
        assert got[f"rel_mse_{name}"] == pytest.approx(np.mean((predicted - vy) ** 2) / np.mean((vy - vy.mean(0)) ** 2))
        assert got[f"mAP_{name}"] == pytest.approx(mrr(predicted, vy), rel=1e-5)
