"""Tests for flowbook.iaf: MADE's autoregressive masks, the IAF log-det against autograd, its triangular
Jacobian, the exact inverse and identity, finiteness at extreme parameters, errors, and training as a
DLGM row through the command line and as 2-D fits."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from flowbook import experiments2d as E
from flowbook import flows
from flowbook.__main__ import main as flowbook_main
from flowbook.iaf import IAFSpec, iaf, iaf_gate_log, iaf_inverse, made, made_masks

F64 = torch.float64


def _params(spec: IAFSpec, seed: int = 0, batch: tuple[int, ...] = (), scale: float = 0.5) -> dict[str, torch.Tensor]:
    """Random float64 parameters, every entry non-zero (so masks, not zeros, make the structure); weights
    at ``scale`` times that of a linear layer (1/√fan-in), so that every gate matters. Larger random
    gates contract most steps hard (E ln(1 + tanh s) < 0), and the composed Jacobian's determinant of
    e⁻³⁰ or less then loses digits in autograd's LU reference, not in the flow."""
    gen = torch.Generator().manual_seed(seed)
    fan_in = {"w1": spec.dim, "w2": spec.hidden}
    return {n: scale * torch.randn(*batch, *s, generator=gen, dtype=F64) / math.sqrt(fan_in.get(n, 1))
            for n, s in spec.shapes().items()}


def _z(batch: int, dim: int, seed: int = 1) -> torch.Tensor:
    return 1.5 * torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _step_jacobian(f, z: torch.Tensor) -> torch.Tensor:
    """∂f(z_0)/∂z_0 of the first example (the examples do not interact)."""
    return jacobian(lambda v: f(v[None])[0], z[0])


# ----------------------------------------------------------------------------------------------
# MADE
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reverse", [False, True], ids=["natural", "reversed"])
@pytest.mark.parametrize("dim, hidden", [(2, 3), (5, 4), (5, 9)])
def test_made_outputs_depend_only_on_earlier_inputs(dim: int, hidden: int, reverse: bool) -> None:
    """In the step's order, ∂(m, s)/∂z is strictly lower triangular (autograd), and with H ≥ D − 1
    every entry below the diagonal is present: output i sees all inputs before i."""
    spec = IAFSpec(dim, 1, hidden=hidden)
    p = {n: v[0] for n, v in _params(spec).items()}
    z = _z(3, dim)
    order = torch.arange(dim - 1, -1, -1) if reverse else torch.arange(dim)
    for out in range(2):  # m, then s
        J = _step_jacobian(lambda v: made(v, p["w1"], p["b1"], p["w2"], p["b2"], reverse)[out], z)
        J = J[order][:, order]  # rows and columns in the step's order
        assert torch.equal(torch.triu(J), torch.zeros_like(J))
        if hidden >= dim - 1:
            below = J[torch.tril_indices(dim, dim, -1).unbind()]
            assert (below != 0).all()


def test_made_masks_follow_the_degrees() -> None:
    m1, m2 = made_masks(4, 5)
    # hidden degrees 1, 2, 3, 1, 2: unit j sees inputs 1..d(j); output i sees units of degree < i
    assert m1.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert m2[:4].tolist() == [[0, 0, 0, 0, 0], [1, 0, 0, 1, 0], [1, 1, 0, 1, 1], [1, 1, 1, 1, 1]]
    assert torch.equal(m2[:4], m2[4:])  # m and s share it
    r1, r2 = made_masks(4, 5, reverse=True)
    assert torch.equal(r1, m1.flip(-1)) and torch.equal(r2, m2.flip(0).roll(4, 0))
    with pytest.raises(ValueError, match="dim ≥ 2"):
        made_masks(1, 4)


# ----------------------------------------------------------------------------------------------
# the flow: log-det, triangular Jacobian, inverse
# ----------------------------------------------------------------------------------------------
LAYOUTS = ["shared", "amortized b1", "per-example"]


