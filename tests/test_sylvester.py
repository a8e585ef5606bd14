"""Tests for flowbook.sylvester: log-dets against autograd Jacobians in float64, inverses by
back-substitution, planar as the case M = 1, extreme raw parameters, the identity start, the triangular
head layout, errors, and training as a DLGM row through the command line and as 2-D fits."""
from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from flowbook import flows
from flowbook.householder import householder_matrix
from flowbook.sylvester import (SylvesterHouseholderSpec, SylvesterTriangularSpec, alternating_permutations,
                                one_plus_tanh_product, sylvester, sylvester_inverse, upper_triangular)

F64 = torch.float64
BATCH = 4


def _r(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _params(D: int, M: int, K: int, per_example: bool, seed: int = 0, q_kind: str = "householder"
            ) -> tuple[torch.Tensor, ...]:
    """(q, r, r_tilde, b) in float64, raw values large enough that every nonlinearity matters."""
    lead = (BATCH,) if per_example else ()
    if q_kind == "householder":
        q = householder_matrix(_r(*lead, K, M, D, seed=seed), M)
    else:
        q = alternating_permutations(K, D, F64)
    return (q, _r(*lead, K, M, M, seed=seed + 1), _r(*lead, K, M, M, seed=seed + 2), _r(*lead, K, M, seed=seed + 3))


def _jacobian_log_det(f, z: torch.Tensor) -> torch.Tensor:
    J = jacobian(lambda x: f(x)[0], z)
    return torch.linalg.slogdet(torch.stack([J[i, :, i, :] for i in range(z.shape[0])])).logabsdet


CASES = [(2, 2, 1, "householder"), (5, 2, 3, "householder"), (5, 5, 2, "householder"), (6, 1, 2, "householder"),
         (3, 3, 3, "permutation"), (6, 6, 2, "permutation")]


@pytest.mark.parametrize("per_example", [False, True], ids=["shared", "per-example"])
@pytest.mark.parametrize("D, M, K, q_kind", CASES)
def test_log_det_matches_autograd_jacobian(D: int, M: int, K: int, q_kind: str, per_example: bool) -> None:
    params = _params(D, M, K, per_example, q_kind=q_kind)
    z = _r(BATCH, D, seed=9, scale=1.5)
    _, log_det = sylvester(z, *params)
    assert log_det.shape == (BATCH,)
    torch.testing.assert_close(log_det, _jacobian_log_det(lambda x: sylvester(x, *params), z), atol=1e-10, rtol=0)


@pytest.mark.parametrize("per_example", [False, True], ids=["shared", "per-example"])
@pytest.mark.parametrize("D, M, K, q_kind", CASES)
def test_inverse_round_trip_for_every_m(D: int, M: int, K: int, q_kind: str, per_example: bool) -> None:
    """The inverse exists for M < D too: the layer moves z only inside the span of Q's columns."""
    params = _params(D, M, K, per_example, seed=10, q_kind=q_kind)
    z = _r(BATCH, D, seed=11, scale=1.5)
    y, log_det = sylvester(z, *params)
    back, log_det_inv = sylvester_inverse(y, *params)
    torch.testing.assert_close(back, z, atol=1e-10, rtol=0)
    torch.testing.assert_close(log_det_inv, -log_det, atol=1e-10, rtol=0)


def test_planar_is_the_case_m_equals_1() -> None:
    """One unit: w = r̃·q and û = r·q (module docstring). flows.planar takes raw u and maps it to û
    (Appendix A), so u is chosen with planar_constrain(u, w) = û: wᵀu = ln(e^{1 + wᵀû} − 1)."""
    D, K = 5, 3
    q, r, rt, b = _params(D, 1, K, per_example=True, seed=12)
    R, Rt = upper_triangular(r)[..., 0, 0], upper_triangular(rt)[..., 0, 0]  # tanh of the raw diagonals
    w, u_hat = Rt.unsqueeze(-1) * q[..., 0], R.unsqueeze(-1) * q[..., 0]
    wu_hat, w2 = (w * u_hat).sum(-1), w.square().sum(-1)
    u = u_hat + ((torch.expm1(1.0 + wu_hat)).log() - wu_hat).unsqueeze(-1) * w / w2.unsqueeze(-1)
    torch.testing.assert_close(flows.planar_constrain(u, w)[0], u_hat, atol=1e-12, rtol=0)
    z = _r(BATCH, D, seed=13, scale=1.5)
    for got, want in zip(sylvester(z, q, r, rt, b), flows.planar(z, u, w, b[..., 0])):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_one_plus_tanh_product_keeps_its_relative_accuracy() -> None:
    """1 + tanh(x)·tanh(−x) = sech²x, which the naive formula rounds to 0 in float64 from |x| ≈ 19."""
    x = torch.tensor([0.3, 5.0, 20.0, 200.0], dtype=F64)
    exact = (2.0 / (torch.exp(x) + torch.exp(-x))).square()
    torch.testing.assert_close(one_plus_tanh_product(x, -x), exact, atol=0, rtol=1e-12)
    y = torch.tensor([0.7, -2.0, 3.0, -0.1], dtype=F64)
    torch.testing.assert_close(one_plus_tanh_product(x, y), 1.0 + torch.tanh(x) * torch.tanh(y), atol=0, rtol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("value", [1e4, -1e4])
def test_extreme_raw_parameters_give_finite_values_and_gradients(value: float, dtype: torch.dtype) -> None:
    """Raw R, R̃ and b at ±10⁴ (r_ii·r̃_ii = ±1 exactly in floating point, the edge of invertibility) and
    Householder vectors of norm 10⁻³⁰: values, log-dets and gradients stay finite, forward and inverse."""
    D, M, K = 4, 3, 2
    spec = SylvesterHouseholderSpec(D, K, units=M)
    sign = torch.tensor([1.0, -1.0, 1.0], dtype=dtype)
    params = {"v": 1e-30 * _r(K, M, D, seed=14).to(dtype), "r": torch.full((K, M, M), value, dtype=dtype),
              "r_tilde": torch.full((K, M, M), value, dtype=dtype) * sign[:, None],
              "b": torch.full((K, M), value, dtype=dtype)}
    params = {n: p.requires_grad_() for n, p in params.items()}
    z = torch.cat([torch.zeros(1, D, dtype=dtype), _r(3, D, seed=15).to(dtype)]).requires_grad_()
    out, log_det = spec.forward(z, params)
    back, log_det_inv = spec.inverse(out, params)
    (out.sum() + log_det.sum() + back.sum() + log_det_inv.sum()).backward()
    for t in (out, log_det, back, log_det_inv, z.grad, *(p.grad for p in params.values())):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("spec", [SylvesterHouseholderSpec(4, 3),
                                  SylvesterHouseholderSpec(5, 2, units=2, reflections=1),
                                  SylvesterTriangularSpec(4, 3)], ids=repr)
def test_spec_starts_at_the_identity_with_a_nonzero_gradient(spec) -> None:
    """R = 0 is the identity; the random R̃ keeps ∂z'/∂R = Q·tanh(R̃Qᵀz) away from zero."""
    params = {n: p.double().requires_grad_() for n, p in spec.identity((6,), torch.Generator().manual_seed(16)).items()}
    z = _r(6, spec.dim, seed=17)
    out, log_det = spec.forward(z, params)
    assert torch.equal(out, z) and torch.equal(log_det, torch.zeros(6, dtype=F64))
    (grad,) = torch.autograd.grad(out.square().sum(), params["r"])
    assert grad.abs().max() > 1e-3


@pytest.mark.parametrize("spec", [SylvesterHouseholderSpec(5, 2, units=3), SylvesterTriangularSpec(4, 3)], ids=repr)
def test_head_uses_the_triangular_layout(spec) -> None:
    """R and R̃ cost M(M + 1)/2 head outputs each per layer; split gives upper-triangular matrices."""
    M, R = spec.M, getattr(spec, "n_reflections", 0)
    per_layer = M * (M + 1) + M + R * spec.dim
    assert spec.head_size() == spec.K * per_layer and spec.head_size_per_layer() == per_layer
    start = spec.identity(generator=torch.Generator().manual_seed(18))
    raw = spec.flatten_amortized(start).expand(3, spec.head_size())
    split = spec.split(raw)
    for n in spec.amortized:
        assert split[n].shape == (3, *spec.shapes()[n])
        torch.testing.assert_close(split[n][1], start[n], atol=0, rtol=0)  # identity() is triangular already
    assert torch.equal(torch.tril(split["r_tilde"], -1), torch.zeros_like(split["r_tilde"]))


def test_triangular_variant_alternates_identity_and_reversal() -> None:
    P = alternating_permutations(3, 4, F64)
    eye = torch.eye(4, dtype=F64)
    assert torch.equal(P[0], eye) and torch.equal(P[1], eye.flip(-1)) and torch.equal(P[2], eye)
    assert alternating_permutations(0, 4).shape == (0, 4, 4)


def test_defaults_and_registered_names() -> None:
    assert flows.SPECS["sylvester-h"] is SylvesterHouseholderSpec
    assert flows.SPECS["sylvester-t"] is SylvesterTriangularSpec
    spec = flows.spec_for("sylvester-h", 6, 2, hidden=40)  # NICE's `hidden` is not the units M
    assert spec.M == 6 and spec.n_reflections == 6 and spec.shapes()["v"] == (2, 6, 6)
    assert SylvesterHouseholderSpec(6, 2, units=3).n_reflections == 3


def test_errors_say_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"1 ≤ units ≤ dim=3 and reflections ≥ 1"):
        SylvesterHouseholderSpec(3, 2, units=4)
    with pytest.raises(ValueError, match=r"reflections ≥ 1"):
        SylvesterHouseholderSpec(3, 2, reflections=0)
    q, r, rt, b = _params(4, 2, 3, per_example=False)
    z = _r(BATCH, 4, seed=19)
    with pytest.raises(ValueError, match=r"q must have shape \(K, 4, M\) or \(batch, K, 4, M\) with 1 ≤ M ≤ 4"):
        sylvester(z, q.mT, r, rt, b)
    with pytest.raises(ValueError, match=r"r must have shape \(K, 2, 2\) or \(batch=4, K, 2, 2\), got \(3, 3, 3\)"):
        sylvester(z, q, _r(3, 3, 3, seed=0), rt, b)
    with pytest.raises(ValueError, match="b has 2 layers but q has K=3"):
        sylvester_inverse(z, q, r, rt, b[:2])
    with pytest.raises(TypeError, match="r_tilde has dtype torch.float32 but z has torch.float64"):
        sylvester(z, q, r, rt.float(), b)
    with pytest.raises(ValueError, match=r"parameters \['v'\] are missing"):
        SylvesterHouseholderSpec(4, 3).forward(z, {"r": r, "r_tilde": rt, "b": b})


@pytest.mark.parametrize("flow", ["sylvester-h", "sylvester-t"])
def test_trains_as_a_dlgm_row_through_the_command_line(flow: str, train_row) -> None:
    train_row(flow)


def test_units_and_reflections_travel_as_flow_options(train_row) -> None:
    # both are `int | None` fields: a given value is an int, and the row's model is built with it
    assert flows.options_of("sylvester-h") == {"inverse_iters": int, "units": int, "reflections": int}
    record = train_row("sylvester-h", "--flow-option", "units=2", "--flow-option", "reflections=3")
    assert record["config"]["model"]["flow_options"] == [["reflections", 3], ["units", 2]]
    with pytest.raises(ValueError, match="option units must be of type int, got 2.5"):
        flows.check_options("sylvester-h", {"units": 2.5})


def test_trains_as_2d_fits(fit_2d) -> None:
    fit_2d("sylvester-h", "sylvester-t")
