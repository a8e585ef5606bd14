"""Tests for flowbook.flows and flowbook.kernels.fused: log-dets against autograd Jacobians, inverses,
constraints under extreme raw parameters, the fused planar chain against the reference, and errors."""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.autograd.functional import jacobian

from flowbook import flows
from flowbook.flows import (AdditiveCoupling, Compose, DiagonalGaussian, Planar, Radial, additive_coupling,
                            additive_coupling_inverse, planar, planar_constrain, planar_inverse, radial,
                            radial_constrain, radial_inverse, random_mixing)
from flowbook.iaf import IAFSpec
from flowbook.kernels import native
from flowbook.kernels.fused import planar_chain

F64 = torch.float64
BATCH = 3

FlowFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------------------------
# the flows under test: each builder returns (forward, inverse or None) in float64, with random
# parameters large enough that every nonlinearity matters
# ----------------------------------------------------------------------------------------------
def _randomize(module: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module.double()


def _module(kind: str, dim: int, K: int, gen: torch.Generator) -> torch.nn.Module:
    if kind == "Planar":
        return _randomize(Planar(dim, K), gen)
    if kind == "Planar(impl=autograd)":
        return _randomize(Planar(dim, K, impl="autograd"), gen)
    if kind == "Radial":
        return _randomize(Radial(dim, K), gen)
    mixing = "orth" if kind == "NICE-orth" else "perm"
    m = AdditiveCoupling(dim, K, hidden=8, mixing=mixing, seed=int(torch.randint(0, 1000, (1,), generator=gen)))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    return m.double()


MODULES = ["Planar", "Planar(impl=autograd)", "Radial", "NICE-orth", "NICE-perm"]
AMORTIZED = ["planar", "planar_chain", "radial", "additive_coupling (orth)", "additive_coupling (perm)"]


def _amortized(kind: str, dim: int, K: int, gen: torch.Generator) -> tuple[FlowFn, FlowFn | None]:
    """Functional forms with per-example parameters (batch, K, ...), as an encoder emits them."""
    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=gen, dtype=F64)

    if kind in ("planar", "planar_chain"):
        u, w, b = r(BATCH, K, dim), r(BATCH, K, dim, scale=dim ** -0.5), r(BATCH, K)
        fwd = planar if kind == "planar" else planar_chain
        return (lambda z: fwd(z, u, w, b)), (lambda y: planar_inverse(y, u, w, b))
    if kind == "radial":
        z0, a, bt = r(BATCH, K, dim), r(BATCH, K), r(BATCH, K)
        return (lambda z: radial(z, z0, a, bt)), (lambda y: radial_inverse(y, z0, a, bt))
    H, d = 8, dim // 2
    mixing = random_mixing(dim, K, "orth" if "orth" in kind else "perm", gen, F64)
    params = (r(K, H, d, scale=d ** -0.5), r(BATCH, K, H), r(K, dim - d, H, scale=H ** -0.5), r(BATCH, K, dim - d))
    return (lambda z: additive_coupling(z, *params, mixing)), (lambda y: additive_coupling_inverse(y, *params, mixing))


def _build(kind: str, dim: int, K: int, seed: int = 0) -> tuple[FlowFn, FlowFn | None, torch.nn.Module | None]:
    gen = torch.Generator().manual_seed(seed)
    if kind in MODULES:
        m = _module(kind, dim, K, gen)
        return m, m.inverse, m
    fwd, inv = _amortized(kind, dim, K, gen)
    return fwd, inv, None


def _jacobian_log_det(f: FlowFn, z: torch.Tensor, vectorize: bool = True) -> torch.Tensor:
    """ln|det ∂f(z_i)/∂z_i| per row, from the full autograd Jacobian of the batched map (block diagonal:
    rows do not interact, so the diagonal blocks are the per-example Jacobians). ``vectorize`` batches
    the backward passes with vmap, which the fused chain's custom backward does not support."""
    J = jacobian(lambda x: f(x)[0], z, vectorize=vectorize)  # (batch, D, batch, D)
    blocks = torch.stack([J[i, :, i, :] for i in range(z.shape[0])])
    return torch.linalg.slogdet(blocks).logabsdet