def _layout(spec: IAFSpec, layout: str, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    shared = _params(spec, seed)
    if layout == "shared":
        return shared
    per_example = _params(spec, seed + 1, (batch,))
    return {**shared, "b1": per_example["b1"]} if layout == "amortized b1" else per_example


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dim, K", [(2, 1), (2, 5), (6, 1), (6, 4), (8, 8)])
def test_log_det_matches_autograd_jacobian(dim: int, K: int, layout: str) -> None:
    spec = IAFSpec(dim, K, hidden=7)
    params = _layout(spec, layout, 3)
    z = _z(3, dim)
    _, log_det = spec.forward(z, params)
    for i in range(3):
        one = {n: p[i:i + 1] if p.dim() == len(spec.shapes()[n]) + 1 else p for n, p in params.items()}
        J = _step_jacobian(lambda v: spec.forward(v, one)[0], z[i:i + 1])
        torch.testing.assert_close(log_det[i], torch.linalg.slogdet(J).logabsdet, atol=1e-10, rtol=0)


def test_float32_agrees_with_float64() -> None:
    spec = IAFSpec(6, 4, hidden=8)
    params = _params(spec, seed=8)
    z = _z(5, 6)
    y64, ld64 = spec.forward(z, params)
    y32, ld32 = spec.forward(z.float(), {n: p.float() for n, p in params.items()})
    assert y32.dtype == ld32.dtype == torch.float32
    assert (y32.double() - y64).abs().max() < 1e-4 and (ld32.double() - ld64).abs().max() < 5e-4


@pytest.mark.parametrize("step", [0, 1], ids=["natural", "reversed"])
def test_each_step_has_a_triangular_jacobian_with_the_gate_on_its_diagonal(step: int) -> None:
    """Step 0 is lower triangular, step 1 (reversed order) upper; the diagonal is g = 1 + tanh(s)."""
    spec = IAFSpec(5, 2, hidden=6)
    params = _params(spec)
    one = {n: p[step:step + 1] for n, p in params.items()}
    z = _z(1, 5)
    if step:  # step 1 on its own: give it step 1's masks by running two steps with step 0 an identity
        one = spec.mask_layers(params, torch.tensor([0.0, 1.0]))
    J = _step_jacobian(lambda v: spec.forward(v, one)[0], z)
    triangle = torch.triu(J, 1) if step == 0 else torch.tril(J, -1)
    assert torch.equal(triangle, torch.zeros_like(J))
    assert (torch.tril(J, -1) if step == 0 else torch.triu(J, 1)).abs().sum() > 0
    w1, b1, w2, b2 = (one[n][-1] for n in spec.names)
    _, s = made(z, w1, b1, w2, b2, reverse=bool(step))
    torch.testing.assert_close(torch.diagonal(J), 1 + torch.tanh(s[0]), atol=1e-14, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dim, K", [(2, 3), (7, 4)])
def test_inverse_round_trip_and_log_det(dim: int, K: int, layout: str) -> None:
    spec = IAFSpec(dim, K, hidden=8)
    params = _layout(spec, layout, 4)
    z = _z(4, dim)
    y, ld = spec.forward(z, params)
    back, ld_inv = spec.inverse(y, params)
    torch.testing.assert_close(back, z, atol=1e-12, rtol=0)
    torch.testing.assert_close(ld_inv, -ld, atol=1e-12, rtol=0)


def test_inverse_is_backward_stable_where_the_map_is_ill_conditioned() -> None:
    """Strong random gates contract some directions by 10⁻¹⁵ (condition number ~10¹⁶): z cannot come back
    to 1e-9 from rounded y, but the inverse still returns a z that the flow maps to y within rounding
    (the solved variables never meet an overflowed guess, see :func:`flowbook.iaf.iaf_inverse`)."""
    spec = IAFSpec(5, 4, hidden=6)
    params = _params(spec, seed=5, scale=1.6)
    z = _z(6, 5)
    y, ld = spec.forward(z, params)
    assert ld.min() < -35  # the regime meant
    back, _ = spec.inverse(y, params)
    torch.testing.assert_close(spec.forward(back, params)[0], y, atol=1e-13, rtol=0)


# ----------------------------------------------------------------------------------------------
# identity, extreme parameters, errors
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_identity_start_is_exactly_the_identity(dtype: torch.dtype) -> None:
    """At the spec's identity (random first layers, zero output layers) z_K equals z bit for bit and the
    log-det is exactly 0, for any per-example hidden bias (the encoder's context)."""
    spec = IAFSpec(5, 6, hidden=8)
    params = {n: p.to(dtype) for n, p in spec.identity(generator=torch.Generator().manual_seed(0)).items()}
    params["b1"] = torch.randn(4, 6, 8, dtype=dtype)
    z = _z(4, 5).to(dtype)
    y, ld = spec.forward(z, params)
    assert torch.equal(y, z) and torch.equal(ld, torch.zeros(4, dtype=dtype))
    # and the s outputs get a gradient at once, so training leaves the identity
    w2 = params["w2"].requires_grad_()
    y, ld = spec.forward(z, {**params, "w2": w2})
    assert torch.autograd.grad((y.square().sum() + ld.sum()), w2)[0][:, 5:].abs().sum() > 0


def test_the_context_reaches_every_variable_but_the_first_of_a_step() -> None:
    """Per-example hidden biases b1 (the encoder's context) change m and s of variables 2..D of a step,
    not those of its first variable (module docstring); with two steps, the reversal lets it in."""
    spec = IAFSpec(4, 2, hidden=5)
    params = _params(spec, seed=6)
    b1 = _params(spec, seed=7, batch=(2,))["b1"]  # two examples, two contexts
    z = _z(1, 4).expand(2, 4)  # the same z for both
    one = {**{n: p[:1] for n, p in params.items()}, "b1": b1[:, :1]}
    y, _ = spec.forward(z, one)
    assert y[0, 0] == y[1, 0] and (y[0, 1:] != y[1, 1:]).all()
    y, _ = spec.forward(z, {**params, "b1": b1})
    assert (y[0] != y[1]).all()


def test_a_dlgm_row_starts_exactly_at_the_identity_flow() -> None:
    """Through the DLGM's flow head (random small weights, so b1 differs per data point), z_K = z_0 and
    the log-det is 0 exactly: the IAF row starts where the flow-free model starts."""
    from flowbook.models import DLGM, DLGMConfig

    m = DLGM(DLGMConfig(flow="iaf", K=3, data_dim=12, latent=4, hidden=20, nice_hidden=6)).double()
    x = (torch.rand(5, 12, generator=torch.Generator().manual_seed(0)) < 0.4).double()
    (b1,) = m.flow_params(m.encode(x))
    assert b1.shape == (5, 3, 6) and b1.std(0).min() > 0
    z = _z(5, 4)
    zK, ld = m.flow(z, (b1,))
    assert torch.equal(zK, z) and torch.equal(ld, torch.zeros(5, dtype=F64))


def test_masked_layers_are_exact_identities() -> None:
    spec = IAFSpec(3, 5, hidden=4)
    params = _params(spec, seed=2)
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    z = _z(3, 3)
    masked = spec.mask_layers(params, keep)
    # the kept steps 0 and 2 keep their own orders (natural, natural): the same as a 3-step flow whose
    # middle step is the identity
    three = {n: p[:3] for n, p in masked.items()}
    for out, ref in zip(spec.forward(z, masked), spec.forward(z, three)):
        assert torch.equal(out, ref)
    y0, ld0 = spec.forward(z, spec.mask_layers(params, torch.zeros(5)))
    assert torch.equal(y0, z) and torch.equal(ld0, torch.zeros(3, dtype=F64))


def test_gate_log_is_accurate_and_finite_everywhere() -> None:
    values = [-1e30, -1e4, -50.0, -0.5, -0.49, 0.0, 1e-8, 3.0, 1e4, 1e30]
    s = torch.tensor(values, dtype=F64, requires_grad=True)
    # ln(1 + tanh s) = ln 2 − ln(1 + e^(−2s)), written for each sign so that no exp overflows
    ref = torch.tensor([math.log(2) + 2 * v - math.log1p(math.exp(2 * v)) if v < 0 else
                        math.log(2) - math.log1p(math.exp(-2 * v)) for v in values], dtype=F64)
    ld = iaf_gate_log(s)
    torch.testing.assert_close(ld, ref, atol=1e-15, rtol=1e-15)
    assert ld[5] == 0.0
    (grad,) = torch.autograd.grad(ld.sum(), s)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad[1:-1], 1 - torch.tanh(s.detach()[1:-1]), atol=1e-15, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("scale", [1e2, 1e4, 1e30])
def test_finite_values_and_gradients_at_extreme_gates(scale: float, dtype: torch.dtype) -> None:
    """s of either sign far beyond where tanh saturates (the biases of s at ±scale): the steps and the
    log-det stay finite, and so do all gradients."""
    spec = IAFSpec(4, 3, hidden=5)
    params = _params(spec, seed=4)
    signs = torch.tensor([1.0, -1.0], dtype=F64).repeat(6)[None, :]  # s of alternating sign per variable
    params["b2"] = torch.cat([params["b2"][:, :4], scale * signs[:, :4].expand(3, 4)], -1)
    leaves = {n: p.to(dtype).requires_grad_() for n, p in params.items()}
    z = _z(6, 4).to(dtype).requires_grad_()
    y, ld = spec.forward(z, leaves)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    assert ld.max() < -scale  # the contracting gates dominate: ln g ≈ −2|s| there
    grads = torch.autograd.grad(y.sum() + ld.sum(), [z, *leaves.values()])
    assert all(torch.isfinite(g).all() for g in grads)


def test_shape_errors_say_what_was_wrong() -> None:
    spec = IAFSpec(3, 2, hidden=4)
    w1, b1, w2, b2 = spec.args(_params(spec))
    z = _z(5, 3)
    with pytest.raises(ValueError, match=r"z must have shape \(batch, dim\), got \(3,\)"):
        iaf(z[0], w1, b1, w2, b2)
    with pytest.raises(ValueError, match=r"w1 must have shape \(K, hidden, 3\) or \(batch, K, hidden, 3\), got \(2, 4, 2\)"):
        iaf(z, w1[..., :2], b1, w2, b2)
    with pytest.raises(ValueError, match=r"w2 must have shape \(K, 6, 4\) or \(batch=5, K, 6, 4\), got \(2, 3, 4\)"):
        iaf_inverse(z, w1, b1, w2[:, :3], b2)
    with pytest.raises(ValueError, match=r"b1 must have shape \(K, 4\) or \(batch=5, K, 4\), got \(7, 2, 4\)"):
        iaf(z, w1, torch.zeros(7, 2, 4, dtype=F64), w2, b2)  # per example with the wrong batch
    with pytest.raises(ValueError, match="b2 has 1 layers but w1 has K=2"):
        iaf(z, w1, b1, w2, b2[:1])
    with pytest.raises(TypeError, match="b1 has dtype torch.float32 but z has torch.float64"):
        iaf(z, w1, b1.float(), w2, b2)
    with pytest.raises(ValueError, match="needs dim ≥ 2"):
        iaf(z[:, :1], w1[..., :1], b1, w2[:, :2], b2[:, :2])
    with pytest.raises(ValueError, match="hidden ≥ 1"):
        IAFSpec(3, 2, hidden=0)
    with pytest.raises(ValueError, match="needs dim ≥ 2"):
        IAFSpec(1, 2)


def test_cost_counts_head_outputs_and_the_weights_the_masks_let_through() -> None:
    # D = 3, H = 4: hidden degrees 1, 2, 1, 2 see 1, 2, 1, 2 inputs (6); output i sees the units of
    # degree < i: 0, 2, 4 for m and again for s (12); biases of m and s: 6 → 24 per step
    assert IAFSpec(3, 5, hidden=4).cost() == {"head_outputs": 20, "global_parameters": 5 * 24}
    spec = IAFSpec(40, 10, hidden=40)
    assert spec.cost()["head_outputs"] == spec.head_size() == 400


# ----------------------------------------------------------------------------------------------
# registered: trains through the command line and as 2-D fits
# ----------------------------------------------------------------------------------------------
def test_iaf_is_a_registered_flow_type() -> None:
    assert flows.SPECS["iaf"] is IAFSpec and "iaf" in flows.variants()
    assert flows.spec_for("iaf", 4, 3, hidden=9, impl="fused") == IAFSpec(4, 3, hidden=9)
    assert dataclasses.replace(IAFSpec(4, 3), K=1).head_size() == 64


def test_iaf_trains_as_a_dlgm_row_through_the_command_line(tmp_path) -> None:
    argv = ["train", "--flow", "iaf", "--K", "2", "--hidden", "16", "--updates", "3", "--batch-size", "20",
            "--eval-points", "5", "--eval-samples", "2", "--no-progress", "--ckpt-dir", str(tmp_path / "ckpt"),
            "--out", str(tmp_path / "out"), "--weights-dir", str(tmp_path / "w")]
    assert flowbook_main(argv) == 0
    record = json.loads((tmp_path / "out" / "mnist_fast_iaf_K2.json").read_text())
    assert record["config"]["model"]["flow"] == "iaf" and record["config"]["updates_done"] == 3
    assert torch.isfinite(torch.tensor(record["metrics"]["neg_log_p"]))
    state = torch.load(tmp_path / "w" / "mnist_fast_iaf_K2.pt", weights_only=True)
    assert state["state"]["iaf_w2"].abs().sum() > 0  # the global weights left their zero (identity) start


def test_iaf_trains_as_2d_fits(tmp_path) -> None:
    """D = 2: the second variable depends on the first, and the reversal lets the first depend on the
    second in the next step."""
    argv = ["--mode", "fast", "--targets", "U1", "--methods", "iaf", "--Ks", "1", "2", "--updates", "4",
            "--samples", "8", "--eval-samples", "200", "--out", str(tmp_path / "out"),
            "--ckpt-dir", str(tmp_path / "ck")]
    assert E.main(argv) == 0
    rows = json.loads((tmp_path / "out" / "energy2d_fast.json").read_text())["metrics"]["rows"]
    assert sorted((r["method"], r["K"]) for r in rows) == [("iaf", 1), ("iaf", 2)]
    assert all(torch.isfinite(torch.tensor(r["KL"])) for r in rows)
