"""Loss functions and binding methods against independent loop references written from the papers: BrokenBind
(arXiv 2602.06451), CyCLIP (arXiv 2205.14459).

Every reference below is plain Python over floats (math.exp / math.log on float64 values of the inputs); none of them
calls the code under test. Inputs are seeded random L2-normalised fp32 embeddings.
"""

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brokenbind.errors import ConfigError
from brokenbind.losses.clip import info_nce, push_away, symmetric_info_nce
from brokenbind.losses.cyclip import centred, cross_modal_cyclic, in_modal_cyclic
from brokenbind.losses.mox import frobenius, pivot_pinv, x_data, x_mod
from brokenbind.losses.temperature import LogitScale
from brokenbind.methods import BrokenBind, FABind
from brokenbind.methods.brokenbind import PAPER_RECIPE as PAPER  # the references are the paper's equations

from .binding import run

ATOL = 1e-5
B, D = 6, 8

# ----------------------------------------------------------------------------------------------------------------------
# Inputs and loop references
# ----------------------------------------------------------------------------------------------------------------------


def _unit(gen: torch.Generator, rows: int, dim: int = D) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=gen, dtype=torch.float64), dim=1).float()


def _embeddings(seed: int, b: int = B, d: int = D) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {"d1": {"a": _unit(gen, b, d), "b": _unit(gen, b, d)}, "d2": {"b": _unit(gen, b, d), "c": _unit(gen, b, d)}}


def _rows(t: torch.Tensor) -> list[list[float]]:
    return t.detach().double().tolist()


def _dot(u: list[float], v: list[float]) -> float:
    return math.fsum(a * b for a, b in zip(u, v, strict=True))


def _lse(values: list[float]) -> float:
    top = max(values)
    return top + math.log(math.fsum(math.exp(v - top) for v in values))


def _ref_info_nce(q: list[list[float]], k: list[list[float]], s: float) -> float:
    total = 0.0
    for i in range(len(q)):
        logits = [s * _dot(q[i], k[j]) for j in range(len(k))]
        total += _lse(logits) - logits[i]
    return total / len(q)


def _ref_push(q: list[list[float]], o: list[list[float]], s: float) -> float:
    total = 0.0
    for i in range(len(q)):
        total += _lse([s * _dot(q[i], o[k]) for k in range(len(o))])
    return total / len(q)


def _ref_cross_cyclic(x: list[list[float]], y: list[list[float]]) -> float:
    n = len(x)
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += (_dot(x[i], y[j]) - _dot(x[j], y[i])) ** 2
    return total / n


def _ref_in_cyclic(x: list[list[float]], y: list[list[float]]) -> float:
    n = len(x)
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += (_dot(x[i], x[j]) - _dot(y[i], y[j])) ** 2
    return total / n


