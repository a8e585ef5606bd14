"""Tests for flowbook.householder: orthogonality and log-det 0 against autograd Jacobians, the exact
inverse, the matrix form, extreme vectors, the identity start, errors, and training as a DLGM row through
the command line and as 2-D fits."""
from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from flowbook import flows
from flowbook.householder import HouseholderSpec, householder, householder_inverse, householder_matrix, unit_vectors

F64 = torch.float64


def _v(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _block_jacobians(f, z: torch.Tensor) -> torch.Tensor:
    """Each example's Jacobian ∂f(z)_i/∂z_i, (batch, D, D), from autograd."""
    J = jacobian(lambda x: f(x)[0], z)
    return torch.stack([J[i, :, i, :] for i in range(z.shape[0])])


@pytest.mark.parametrize("per_example", [False, True], ids=["shared", "per-example"])
@pytest.mark.parametrize("K, R, D", [(1, 2, 2), (3, 4, 5), (2, 1, 7)])
def test_the_map_is_orthogonal_with_log_det_zero(per_example: bool, K: int, R: int, D: int) -> None:
    z = _v(4, D, seed=1)
    v = _v(*((4,) if per_example else ()), K, R, D)
    out, log_det = householder(z, v)
    assert torch.equal(log_det, torch.zeros(4, dtype=F64))
    J = _block_jacobians(lambda x: householder(x, v), z)
    torch.testing.assert_close(J @ J.mT, torch.eye(D, dtype=F64).expand(4, D, D), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.slogdet(J).logabsdet, log_det, atol=1e-10, rtol=0)
    # a linear map: its Jacobian applied to z is the output
    torch.testing.assert_close((J @ z.unsqueeze(-1)).squeeze(-1), out, atol=1e-12, rtol=0)


def test_one_reflection_mirrors_v_and_keeps_its_hyperplane() -> None:
    """H_v v = −v and H_v x = x for x ⊥ v: a single reflection is never the identity."""
    v = _v(1, 1, 3)
    x = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    x = x - (x * v[0]).sum() / v[0].square().sum() * v[0]  # orthogonal to v
    torch.testing.assert_close(householder(v[0], v)[0], -v[0], atol=1e-14, rtol=0)
    torch.testing.assert_close(householder(x, v)[0], x, atol=1e-14, rtol=0)


@pytest.mark.parametrize("per_example", [False, True], ids=["shared", "per-example"])
def test_inverse_round_trip(per_example: bool) -> None:
    z = _v(6, 4, seed=2)
    v = _v(*((6,) if per_example else ()), 3, 2, 4)
    y, _ = householder(z, v)
    back, log_det = householder_inverse(y, v)
    torch.testing.assert_close(back, z, atol=1e-12, rtol=0)
    assert torch.equal(log_det, torch.zeros(6, dtype=F64))


@pytest.mark.parametrize("columns", [None, 1, 3])
def test_matrix_is_the_product_of_the_reflections(columns: int | None) -> None:
    """householder_matrix(v) applied to z is householder(z, v) for one layer, with orthonormal columns."""
    D, v = 5, _v(2, 3, 5, seed=3)  # (batch, R, D): per-example chains
    q = householder_matrix(v, columns)
    M = D if columns is None else columns
    assert q.shape == (2, D, M)
    torch.testing.assert_close(q.mT @ q, torch.eye(M, dtype=F64).expand(2, M, M), atol=1e-13, rtol=0)
    full = householder_matrix(v)
    z = _v(2, D, seed=4)
    torch.testing.assert_close((full @ z.unsqueeze(-1)).squeeze(-1), householder(z, v.unsqueeze(1))[0],
                               atol=1e-13, rtol=0)
    torch.testing.assert_close(q, full[..., :M], atol=0, rtol=0)
    with pytest.raises(ValueError, match="columns must be between 1 and D=5"):
        householder_matrix(v, 6)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("scale", [1e4, -1e4, 1e-30])
def test_extreme_vectors_give_finite_values_and_gradients(scale: float, dtype: torch.dtype) -> None:
    """Only the direction of v matters: 10⁻³⁰·v (whose square underflows in float32) and ±10⁴·v reflect
    like v, with finite gradients."""
    base = _v(3, 2, 4, seed=5, dtype=dtype)
    v = (scale * base).requires_grad_()
    z = _v(5, 4, seed=6, dtype=dtype).requires_grad_()
    out, log_det = householder(z, v)
    torch.testing.assert_close(out, householder(z, base)[0], atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)
    out.square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(v.grad).all() and torch.isfinite(z.grad).all()
    torch.testing.assert_close(unit_vectors(v.detach()).norm(dim=-1), torch.ones(3, 2, dtype=dtype))


def test_a_zero_vector_is_no_reflection_with_a_finite_gradient() -> None:
    v = torch.zeros(1, 1, 3, dtype=F64, requires_grad=True)
    z = _v(2, 3)
    out, _ = householder(z, v)
    assert torch.equal(out, z)
    out.sum().backward()
    assert torch.isfinite(v.grad).all()


def test_spec_starts_at_the_identity_with_a_nonzero_gradient() -> None:
    """Equal pairs of vectors cancel (H_v H_v = I) while the gradient with respect to them does not vanish."""
    spec = HouseholderSpec(4, 3, reflections=4)
    params = {n: p.double().requires_grad_() for n, p in spec.identity((5,), torch.Generator().manual_seed(7)).items()}
    z = _v(5, 4, seed=8)
    out, log_det = spec.forward(z, params)
    torch.testing.assert_close(out, z, atol=1e-14, rtol=0)
    (grad,) = torch.autograd.grad(out[:, 0].sum(), params["v"])
    assert grad.abs().max() > 1e-3
    assert spec.head_size() == 3 * 4 * 4 and spec.head_size_per_layer() == 16


def test_spec_options_and_errors_say_what_to_do() -> None:
    assert flows.SPECS["householder"] is HouseholderSpec
    assert flows.spec_for("householder", 3, 2, hidden=9) == HouseholderSpec(3, 2)
    with pytest.raises(ValueError, match="must be even and ≥ 2"):
        HouseholderSpec(3, 2, reflections=3)
    z = _v(4, 3)
    with pytest.raises(ValueError, match=r"v must have shape \(K, reflections, 3\) or \(batch=4, K, reflections, 3\), "
                                         r"got \(2, 3\)"):
        householder(z, _v(2, 3))
    with pytest.raises(ValueError, match=r"got \(5, 2, 1, 3\)"):
        householder(z, _v(5, 2, 1, 3))  # per-example with the wrong batch
    with pytest.raises(TypeError, match="v has dtype torch.float32 but z has torch.float64"):
        householder(z, _v(2, 1, 3).float())
    with pytest.raises(TypeError, match="v must be a torch.Tensor"):
        householder_inverse(z, _v(2, 1, 3).numpy())


def test_householder_trains_as_a_dlgm_row_through_the_command_line(train_row) -> None:
    train_row("householder")


def test_householder_trains_as_2d_fits(fit_2d) -> None:
    fit_2d("householder")