def _z(dim: int, dtype: torch.dtype = F64, seed: int = 1) -> torch.Tensor:
    return 1.5 * torch.randn(BATCH, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------------------------
# log-dets against autograd, float64 and float32
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 40])
@pytest.mark.parametrize("K", [1, 32])
@pytest.mark.parametrize("kind", MODULES + AMORTIZED)
def test_log_det_matches_autograd_jacobian(kind: str, K: int, dim: int) -> None:
    f, _, _ = _build(kind, dim, K)
    z = _z(dim)
    _, log_det = f(z)
    assert log_det.shape == (BATCH,)
    expected = _jacobian_log_det(f, z, vectorize=kind not in ("Planar", "planar_chain"))
    torch.testing.assert_close(log_det, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dim", [2, 40])
@pytest.mark.parametrize("K", [1, 32])
@pytest.mark.parametrize("kind", MODULES + ["planar", "planar_chain", "radial"])
def test_float32_log_det_close_to_float64(kind: str, K: int, dim: int) -> None:
    f64, _, module = _build(kind, dim, K)
    z = _z(dim)
    if module is not None:
        f32 = copy.deepcopy(module).float()
    else:  # rebuild the same parameters, then run them in float32
        gen = torch.Generator().manual_seed(0)
        name = {"planar": planar, "planar_chain": planar_chain, "radial": radial}[kind]
        shapes = [(BATCH, K, dim), (BATCH, K, dim), (BATCH, K)] if kind != "radial" else \
            [(BATCH, K, dim), (BATCH, K), (BATCH, K)]
        params = [torch.randn(*s, generator=gen, dtype=F64) for s in shapes]
        if kind != "radial":
            params[1] = params[1] * dim ** -0.5
        f64 = lambda x: name(x, *params)  # noqa: E731 - same draw as _amortized
        f32 = lambda x: name(x, *(p.float() for p in params))  # noqa: E731
    ld64 = f64(z)[1]
    ld32 = f32(z.float())[1]
    assert ld32.dtype == torch.float32
    assert (ld32.double() - ld64).abs().max() < 5e-4


def test_coupling_log_det_is_exactly_zero() -> None:
    f, _, _ = _build("NICE-orth", 6, 3)
    assert torch.equal(f(_z(6))[1], torch.zeros(BATCH, dtype=F64))


# ----------------------------------------------------------------------------------------------
# inverses
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 40])
@pytest.mark.parametrize("K", [1, 32])
@pytest.mark.parametrize("kind", MODULES + AMORTIZED)
def test_inverse_round_trip_and_log_det(kind: str, K: int, dim: int) -> None:
    f, inv, _ = _build(kind, dim, K)
    z = _z(dim)
    y, ld = f(z)
    z_back, ld_inv = inv(y)
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=0)
    torch.testing.assert_close(ld_inv, -ld, atol=1e-9, rtol=0)
    y_again, _ = f(z_back)
    torch.testing.assert_close(y_again, y, atol=1e-9, rtol=0)