def _ref_matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    return [[math.fsum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]


def _ref_normalize(a: list[list[float]]) -> list[list[float]]:
    return [[v / math.sqrt(_dot(row, row)) for v in row] for row in a]


def _ref_fro(a: list[list[float]], b: list[list[float]]) -> float:
    return math.fsum((a[i][j] - b[i][j]) ** 2 for i in range(len(a)) for j in range(len(a[0])))


def _np_pinv(t: torch.Tensor) -> list[list[float]]:
    return np.linalg.pinv(t.detach().double().numpy()).tolist()


def _ref_brokenbind(emb: dict[str, dict[str, torch.Tensor]], s: dict[str, float]) -> dict[str, float]:
    """L_CLIP (Eq. 10), L_Sym (Eqs. 11-12), MOX contrast (Eqs. 4, 8) and R_Fro (Eqs. 7, 9) of BrokenBind
    (arXiv 2602.06451, Sec. 3)."""
    a1, b1 = _rows(emb["d1"]["a"]), _rows(emb["d1"]["b"])
    b2, c2 = _rows(emb["d2"]["b"]), _rows(emb["d2"]["c"])
    clip = (
        (_ref_info_nce(a1, b1, s["a"]) + _ref_push(a1, b2, s["a"]) + _ref_push(a1, c2, s["a"])) / 3
        + (_ref_info_nce(b1, a1, s["b"]) + _ref_push(b1, b2, s["b"]) + _ref_push(b1, c2, s["b"])) / 3
        + (_ref_info_nce(b2, c2, s["b"]) + _ref_push(b2, a1, s["b"]) + _ref_push(b2, b1, s["b"])) / 3
        + (_ref_info_nce(c2, b2, s["c"]) + _ref_push(c2, a1, s["c"]) + _ref_push(c2, b1, s["c"])) / 3
    )
    sym = _ref_cross_cyclic(a1, b1) + _ref_in_cyclic(a1, b1) + _ref_cross_cyclic(b2, c2) + _ref_in_cyclic(b2, c2)
    pinv_b1, pinv_b2 = _np_pinv(emb["d1"]["b"]), _np_pinv(emb["d2"]["b"])
    c1_data = _ref_matmul(_ref_matmul(b1, pinv_b2), c2)  # Eq. 8
    c1_mod = _ref_matmul(_ref_matmul(c2, pinv_b2), b1)  # Eq. 7
    a2_data = _ref_matmul(_ref_matmul(b2, pinv_b1), a1)  # mirror of Eq. 8
    a2_mod = _ref_matmul(_ref_matmul(a1, pinv_b1), b2)  # mirror of Eq. 7
    c1_hat, a2_hat = _ref_normalize(c1_data), _ref_normalize(a2_data)
    mox = 0.5 * (_ref_info_nce(b1, c1_hat, s["b"]) + _ref_info_nce(a1, c1_hat, s["a"])) + 0.5 * (
        _ref_info_nce(b2, a2_hat, s["b"]) + _ref_info_nce(c2, a2_hat, s["c"])
    )
    fro = _ref_fro(c1_mod, c1_data) + _ref_fro(a2_mod, a2_data)
    return {"clip": clip, "sym": sym, "mox": mox, "fro": fro}


# ----------------------------------------------------------------------------------------------------------------------
# clip.py: InfoNCE and the push-away partition term
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 10.0, 50.0])
def test_info_nce_matches_loop_reference(seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    q, k = _unit(gen, B), _unit(gen, B)
    assert info_nce(q, k, scale).item() == pytest.approx(_ref_info_nce(_rows(q), _rows(k), scale), abs=ATOL)


def test_info_nce_with_extra_negative_keys_matches_loop_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    q, k = _unit(gen, 4), _unit(gen, 7)
    assert info_nce(q, k, 7.0).item() == pytest.approx(_ref_info_nce(_rows(q), _rows(k), 7.0), abs=ATOL)


def test_info_nce_accepts_tensor_scale_and_passes_gradient_to_it() -> None:
    gen = torch.Generator().manual_seed(4)
    q, k = _unit(gen, B), _unit(gen, B)
    scale = torch.tensor(6.0, requires_grad=True)
    loss = info_nce(q, k, scale)
    assert loss.item() == pytest.approx(_ref_info_nce(_rows(q), _rows(k), 6.0), abs=ATOL)
    loss.backward()
    assert scale.grad is not None and scale.grad.item() != 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_symmetric_info_nce_matches_loop_reference_with_per_anchor_scales(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    a, b = _unit(gen, B), _unit(gen, B)
    expected = 0.5 * (_ref_info_nce(_rows(a), _rows(b), 3.0) + _ref_info_nce(_rows(b), _rows(a), 12.0))
    assert symmetric_info_nce(a, b, 3.0, 12.0).item() == pytest.approx(expected, abs=ATOL)


@pytest.mark.parametrize(("b1", "b2"), [(6, 6), (5, 9), (9, 4)])
def test_push_away_matches_loop_reference_for_unequal_batches(b1: int, b2: int) -> None:
    gen = torch.Generator().manual_seed(b1 * 10 + b2)
    q, o = _unit(gen, b1), _unit(gen, b2)
    assert push_away(q, o, 10.0).item() == pytest.approx(_ref_push(_rows(q), _rows(o), 10.0), abs=ATOL)


# ----------------------------------------------------------------------------------------------------------------------
# cyclip.py: Eqs. 11-12
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_modal_cyclic_matches_loop_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = _unit(gen, B), _unit(gen, B)
    assert cross_modal_cyclic(x, y).item() == pytest.approx(_ref_cross_cyclic(_rows(x), _rows(y)), abs=ATOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_modal_cyclic_matches_loop_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = _unit(gen, B), _unit(gen, B)
    assert in_modal_cyclic(x, y).item() == pytest.approx(_ref_in_cyclic(_rows(x), _rows(y)), abs=ATOL)


def test_cyclic_terms_are_zero_for_identical_inputs() -> None:
    x = _unit(torch.Generator().manual_seed(5), B)
    assert cross_modal_cyclic(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert in_modal_cyclic(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_cyclic_terms_are_zero_for_a_symmetric_orthogonal_map_but_not_for_a_rotation() -> None:
    gen = torch.Generator().manual_seed(6)
    x = _unit(gen, B).double()
    v = F.normalize(torch.randn(D, generator=gen, dtype=torch.float64), dim=0)
    reflection = torch.eye(D, dtype=torch.float64) - 2 * torch.outer(v, v)  # symmetric and orthogonal
    y = (x @ reflection).float()
    assert cross_modal_cyclic(x.float(), y).item() == pytest.approx(0.0, abs=1e-6)
    assert in_modal_cyclic(x.float(), y).item() == pytest.approx(0.0, abs=1e-6)
    # A rotation is orthogonal but not symmetric: in-modal geometry is kept, cross-modal symmetry is broken.
    rotation, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))
    z = (x @ rotation).float()
    assert in_modal_cyclic(x.float(), z).item() == pytest.approx(0.0, abs=1e-6)
    assert cross_modal_cyclic(x.float(), z).item() > 1e-2


def _ref_centred(x: list[list[float]], full: list[list[float]]) -> list[list[float]]:
    mean = [math.fsum(column) / len(full) for column in zip(*full, strict=True)]
    out = []
    for row in x:
        d = [a - m for a, m in zip(row, mean, strict=True)]
        norm = math.sqrt(_dot(d, d))
        out.append([a / norm for a in d])
    return out


def test_centred_subtracts_the_whole_batch_mean_and_renormalises() -> None:
    gen = torch.Generator().manual_seed(8)
    full = _unit(gen, B)
    local, local_full = centred(full[2:4], full)  # one DDP rank's rows, centred on the gathered batch's mean
    assert torch.allclose(local, torch.tensor(_ref_centred(_rows(full[2:4]), _rows(full))), atol=ATOL)
    assert torch.allclose(local_full, torch.tensor(_ref_centred(_rows(full), _rows(full))), atol=ATOL)
    assert torch.allclose(local_full[2:4], local, atol=1e-6)


def test_centred_symmetry_no_longer_asks_a_spread_modality_to_join_one_that_points_one_way() -> None:
    """Unit rows with a shared direction (a cone) against spread unit rows: on raw cosines the in-modal term is large,
    since every cosine of the cone is near 1; centred, each modality is compared by how its rows spread."""
    gen = torch.Generator().manual_seed(9)
    spread = torch.randn(B, D, generator=gen, dtype=torch.float64)
    cone = spread + 5 * F.normalize(torch.randn(1, D, generator=gen, dtype=torch.float64), dim=1)
    x, y = F.normalize(spread, dim=1).float(), F.normalize(cone, dim=1).float()
    raw = in_modal_cyclic(x, y).item()
    centred_term = in_modal_cyclic(centred(x, x)[0], centred(y, y)[0]).item()
    assert raw > 2.0 and centred_term < 0.1 * raw


def test_centred_rows_that_have_all_but_met_get_a_bounded_gradient() -> None:
    gen = torch.Generator().manual_seed(10)
    base = _unit(gen, 1).expand(B, D)
    for spread in (1e-5, 0.0):  # nearly, then exactly, one point
        x = (base + spread * torch.randn(B, D, generator=gen)).requires_grad_(True)
        y = _unit(gen, B)
        loss = in_modal_cyclic(centred(x, x)[0], centred(y, y)[0]) + cross_modal_cyclic(centred(x, x)[0], y)
        loss.backward()
        assert torch.isfinite(loss) and x.grad.abs().max() < 1e4


@pytest.mark.parametrize("fn", [cross_modal_cyclic, in_modal_cyclic])
def test_cyclic_terms_take_no_scale(fn) -> None:
    assert list(inspect.signature(fn).parameters) == ["x", "y", "x_full", "y_full"]  # no temperature anywhere


def test_cyclic_terms_equal_official_cyclip_mean_times_n_form() -> None:
    """Official CyCLIP: mean over N² of squared scaled-logit differences, ÷ scale², × N (CyCLIP, arXiv 2205.14459,
    Sec. 3, and its released code)."""
    gen = torch.Generator().manual_seed(7)
    n, scale = 8, 1 / 0.07
    image, text = _unit(gen, n, 16).double(), _unit(gen, n, 16).double()
    per_image = scale * image @ text.T
    official_cross = (per_image - per_image.T).square().mean() / scale**2 * n
    official_in = (scale * image @ image.T - scale * text @ text.T).square().mean() / scale**2 * n
    assert official_cross.item() == pytest.approx(_ref_cross_cyclic(_rows(image), _rows(text)), rel=1e-9)
    assert official_in.item() == pytest.approx(_ref_in_cyclic(_rows(image), _rows(text)), rel=1e-9)
    assert cross_modal_cyclic(image.float(), text.float()).item() == pytest.approx(official_cross.item(), abs=ATOL)
    assert in_modal_cyclic(image.float(), text.float()).item() == pytest.approx(official_in.item(), abs=ATOL)


# ----------------------------------------------------------------------------------------------------------------------
# mox.py: Eqs. 5-9
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "dim"), [(6, 8), (8, 8), (9, 8)])
def test_pivot_pinv_equals_numpy_pinv(rows: int, dim: int) -> None:
    f = _unit(torch.Generator().manual_seed(rows), rows, dim)
    got = pivot_pinv(f)
    assert got.shape == (dim, rows)
    np.testing.assert_allclose(got.double().numpy(), np.linalg.pinv(f.double().numpy()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ridge", [1e-3, 0.1, 1.0])
def test_pivot_pinv_with_ridge_equals_closed_form(ridge: float) -> None:
    f = _unit(torch.Generator().manual_seed(8), B)
    fn = f.double().numpy()
    expected = fn.T @ np.linalg.inv(fn @ fn.T + ridge * np.eye(B))
    np.testing.assert_allclose(pivot_pinv(f, ridge).double().numpy(), expected, atol=1e-5)


def test_pivot_pinv_output_is_detached_fp32() -> None:
    f = _unit(torch.Generator().manual_seed(9), B).double().requires_grad_()
    for ridge in (0.0, 0.1):
        pinv = pivot_pinv(f, ridge)
        assert not pinv.requires_grad
        assert pinv.dtype == torch.float32


def test_no_gradient_reaches_pivot_through_pinv() -> None:
    gen = torch.Generator().manual_seed(10)
    own, pivot, target = (_unit(gen, B).requires_grad_() for _ in range(3))
    x_data(own, pivot_pinv(pivot), target).sum().backward()
    assert pivot.grad is None or torch.count_nonzero(pivot.grad) == 0
    assert own.grad is not None and torch.count_nonzero(own.grad) > 0
    assert target.grad is not None and torch.count_nonzero(target.grad) > 0


def _assert_triple_product(got: torch.Tensor, left: torch.Tensor, middle: torch.Tensor, right: torch.Tensor) -> None:
    """got[i, j] == Σ_k Σ_m left[i, k] middle[k, m] right[m, j], summed with Python loops."""
    a, p, c = _rows(left), _rows(middle), _rows(right)
    for i in range(len(a)):
        for j in range(len(c[0])):
            expected = math.fsum(a[i][k] * p[k][m] * c[m][j] for k in range(len(p)) for m in range(len(c)))
            assert got[i, j].item() == pytest.approx(expected, abs=ATOL)


@pytest.mark.parametrize(("b1", "b2"), [(6, 6), (5, 9)])
def test_x_data_matches_triple_loop(b1: int, b2: int) -> None:
    gen = torch.Generator().manual_seed(11)
    f_b1, f_b2, f_c2 = _unit(gen, b1), _unit(gen, b2), _unit(gen, b2)
    pinv = pivot_pinv(f_b2)
    got = x_data(f_b1, pinv, f_c2)
    assert got.shape == (b1, D)
    _assert_triple_product(got, f_b1, pinv, f_c2)


def test_x_mod_matches_triple_loop() -> None:
    gen = torch.Generator().manual_seed(12)
    f_b1, f_b2, f_c2 = _unit(gen, B), _unit(gen, B), _unit(gen, B)
    pinv = pivot_pinv(f_b2)
    got = x_mod(f_b1, pinv, f_c2)
    _assert_triple_product(got, f_c2, pinv, f_b1)


def test_x_mod_raises_for_unequal_batch_sizes() -> None:
    gen = torch.Generator().manual_seed(13)
    f_b1, f_b2, f_c2 = _unit(gen, 5), _unit(gen, 9), _unit(gen, 9)
    with pytest.raises(ValueError, match="equal per-dataset batch sizes"):
        x_mod(f_b1, pivot_pinv(f_b2), f_c2)


def test_shared_full_row_rank_pivot_gives_x_data_target_and_x_mod_row_space_projection() -> None:
    """Same pivot batch F (B < d, full row rank) on both sides: F F^+ = I, so X-data = F_c; F^+ F projects onto
    span(rows of F), so X-mod = F_c Π and R_Fro = ||F_c (I − Π)||²_F."""
    gen = torch.Generator().manual_seed(14)
    f, f_c = _unit(gen, B), _unit(gen, B)
    pinv = pivot_pinv(f)
    np.testing.assert_allclose(x_data(f, pinv, f_c).numpy(), f_c.numpy(), atol=1e-5)
    basis, _ = np.linalg.qr(f.double().numpy().T)  # d×B orthonormal basis of the row space
    projection = basis @ basis.T
    expected_mod = f_c.double().numpy() @ projection
    np.testing.assert_allclose(x_mod(f, pinv, f_c).double().numpy(), expected_mod, atol=1e-5)
    residual = f_c.double().numpy() @ (np.eye(D) - projection)
    fro = frobenius(x_mod(f, pinv, f_c), x_data(f, pinv, f_c)).item()
    assert fro == pytest.approx(float((residual**2).sum()), abs=1e-5)
    assert fro > 1e-2  # the two forms genuinely differ when F_c leaves span(F)


def test_x_mod_equals_x_data_when_target_lies_in_shared_pivot_row_space() -> None:
    gen = torch.Generator().manual_seed(15)
    f = _unit(gen, B)
    f_c = (torch.randn(B, B, generator=gen) @ f).float()
    pinv = pivot_pinv(f)
    np.testing.assert_allclose(x_mod(f, pinv, f_c).numpy(), x_data(f, pinv, f_c).numpy(), atol=1e-4)


def test_frobenius_equals_loop_sum_of_squares() -> None:
    gen = torch.Generator().manual_seed(16)
    a, b = torch.randn(B, D, generator=gen), torch.randn(B, D, generator=gen)
    assert frobenius(a, b).item() == pytest.approx(_ref_fro(_rows(a), _rows(b)), rel=1e-6)


def test_pinv_of_duplicated_pivot_rows_splits_weight_equally_and_matches_numpy() -> None:
    f = _unit(torch.Generator().manual_seed(17), B)
    f[3] = f[1]
    pinv = pivot_pinv(f)
    np.testing.assert_allclose(pinv.double().numpy(), np.linalg.pinv(f.double().numpy()), atol=1e-4)
    np.testing.assert_allclose(pinv[:, 1].numpy(), pinv[:, 3].numpy(), atol=1e-5)


def _degenerate_pivot(kind: str, gen: torch.Generator) -> torch.Tensor:
    f = _unit(gen, B)
    if kind == "duplicated":
        f[3] = f[1]
    elif kind == "linear_combination":
        f[5] = F.normalize(0.3 * f[0] + 0.7 * f[2], dim=0)
    elif kind == "all_equal":
        f[:] = f[0]
    return f


@pytest.mark.parametrize("kind", ["duplicated", "linear_combination", "all_equal"])
@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_mox_terms_finite_for_rank_deficient_pivot(kind: str, ridge: float) -> None:
    gen = torch.Generator().manual_seed(18)
    f_b1, f_b2, f_c2 = _unit(gen, B), _degenerate_pivot(kind, gen), _unit(gen, B)
    pinv = pivot_pinv(f_b2, ridge)
    pseudo_data, pseudo_mod = x_data(f_b1, pinv, f_c2), x_mod(f_b1, pinv, f_c2)
    assert torch.isfinite(pinv).all() and torch.isfinite(pseudo_data).all() and torch.isfinite(pseudo_mod).all()
    assert torch.isfinite(frobenius(pseudo_mod, pseudo_data))
    assert torch.isfinite(info_nce(f_b1, F.normalize(pseudo_data, dim=1), 10.0))


@pytest.mark.parametrize("kind", ["duplicated", "linear_combination"])
def test_brokenbind_terms_finite_for_rank_deficient_pivots(kind: str) -> None:
    emb = _embeddings(19)
    gen = torch.Generator().manual_seed(20)
    emb["d1"]["b"], emb["d2"]["b"] = _degenerate_pivot(kind, gen), _degenerate_pivot(kind, gen)
    terms = run(BrokenBind(**PAPER, logit_scale=5.0, consistency_epochs=0), emb, epoch=0)
    assert set(terms) == {"clip", "sym", "mox", "fro"}
    assert all(torch.isfinite(v) for v in terms.values())


# ----------------------------------------------------------------------------------------------------------------------
# temperature.py
# ----------------------------------------------------------------------------------------------------------------------


def test_fixed_logit_scale_returns_init_for_every_modality() -> None:
    scale = LogitScale(7.5)
    assert scale("vision").item() == pytest.approx(7.5)
    assert scale("audio").item() == pytest.approx(7.5)
    assert list(scale.parameters()) == []


@pytest.mark.parametrize("init", [0.5, 100.0])
def test_fixed_logit_scale_returns_init_outside_learnable_clamp_range(init: float) -> None:
    """The docstring clamps only the learnable mode; a fixed scale should be returned as configured."""
    assert LogitScale(init)("vision").item() == pytest.approx(init)


def test_per_modality_scales_override_init() -> None:
    scale = LogitScale(10.0, per_modality={"audio": 20.0, "depth": 5.0, "vision": 1.0})
    assert scale("audio").item() == pytest.approx(20.0)
    assert scale("depth").item() == pytest.approx(5.0)
    assert scale("vision").item() == pytest.approx(1.0)
    assert scale("thermal").item() == pytest.approx(10.0)


def learnable_scale_at(value: float) -> LogitScale:
    """A learnable scale whose parameter has drifted to ln(value) in training (configured values are ≤ 100)."""
    scale = LogitScale(10.0, learnable=True)
    with torch.no_grad():
        scale.log_scale.fill_(math.log(value))
    return scale


@pytest.mark.parametrize(("value", "expected"), [(1000.0, 100.0), (0.5, 1.0), (10.0, 10.0)])
def test_learnable_logit_scale_is_clamped_to_1_100(value: float, expected: float) -> None:
    scale = learnable_scale_at(value)
    assert scale("text").item() == pytest.approx(expected, rel=1e-6)
    assert [p.item() for p in scale.parameters()] == [pytest.approx(math.log(value))]


@pytest.mark.parametrize(("value", "grad_is_zero"), [(1000.0, True), (0.5, True), (10.0, False)])
def test_learnable_logit_scale_gradient_is_zero_beyond_clamp(value: float, grad_is_zero: bool) -> None:
    scale = learnable_scale_at(value)
    scale("text").backward()
    grad = scale.log_scale.grad
    assert grad is not None
    if grad_is_zero:
        assert grad.item() == 0.0
    else:
        assert grad.item() == pytest.approx(value, rel=1e-5)  # d exp(l)/dl = exp(l)


def test_learnable_with_per_modality_raises() -> None:
    with pytest.raises(ConfigError, match="modality_scales are fixed values"):
        LogitScale(10.0, learnable=True, per_modality={"audio": 20.0})


@pytest.mark.parametrize(
    ("init", "per_modality"),
    [(0.0, None), (-1.0, None), (101.0, None), (10.0, {"audio": 0.0}), (10.0, {"depth": -5.0}), (1.0, {"a": 1e9})],
)
def test_out_of_range_scale_raises(init: float, per_modality: dict[str, float] | None) -> None:
    with pytest.raises(ConfigError, match=r"must lie in \(0, 100\]"):
        LogitScale(init, per_modality=per_modality)


# ----------------------------------------------------------------------------------------------------------------------
# BrokenBind method
# ----------------------------------------------------------------------------------------------------------------------

FIXED_S = {"a": 5.0, "b": 5.0, "c": 5.0}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("term", ["clip", "sym", "mox", "fro"])
def test_brokenbind_term_matches_loop_reference(seed: int, term: str) -> None:
    emb = _embeddings(seed)
    got = run(BrokenBind(**PAPER, logit_scale=5.0, consistency_epochs=0), emb, epoch=0)[term].item()
    assert got == pytest.approx(_ref_brokenbind(emb, FIXED_S)[term], rel=1e-5, abs=ATOL)


@pytest.mark.parametrize("term", ["clip", "mox"])
def test_brokenbind_contrastive_terms_use_anchor_modality_scale(term: str) -> None:
    emb = _embeddings(21)
    scales = {"a": 2.0, "b": 5.0, "c": 9.0}
    got = run(BrokenBind(**PAPER, consistency_epochs=0, modality_scales=scales), emb, epoch=0)[term].item()
    assert got == pytest.approx(_ref_brokenbind(emb, scales)[term], rel=1e-5, abs=ATOL)


def test_brokenbind_mox_switches_on_at_consistency_epochs() -> None:
    emb = _embeddings(22)
    method = BrokenBind(**PAPER, logit_scale=5.0, consistency_epochs=3)
    assert set(run(method, emb, epoch=0)) == {"clip", "sym"}
    assert set(run(method, emb, epoch=2)) == {"clip", "sym"}
    assert set(run(method, emb, epoch=3)) == {"clip", "sym", "mox", "fro"}
    assert set(run(method, emb, epoch=10)) == {"clip", "sym", "mox", "fro"}


def test_brokenbind_weights_multiply_terms() -> None:
    emb = _embeddings(23)
    plain = run(BrokenBind(**PAPER, logit_scale=5.0, consistency_epochs=0), emb, epoch=0)
    weights = {"clip": 2.0, "sym": 0.5, "mox": 3.0, "fro": 0.25}
    weighted = run(
        BrokenBind(
            **PAPER | {"mox_weight": 3.0},
            clip_weight=2.0,
            sym_weight=0.5,
            fro_weight=0.25,
            logit_scale=5.0,
            consistency_epochs=0,
        ),
        emb,
        epoch=0,
    )
    assert set(weighted) == set(plain)
    for name, w in weights.items():
        assert weighted[name].item() == pytest.approx(w * plain[name].item(), rel=1e-6)


@pytest.mark.parametrize(
    ("zeroed", "expected_keys"),
    [
        ("fro_weight", {"clip", "sym", "mox"}),
        ("mox_weight", {"clip", "sym", "fro"}),
        ("sym_weight", {"clip", "mox", "fro"}),
        ("clip_weight", {"sym", "mox", "fro"}),
    ],
)
def test_brokenbind_zero_weight_removes_term(zeroed: str, expected_keys: set[str]) -> None:
    terms = run(BrokenBind(**PAPER | {zeroed: 0.0}, logit_scale=5.0, consistency_epochs=0), _embeddings(24), epoch=0)
    assert set(terms) == expected_keys


def test_brokenbind_skips_extrapolation_when_mox_and_fro_weights_are_zero() -> None:
    # No shared pivot: extrapolation would raise, so it must not be run at all.
    gen = torch.Generator().manual_seed(25)
    emb = {"d1": {"a": _unit(gen, B), "b": _unit(gen, B)}, "d2": {"c": _unit(gen, B), "e": _unit(gen, B)}}
    terms = run(BrokenBind(**PAPER | {"mox_weight": 0.0}, fro_weight=0.0, consistency_epochs=0), emb, epoch=5)
    assert set(terms) == {"clip", "sym"}
    with pytest.raises(ValueError, match="no dataset with a modality to extrapolate"):
        run(BrokenBind(**PAPER, consistency_epochs=0), emb, epoch=5)


def test_brokenbind_negative_weight_raises() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        BrokenBind(**PAPER, fro_weight=-1.0)


def test_brokenbind_total_is_finite_and_backpropagates_to_all_inputs() -> None:
    emb = _embeddings(26)
    leaves = {(ds, m): t.requires_grad_() for ds, mods in emb.items() for m, t in mods.items()}
    terms = run(BrokenBind(**PAPER, logit_scale=5.0, consistency_epochs=0), emb, epoch=0)
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    for key, leaf in leaves.items():
        assert leaf.grad is not None, key
        assert torch.isfinite(leaf.grad).all(), key
        assert leaf.grad.abs().sum() > 0, key


# ----------------------------------------------------------------------------------------------------------------------
# FABind
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_fabind_clip_is_sum_of_symmetric_info_nce_per_dataset(seed: int) -> None:
    emb = _embeddings(seed)
    scales = {"a": 2.0, "b": 5.0, "c": 9.0}
    a1, b1 = _rows(emb["d1"]["a"]), _rows(emb["d1"]["b"])
    b2, c2 = _rows(emb["d2"]["b"]), _rows(emb["d2"]["c"])
    expected = 0.5 * (_ref_info_nce(a1, b1, 2.0) + _ref_info_nce(b1, a1, 5.0)) + 0.5 * (
        _ref_info_nce(b2, c2, 5.0) + _ref_info_nce(c2, b2, 9.0)
    )
    terms = run(FABind(modality_scales=scales), emb, epoch=0)
    assert set(terms) == {"clip"}
    assert terms["clip"].item() == pytest.approx(expected, abs=ATOL)


# ----------------------------------------------------------------------------------------------------------------------
# bf16 autocast on CPU
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("term", ["clip", "sym", "mox", "fro"])
def test_brokenbind_term_is_finite_fp32_under_bf16_autocast(term: str) -> None:
    emb = _embeddings(27)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = run(BrokenBind(**PAPER, logit_scale=5.0, consistency_epochs=0), emb, epoch=0)[term]
    assert torch.isfinite(value)
    assert value.dtype == torch.float32


@pytest.mark.parametrize(
    ("name", "fn"),
    [
        ("info_nce", lambda x, y: info_nce(x, y, 10.0)),
        ("symmetric_info_nce", lambda x, y: symmetric_info_nce(x, y, 10.0, 3.0)),
        ("push_away", lambda x, y: push_away(x, y, 10.0)),
        ("cross_modal_cyclic", cross_modal_cyclic),
        ("in_modal_cyclic", in_modal_cyclic),
    ],
)
def test_loss_is_computed_in_fp32_under_bf16_autocast(name: str, fn) -> None:
    """clip.py and cyclip.py promise fp32 computation whatever the autocast context."""
    gen = torch.Generator().manual_seed(28)
    x, y = _unit(gen, B), _unit(gen, B)
    reference = fn(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = fn(x, y)
    assert value.dtype == torch.float32, name
    assert value.item() == pytest.approx(reference.item(), abs=1e-5), name


def test_pivot_pinv_is_fp32_under_bf16_autocast() -> None:
    f = _unit(torch.Generator().manual_seed(29), B)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pinv = pivot_pinv(f)
    assert pinv.dtype == torch.float32
    np.testing.assert_allclose(pinv.double().numpy(), np.linalg.pinv(f.double().numpy()), atol=1e-4)