def test_planar_inverse_near_singular_layer() -> None:
    """wᵀû within 2·10⁻⁹ of −1 makes the slope of the scalar equation a + wᵀû·tanh a = c vanish at
    a = 0, where Newton's method stalls; bisection still converges. The first point sits exactly at
    a = 0, where the inverse amplifies rounding by ≈10⁹ along w, so it is checked through f(f⁻¹(y)) = y
    and loosely in z; the second is well conditioned and round-trips to rounding."""
    u = torch.tensor([[-20.0, 0.5]], dtype=F64)  # wᵀu = −20 → wᵀû = softplus(−20) − 1 ≈ −1 + 2·10⁻⁹
    w = torch.tensor([[1.0, 0.0]], dtype=F64)
    b = torch.tensor([0.3], dtype=F64)
    _, one_plus = planar_constrain(u, w)
    assert 0 < float(one_plus) < 1e-8
    z = torch.tensor([[-0.3, 1.0], [2.0, -1.0]], dtype=F64)
    y, ld = planar(z, u, w, b)
    z_back, ld_inv = planar_inverse(y, u, w, b)
    torch.testing.assert_close(planar(z_back, u, w, b)[0], y, atol=1e-12, rtol=0)
    torch.testing.assert_close(z_back[0], z[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(z_back[1], z[1], atol=1e-12, rtol=0)
    torch.testing.assert_close(ld_inv, -ld, atol=1e-6, rtol=0)
    assert float(ld[0]) < -15  # the layer nearly collapses the w direction at a = 0


def test_compose_adds_log_dets_and_inverts() -> None:
    gen = torch.Generator().manual_seed(3)
    flow = Compose([_module("Planar", 4, 3, gen), _module("Radial", 4, 2, gen), _module("NICE-orth", 4, 2, gen)])
    z = _z(4)
    y, ld = flow(z)
    torch.testing.assert_close(ld, _jacobian_log_det(flow, z, vectorize=False), atol=1e-10, rtol=0)
    z_back, ld_inv = flow.inverse(y)
    torch.testing.assert_close(z_back, z, atol=1e-10, rtol=0)
    torch.testing.assert_close(ld_inv, -ld, atol=1e-10, rtol=0)


def test_diagonal_gaussian_sample_matches_log_prob() -> None:
    q0 = DiagonalGaussian(3, mean=0.5, log_std=-0.2).double()
    z, log_q = q0.sample(5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(log_q, q0.log_prob(z), atol=1e-12, rtol=0)
    normal = torch.distributions.Normal(q0.mean.detach(), q0.log_std.detach().exp())
    torch.testing.assert_close(log_q, normal.log_prob(z).sum(-1), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------
# constraints and finiteness under extreme raw parameters
# ----------------------------------------------------------------------------------------------
RAW = st.floats(-100, 100, allow_nan=False, width=32)  # exactly representable in float32 and float64
DTYPES = [torch.float32, torch.float64]


@settings(max_examples=200, deadline=None)
@given(u=arrays(np.float64, (4, 3), elements=RAW), w=arrays(np.float64, (4, 3), elements=RAW),
       dtype=st.sampled_from(DTYPES))
def test_planar_constraint_holds(u: np.ndarray, w: np.ndarray, dtype: torch.dtype) -> None:
    u_t, w_t = torch.tensor(u, dtype=dtype), torch.tensor(w, dtype=dtype)
    u_hat, one_plus = planar_constrain(u_t, w_t)
    assert torch.isfinite(u_hat).all() and torch.isfinite(one_plus).all()
    assert (one_plus >= 0).all(), "wᵀû ≥ −1 as computed"
    # the returned 1 + wᵀû is the one of the returned û (up to rounding of the dot product)
    w64, uh64 = w_t.double(), u_hat.double()
    slack = 1e-5 if dtype == torch.float32 else 1e-12
    # û = u + correction may cancel: the rounding error scales with |w|·(|u| + |û|)
    scale = 1.0 + (w64.abs() * (uh64.abs() + u_t.double().abs())).sum(-1)
    assert ((1.0 + (w64 * uh64).sum(-1) - one_plus.double()).abs() <= slack * scale).all()


@settings(max_examples=200, deadline=None)
@given(alpha=arrays(np.float64, (5,), elements=RAW), beta=arrays(np.float64, (5,), elements=RAW),
       dtype=st.sampled_from(DTYPES))
def test_radial_constraint_holds(alpha: np.ndarray, beta: np.ndarray, dtype: torch.dtype) -> None:
    a, b, a_plus_b = radial_constrain(torch.tensor(alpha, dtype=dtype), torch.tensor(beta, dtype=dtype))
    assert (a > 0).all()
    assert (b >= -a).all()
    assert (a_plus_b > 0).all()


def _assert_finite_step(fn: Callable[..., tuple[torch.Tensor, torch.Tensor]], z: torch.Tensor,
                        *params: torch.Tensor) -> None:
    z = z.clone().requires_grad_()
    params = tuple(p.clone().requires_grad_() for p in params)
    out, log_det = fn(z, *params)
    assert torch.isfinite(out).all() and torch.isfinite(log_det).all()
    grads = torch.autograd.grad(out.sum() + log_det.sum(), (z, *params))
    for g in grads:
        assert torch.isfinite(g).all()


@settings(max_examples=100, deadline=None)
@given(u=arrays(np.float64, (2, 2), elements=RAW), w=arrays(np.float64, (2, 2), elements=RAW),
       b=arrays(np.float64, (2,), elements=RAW), z=arrays(np.float64, (3, 2), elements=RAW),
       dtype=st.sampled_from(DTYPES), fn=st.sampled_from([planar, planar_chain]))
def test_planar_finite_for_extreme_raw_parameters(u, w, b, z, dtype, fn) -> None:
    t = lambda x: torch.tensor(x, dtype=dtype)  # noqa: E731
    _assert_finite_step(fn, t(z), t(u), t(w), t(b))


@settings(max_examples=100, deadline=None)
@given(z0=arrays(np.float64, (2, 2), elements=RAW), alpha=arrays(np.float64, (2,), elements=RAW),
       beta=arrays(np.float64, (2,), elements=RAW), z=arrays(np.float64, (3, 2), elements=RAW),
       dtype=st.sampled_from(DTYPES))
def test_radial_finite_for_extreme_raw_parameters(z0, alpha, beta, z, dtype) -> None:
    t = lambda x: torch.tensor(x, dtype=dtype)  # noqa: E731
    _assert_finite_step(radial, t(z), t(z0), t(alpha), t(beta))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn", [planar, planar_chain])
def test_planar_at_w_zero_is_a_translation(fn, dtype: torch.dtype) -> None:
    z = torch.randn(4, 3, dtype=dtype)
    u = torch.randn(2, 3, dtype=dtype)
    w = torch.zeros(2, 3, dtype=dtype)
    b = torch.tensor([0.5, -1.0], dtype=dtype)
    y, ld = fn(z, u, w, b)
    torch.testing.assert_close(y, z + (u * torch.tanh(b).unsqueeze(-1)).sum(0))
    assert torch.equal(ld, torch.zeros(4, dtype=dtype))
    _assert_finite_step(fn, z, u, w, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_radial_at_its_centre(dtype: torch.dtype) -> None:
    """r = 0 (z = z0): the map fixes z0, and values and gradients stay finite (‖·‖ is not smooth there)."""
    z0 = torch.tensor([[0.5, -1.0]], dtype=dtype)
    alpha, beta = torch.tensor([-100.0], dtype=dtype), torch.tensor([100.0], dtype=dtype)
    y, ld = radial(z0.clone(), z0, alpha, beta)
    torch.testing.assert_close(y, z0)
    a, _, a_plus_b = radial_constrain(alpha, beta)
    # at r = 0 each factor of the Jacobian is 1 + β/α = (α + β)/α
    torch.testing.assert_close(ld, 2 * (torch.log(a_plus_b) - torch.log(a)))
    _assert_finite_step(radial, z0, z0, alpha, beta)


# ----------------------------------------------------------------------------------------------
# the fused planar chain against the reference
# ----------------------------------------------------------------------------------------------
def _planar_params(layout: str, batch: int, K: int, D: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {"shared": [(K, D), (K, D), (K,)], "per-example": [(batch, K, D), (batch, K, D), (batch, K)],
              "mixed": [(K, D), (batch, K, D), (K,)]}[layout]
    return [torch.randn(*s, generator=gen, dtype=F64) for s in shapes]


@pytest.mark.parametrize("layout", ["shared", "per-example", "mixed"])
@pytest.mark.parametrize("K", [1, 7])
def test_planar_chain_matches_reference_values_and_gradients(layout: str, K: int) -> None:
    batch, D = 5, 4
    params = _planar_params(layout, batch, K, D)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(batch, D, generator=gen, dtype=F64)
    g_z, g_ld = torch.randn(batch, D, generator=gen, dtype=F64), torch.randn(batch, generator=gen, dtype=F64)
    results = []
    for fn in (planar, planar_chain):
        leaves = [z.clone().requires_grad_()] + [p.clone().requires_grad_() for p in params]
        out, ld = fn(*leaves)
        grads = torch.autograd.grad((out * g_z).sum() + (ld * g_ld).sum(), leaves)
        results.append([out, ld, *grads])
    for ref, fused in zip(*results):
        assert ref.shape == fused.shape
        torch.testing.assert_close(fused, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("which", ["z only", "log-det only"])
def test_planar_chain_when_one_output_is_unused(which: str) -> None:
    params = _planar_params("per-example", 3, 4, 2)
    z = torch.randn(3, 2, dtype=F64)
    results = []
    for fn in (planar, planar_chain):
        leaves = [z.clone().requires_grad_()] + [p.clone().requires_grad_() for p in params]
        out, ld = fn(*leaves)
        loss = out.square().sum() if which == "z only" else ld.sum()
        results.append(torch.autograd.grad(loss, leaves))
    for ref, fused in zip(*results):
        torch.testing.assert_close(fused, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("layout", ["shared", "per-example", "mixed"])
def test_planar_chain_gradcheck(layout: str) -> None:
    params = [p.requires_grad_() for p in _planar_params(layout, 3, 3, 2, seed=2)]
    z = torch.randn(3, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(planar_chain, (z, *params))


def test_planar_module_fused_and_reference_agree() -> None:
    gen = torch.Generator().manual_seed(5)
    fused = _randomize(Planar(3, 6), gen)
    ref = Planar(3, 6, impl="autograd").double()
    ref.load_state_dict(fused.state_dict())
    z = torch.randn(8, 3, dtype=F64)
    for m in (fused, ref):
        out, ld = m(z)
        (out.sum() + ld.sum()).backward()
    torch.testing.assert_close(fused(z), ref(z), atol=1e-12, rtol=0)
    for p, q in zip(fused.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-10, rtol=0)


def test_planar_chain_has_no_double_backward() -> None:
    z = torch.randn(2, 2, dtype=F64, requires_grad=True)
    u, w, b = _planar_params("shared", 2, 2, 2)
    out, ld = planar_chain(z, u, w, b)
    with pytest.raises(RuntimeError, match=r"not differentiable .* use flowbook.flows.planar"):
        torch.autograd.grad(ld.sum(), z, create_graph=True)


# ----------------------------------------------------------------------------------------------
# errors say what was wrong
# ----------------------------------------------------------------------------------------------
def _planar_args(dtype: torch.dtype = F64) -> tuple[torch.Tensor, ...]:
    return torch.randn(4, 3, dtype=dtype), torch.randn(2, 3, dtype=dtype), torch.randn(2, 3, dtype=dtype), \
        torch.randn(2, dtype=dtype)


@pytest.mark.parametrize("fn", [planar, planar_chain, planar_inverse])
def test_planar_shape_errors(fn) -> None:
    z, u, w, b = _planar_args()
    with pytest.raises(ValueError, match=r"z must have shape \(batch, dim\), got \(3,\)"):
        fn(z[0], u, w, b)
    with pytest.raises(ValueError, match=r"u must have shape \(K, 3\) or \(batch=4, K, 3\), got \(2, 5\)"):
        fn(z, torch.randn(2, 5, dtype=F64), w, b)
    with pytest.raises(ValueError, match=r"w must have shape .* got \(3, 2, 3\)"):
        fn(z, u, torch.randn(3, 2, 3, dtype=F64), b)  # per-example with the wrong batch
    with pytest.raises(ValueError, match="disagree on the number of layers K"):
        fn(z, u, w, torch.randn(3, dtype=F64))


@pytest.mark.parametrize("fn", [planar, planar_chain])
def test_planar_dtype_errors(fn) -> None:
    z, u, w, b = _planar_args()
    with pytest.raises(TypeError, match="floating point"):
        fn(z.long(), u, w, b)
    with pytest.raises(TypeError, match=r"u has dtype torch.float32 but z has torch.float64"):
        fn(z, u.float(), w, b)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        fn(z, u.numpy(), w, b)


@pytest.mark.parametrize("fn", [planar, planar_chain])
def test_planar_device_error(fn) -> None:
    z, u, w, b = _planar_args()
    with pytest.raises(ValueError, match=r"w is on meta but z is on cpu; move them to one device"):
        fn(z, u, w.to("meta"), b)


def test_radial_and_coupling_errors() -> None:
    z = torch.randn(4, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"z0 must have shape \(K, 3\)"):
        radial(z, torch.randn(2, 2, dtype=F64), torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="alpha is on meta"):
        radial(z, torch.randn(2, 3, dtype=F64), torch.zeros(2, device="meta", dtype=F64), torch.zeros(2, dtype=F64))
    m = AdditiveCoupling(3, 2)
    with pytest.raises(ValueError, match=r"w1 must have shape \(K, hidden, 1\)"):
        additive_coupling(z.float(), torch.randn(2, 8, 2), m.b1, m.w2, m.b2, m.mixing)
    with pytest.raises(ValueError, match="mixing must be"):
        additive_coupling(z.float(), m.w1, m.b1, m.w2, m.b2, m.mixing[:, :2])
    with pytest.raises(TypeError, match="mixing has dtype torch.float64 but z has torch.float32"):
        additive_coupling(z.float(), m.w1, m.b1, m.w2, m.b2, m.mixing.double())
    with pytest.raises(ValueError, match="needs dim ≥ 2"):
        additive_coupling(z[:, :1].float(), m.w1, m.b1, m.w2, m.b2, m.mixing)
    with pytest.raises(ValueError, match="kind must be 'orth' or 'perm'"):
        random_mixing(3, 2, "shuffle")


@pytest.mark.parametrize("make", [lambda: Planar(3, 2), lambda: Radial(3, 2), lambda: AdditiveCoupling(3, 2)])
def test_module_errors(make) -> None:
    flow = make()
    with pytest.raises(ValueError, match="z has 4 features but the flow has dim=3"):
        flow(torch.randn(5, 4))
    with pytest.raises(TypeError, match=r"the flow has dtype torch.float32 but z has torch.float64"):
        flow(torch.randn(5, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"the flow is on meta but z is on cpu; .*z.to\('meta'\) or flow.to"):
        copy.deepcopy(flow).to("meta")(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"needs dim ≥ \d and K ≥ 1"):
        type(flow)(3, 0)


def test_compose_errors() -> None:
    with pytest.raises(ValueError, match="at least one flow"):
        Compose([])
    with pytest.raises(ValueError, match=r"share one dim, got \[2, 3\]"):
        Compose([Planar(2, 1), Planar(3, 1)])


def test_orthogonal_mixing_is_orthogonal_in_its_dtype() -> None:
    m = AdditiveCoupling(5, 3, mixing="orth").double()
    eye = torch.eye(5, dtype=F64).expand(3, 5, 5)
    torch.testing.assert_close(m.mixing @ m.mixing.transpose(-1, -2), eye, atol=1e-14, rtol=0)
    perm = random_mixing(5, 3, "perm")
    assert all(sorted(p.tolist()) == list(range(5)) for p in perm)


def test_public_names() -> None:
    for name in ["planar", "planar_inverse", "planar_constrain", "radial", "radial_inverse", "radial_constrain",
                 "additive_coupling", "additive_coupling_inverse", "random_mixing", "Planar", "Radial",
                 "AdditiveCoupling", "Compose", "DiagonalGaussian"]:
        assert name in flows.__all__ and hasattr(flows, name)


@pytest.mark.parametrize("per_example", [False, True], ids=["shared", "per-example"])
@pytest.mark.parametrize("fn", [planar, planar_inverse, radial, radial_inverse])
def test_zero_layers_are_the_identity_with_zero_log_det(fn, per_example: bool) -> None:
    """K = 0 (a zero-length layer axis) is the identity, with one zero log-det per example, like K ≥ 1."""
    z = torch.randn(BATCH, 4, dtype=F64)
    lead = (BATCH, 0) if per_example else (0,)
    if fn in (planar, planar_inverse):
        params = (torch.zeros(*lead, 4, dtype=F64), torch.zeros(*lead, 4, dtype=F64), torch.zeros(*lead, dtype=F64))
    else:
        params = (torch.zeros(*lead, 4, dtype=F64), torch.zeros(*lead, dtype=F64), torch.zeros(*lead, dtype=F64))
    out, log_det = fn(z, *params)
    assert torch.equal(out, z)
    assert log_det.shape == (BATCH,) and torch.equal(log_det, torch.zeros(BATCH, dtype=F64))


# ----------------------------------------------------------------------------------------------
# specs: one per flow type
# ----------------------------------------------------------------------------------------------
# every registered type at its defaults (read from the registry, so a new type is tested here without an
# edit), and the options that change a type's layout or map
SPEC_CASES = [cls(3, 4) for cls in flows.SPECS.values() if cls.min_dim <= 3 and cls is not IAFSpec] + [
    flows.PlanarSpec(3, 4, impl="autograd"), flows.NiceSpec(4, 3, hidden=5), flows.NiceSpec(5, 2, hidden=3, mixing="perm")]
# flowbook.iaf at narrower widths than its default: wider MADEs draw gates here that contract some directions
# by 10⁻¹⁰ or more, where no inverse can round-trip to 1e-9 (tests/test_iaf.py checks those separately)
SPEC_CASES += [IAFSpec(2, 3, hidden=4), IAFSpec(5, 3, hidden=4)]


def _spec_params(spec: flows.FlowSpec, seed: int = 0, batch: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """Random (non-identity) float64 parameters of ``spec``, shared or per example."""
    gen = torch.Generator().manual_seed(seed)
    params = {n: p.double() + 0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
              for n, p in spec.identity(batch, gen).items()}
    params.update(spec.draw_buffers(gen, torch.float64))
    return params


@pytest.mark.parametrize("spec", SPEC_CASES, ids=repr)
def test_spec_forward_inverse_round_trip_and_log_det(spec) -> None:
    params = _spec_params(spec)
    z = torch.randn(6, spec.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y, ld = spec.forward(z, params)
    back, ld_inv = spec.inverse(y, params)
    torch.testing.assert_close(back, z, atol=1e-9, rtol=0)
    torch.testing.assert_close(ld_inv, -ld, atol=1e-9, rtol=0)
    # the log-det against autograd's Jacobian of one example
    jac = torch.autograd.functional.jacobian(lambda v: spec.forward(v[None], params)[0][0], z[0])
    torch.testing.assert_close(ld[0], torch.linalg.slogdet(jac)[1], atol=1e-10, rtol=0)


@pytest.mark.parametrize("spec", SPEC_CASES, ids=repr)
def test_spec_identity_is_the_identity_map(spec) -> None:
    """In the float32 it is made in: planar's wᵀu = ln(e − 1) holds to float32 rounding, so û ≈ 1e-8."""
    gen = torch.Generator().manual_seed(2)
    params = {**spec.identity(generator=gen), **spec.draw_buffers(gen)}
    if spec.buffers:  # NICE: the couplings are identities; the fixed mixings are not, so replace them
        params["mixing"] = torch.eye(spec.dim).expand(spec.K, spec.dim, spec.dim)
    z = torch.randn(5, spec.dim, generator=gen)
    y, ld = spec.forward(z, params)
    torch.testing.assert_close(y, z, atol=1e-6, rtol=0)
    torch.testing.assert_close(ld, torch.zeros(5), atol=1e-6, rtol=0)
    assert set(spec.identity()) == {n for n in spec.names if n not in spec.buffers}
    assert {n: tuple(p.shape) for n, p in spec.identity((7,)).items()} == {
        n: (7, *s) for n, s in spec.shapes().items() if n not in spec.buffers}


@pytest.mark.parametrize("spec", SPEC_CASES, ids=repr)
def test_spec_split_is_the_head_layout_and_per_example_equals_shared(spec) -> None:
    shared = _spec_params(spec, seed=3)
    raw = spec.flatten_amortized(shared).expand(4, spec.head_size())
    split = spec.split(raw)
    assert list(split) == list(spec.amortized)
    for n, p in split.items():
        assert p.shape == (4, *spec.shapes()[n])
        # what the head's layout holds of the parameter (all of it when dense; a triangle of a triangular one)
        torch.testing.assert_close(spec.pack(n, p[2]), spec.pack(n, shared[n]))
    z = torch.randn(4, spec.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    per_example = {**shared, **split}
    for out, ref in zip(spec.forward(z, per_example), spec.forward(z, shared)):
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="head output must be"):
        spec.split(raw[:, 1:])


@pytest.mark.parametrize("spec", SPEC_CASES, ids=repr)
def test_spec_mask_layers_turns_layers_into_identities(spec) -> None:
    params = _spec_params(spec, seed=5)
    if spec.name == "nice" and not params["mixing"].is_floating_point():
        params["mixing"] = torch.eye(spec.dim, dtype=torch.float64)[params["mixing"]]
    keep = torch.tensor([1.0] * 2 + [0.0] * (spec.K - 2))
    z = torch.randn(3, spec.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    short = dataclasses.replace(spec, K=2)
    for out, ref in zip(spec.forward(z, spec.mask_layers(params, keep)),
                        short.forward(z, {n: p[:2] for n, p in params.items()})):
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


def test_nice_per_example_weights_equal_one_call_per_example() -> None:
    """additive_coupling with (batch, K, …) weights and mixings is each example's own shared-parameter call."""
    spec = flows.NiceSpec(4, 3, hidden=5)
    params = _spec_params(spec, seed=7, batch=(3,))
    params["mixing"] = torch.stack([spec.draw_mixing(torch.Generator().manual_seed(i), torch.float64)
                                    for i in range(3)])
    z = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    y, _ = flows.additive_coupling(z, *spec.args(params))
    for i in range(3):
        yi, _ = flows.additive_coupling(z[i:i + 1], *(p[i] for p in spec.args(params)))
        torch.testing.assert_close(y[i:i + 1], yi, atol=1e-12, rtol=0)
    torch.testing.assert_close(flows.additive_coupling_inverse(y, *spec.args(params))[0], z, atol=1e-12, rtol=0)


def test_triangular_head_layout_round_trips_and_costs_half_a_square() -> None:
    """pack_upper keeps the D(D+1)/2 entries on and above the diagonal; unpack_upper puts them back, zero below."""
    D = 5
    x = torch.randn(2, 3, D, D, dtype=F64, generator=torch.Generator().manual_seed(11))
    flat = flows.pack_upper(x)
    assert flat.shape == (2, 3, D * (D + 1) // 2)
    back = flows.unpack_upper(flat, D)
    torch.testing.assert_close(back, torch.triu(x), atol=0, rtol=0)
    torch.testing.assert_close(flows.pack_upper(back), flat, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"takes 15 entries, got 14"):
        flows.unpack_upper(flat[..., 1:], D)


def test_dense_head_layout_is_the_flat_view() -> None:
    """The default layout (every stored weight file was written with it): pack flattens, unpack views."""
    spec = flows.PlanarSpec(3, 4)
    params = _spec_params(spec)
    assert [spec.head_numel(n) for n in spec.amortized] == [12, 12, 4] and spec.head_size_per_layer() == 7
    torch.testing.assert_close(spec.flatten_amortized(params),
                               torch.cat([params[n].flatten() for n in spec.amortized]), atol=0, rtol=0)
    torch.testing.assert_close(spec.unpack("u", spec.pack("u", params["u"][None])), params["u"][None], atol=0, rtol=0)


def test_spec_for_covers_every_type_and_ignores_foreign_options() -> None:
    assert flows.spec_for("planar", 3, 2, hidden=9) == flows.PlanarSpec(3, 2)
    assert flows.spec_for("nice", 4, 2, hidden=9, impl="fused") == flows.NiceSpec(4, 2, hidden=9)
    with pytest.raises(ValueError, match="flow must be one of"):
        flows.spec_for("maf", 3, 2)
    with pytest.raises(ValueError, match="impl must be one of"):
        flows.PlanarSpec(3, 2, impl="cuda")


# ----------------------------------------------------------------------------------------------
# one dispatch for the planar chain, and the name of what runs
# ----------------------------------------------------------------------------------------------
IMPLS = ["autograd", "fused", "auto"] + (["native"] if native.load("planar_chain", "float64") is not None else [])


@pytest.mark.parametrize("per_example", [False, True])
def test_planar_chain_implementations_agree_in_float64(per_example) -> None:
    gen = torch.Generator().manual_seed(9)
    lead = (5,) if per_example else ()
    z = torch.randn(5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    u, w = (torch.randn(*lead, 4, 3, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(2))
    b = torch.randn(*lead, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    results = {}
    for impl in IMPLS:
        if impl == "native" and not per_example:
            with pytest.raises(RuntimeError, match="per-example"):
                flows.planar_chain(z, u, w, b, impl=impl)
            continue
        out, ld = flows.planar_chain(z, u, w, b, impl=impl)
        grads = torch.autograd.grad((out.square().sum() + ld.sum()), (z, u, w, b))
        results[impl] = (out, ld, *grads)
    for impl, res in results.items():
        for got, ref in zip(res, results["autograd"]):
            torch.testing.assert_close(got, ref, atol=1e-10, rtol=0, msg=impl)
    with pytest.raises(ValueError, match="impl must be one of"):
        flows.planar_chain(z, u, w, b, impl="C")


def test_planar_chain_with_no_layers_is_the_identity() -> None:
    z = torch.randn(3, 2)
    for impl in ("autograd", "fused", "auto"):
        out, ld = flows.planar_chain(z, torch.zeros(3, 0, 2), torch.zeros(3, 0, 2), torch.zeros(3, 0), impl=impl)
        assert torch.equal(out, z) and torch.equal(ld, torch.zeros(3))


def test_planar_impl_names_what_runs(monkeypatch) -> None:
    assert planar_chain.__module__ == "flowbook.kernels.fused"
    assert flows.planar_impl("cpu", "float32", impl="autograd").startswith("flowbook.flows.planar")
    assert flows.planar_impl("cpu", torch.float64, impl="fused").startswith("flowbook.kernels.fused.planar_chain")
    assert "on cuda" in flows.planar_impl("cuda", "float32")
    assert "shared float32" in flows.planar_impl("cpu", "float32", per_example=False)
    if native.load("planar_chain", "float32") is not None:
        assert flows.planar_impl("cpu", "float32").startswith("flowbook.kernels.native")
    # where no kernel can be built, the result says the PyTorch loop ran, and why
    monkeypatch.setattr(native, "load", lambda name, dtype: None)
    monkeypatch.setattr(native, "status", lambda name="planar_chain", dtype="float32":
                        f"{name} ({dtype}): PyTorch fallback, because no C compiler found")
    auto = flows.planar_impl("cpu", "float32")
    assert auto.startswith("flowbook.kernels.fused.planar_chain") and auto.endswith("because no C compiler found")
    assert flows.planar_impl("cpu", "float32", impl="native").startswith("none: ")


def test_each_spec_names_the_implementation_its_flow_runs() -> None:
    assert flows.PlanarSpec(3, 2, impl="autograd").implementation() == flows.planar_impl("cpu", "float32", impl="autograd")
    assert flows.RadialSpec(3, 2).implementation() == "flowbook.flows.RadialSpec.forward"
    assert flows.NiceSpec(4, 2).implementation() == "flowbook.flows.NiceSpec.forward"
