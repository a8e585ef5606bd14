"""Tests of flowbook.models: likelihoods, the free energy of eq. 15, amortized flows, stacked rows."""
from __future__ import annotations

import math

import pytest
import torch

from flowbook import flows
from flowbook.models import (DLGM, DLGMConfig, MultiDLGM, bernoulli_log_likelihood,
                             logit_normal_log_likelihood, maxout, standard_normal_log_prob)

SMALL = dict(data_dim=12, latent=4, hidden=16)


def _x(n: int = 6, d: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g, dtype=torch.float64) < 0.4).double()


def test_maxout_takes_max_over_consecutive_windows():
    a = torch.tensor([[1.0, 5.0, 2.0, 0.0, -1.0, -3.0, 4.0, 2.0]])
    assert torch.equal(maxout(a, 4), torch.tensor([[5.0, 4.0]]))


@pytest.mark.parametrize("units, pre, out", [("pre_activations", 400, 100), ("outputs", 1600, 400)])
def test_reading_of_400_units(units, pre, out):
    c = DLGMConfig(maxout_units=units)
    assert (c.pre_activations, c.maxout_outputs) == (pre, out)
    m = DLGM(c)
    assert m.enc[0].weight.shape == (pre, 784) and m.enc[1].weight.shape == (pre, out)
    assert m.dec[0].weight.shape == (pre, 40) and m.dec_out.weight.shape == (784, out)


def test_bernoulli_log_likelihood_matches_torch_distribution():
    x = _x()
    logits = torch.randn(6, 12, dtype=torch.float64) * 3
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(bernoulli_log_likelihood(x, logits), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 30.0, 1e4])
def test_bernoulli_log_likelihood_value_and_gradient_against_autograd(scale):
    # float64, logits from tiny to extreme, x broadcast against S samples: the value and the closed-form
    # gradient against autograd through torch's own binary cross-entropy, and finite everywhere
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(5, 12, generator=g) < 0.4).double()
    logits = (torch.randn(3, 5, 12, generator=g, dtype=torch.float64) * scale).requires_grad_()
    ref = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x.expand_as(logits), reduction="none").sum(-1)
    out = bernoulli_log_likelihood(x, logits)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn(3, 5, generator=g, dtype=torch.float64)  # a weighted sum: the incoming gradient matters
    (grad,) = torch.autograd.grad((out * w).sum(), logits)
    (grad_ref,) = torch.autograd.grad((ref * w).sum(), logits)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()


def test_bernoulli_log_likelihood_gradient_at_zero_logit_is_x_minus_half():
    # the closed-form backward: at l = 0 the gradient is x − σ(0), where max(l, 0) and |l| have kinks
    logits = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    (grad,) = torch.autograd.grad(bernoulli_log_likelihood(x, logits).sum(), logits)
    torch.testing.assert_close(grad, x - 0.5)


def test_bernoulli_log_likelihood_float32_matches_torch_within_rounding():
    # the stored runs' dtype: per digit (784 pixels, logits as a trained decoder gives them) as close to
    # the float64 value as torch's binary cross-entropy is, to a few ulps of a sum of that size (~2 500)
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(100, 784, generator=g) < 0.13).float()
    logits = torch.randn(100, 784, generator=g) * 8
    exact = bernoulli_log_likelihood(x.double(), logits.double())
    ours = (bernoulli_log_likelihood(x, logits).double() - exact).abs()
    torch_bce = (torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1).double()
                 + exact).abs()
    assert ours.max() <= 1e-6 * exact.abs().max() and ours.mean() <= 2 * torch_bce.mean(), (ours, torch_bce)


def test_logit_normal_matches_transformed_normal_and_integrates_to_one():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, generator=g, dtype=torch.float64) * 0.98 + 0.01
    mean = torch.randn(5, 3, generator=g, dtype=torch.float64)
    log_sigma = torch.randn(3, generator=g, dtype=torch.float64) * 0.3
    ref_dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_sigma.exp()), [torch.distributions.SigmoidTransform()])
    torch.testing.assert_close(logit_normal_log_likelihood(x, mean, log_sigma), ref_dist.log_prob(x).sum(-1),
                               rtol=1e-10, atol=1e-10)
    # one dimension: the density integrates to 1 over (0, 1) (trapezoid rule on a fine grid)
    grid = torch.linspace(1e-7, 1 - 1e-7, 400_001, dtype=torch.float64).unsqueeze(-1)
    dens = logit_normal_log_likelihood(grid, torch.tensor([0.3], dtype=torch.float64),
                                       torch.tensor([-0.2], dtype=torch.float64)).exp()
    assert abs(torch.trapezoid(dens, grid[:, 0]).item() - 1.0) < 1e-6


@pytest.mark.parametrize("flow, K", [("planar", 0), ("planar", 3), ("radial", 3), ("nice", 3)])
def test_free_energy_is_eq_15_with_the_reference_flows(flow, K):
    """The loss equals ln q0(z0) − Σ ln|det| − β ln p(x, z_K), rebuilt here from flowbook.flows."""
    m = DLGM(DLGMConfig(flow=flow, K=K, **SMALL)).double()
    x, beta = _x(), 0.3
    eps = torch.randn(6, 4, dtype=torch.float64)
    h = m.encode(x)
    mu, log_sigma = m.q0(h)
    z0 = mu + log_sigma.exp() * eps
    log_q0 = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z0).sum(-1)
    raw = m.flow_head(h) if K else None
    if K == 0:
        zK, ld = z0, torch.zeros(6, dtype=torch.float64)
    elif flow == "planar":
        zK, ld = flows.planar(z0, raw[:, :12].reshape(6, 3, 4), raw[:, 12:24].reshape(6, 3, 4), raw[:, 24:])
    elif flow == "radial":
        zK, ld = flows.radial(z0, raw[:, :12].reshape(6, 3, 4), raw[:, 12:15], raw[:, 15:])
    else:
        b1, b2 = raw[:, :3 * 40].reshape(6, 3, 40), raw[:, 3 * 40:].reshape(6, 3, 2)
        zK, ld = flows.additive_coupling(z0, m.nice_w1, b1, m.nice_w2, b2, m.nice_mixing)
    log_joint = bernoulli_log_likelihood(x, m.decode(zK)) + torch.distributions.Normal(0.0, 1.0).log_prob(zK).sum(-1)
    ref = (log_q0 - ld - beta * log_joint).mean()
    torch.testing.assert_close(m.loss(x, eps, beta)[0], ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("flow", tuple(flows.SPECS))
def test_flows_start_near_identity(flow):
    # seeded: with random initial weights Householder's deviation exceeded 0.05 in about 1 seed of 40
    torch.manual_seed(0)
    m = DLGM(DLGMConfig(flow=flow, K=5, **SMALL)).double()
    z = torch.randn(6, 4, dtype=torch.float64)
    zK, ld = m.flow(z, m.flow_params(m.encode(_x())))
    if flow == "nice":  # zero couplings leave only the fixed orthogonal mixings: a rotation of z
        zK, z = zK.norm(dim=-1), z.norm(dim=-1)
    assert (zK - z).abs().max() < 0.05 and ld.abs().max() < 0.05


def test_posterior_log_density_matches_change_of_variables():
    """ln q_K(z_K | x) from posterior_samples equals ln q0(f⁻¹(z_K)) − log-det, by inverting the flow."""
    m = DLGM(DLGMConfig(flow="planar", K=4, **SMALL)).double()
    x = _x(3)
    z0, zK, log_q = m.posterior_samples(x, 5, torch.Generator().manual_seed(0))
    h = m.encode(x)
    mu, log_sigma = m.q0(h)
    u, w, b = m.flow_params(h)
    for s in range(5):
        z_back, ld_inv = flows.planar_inverse(zK[s], u, w, b)
        torch.testing.assert_close(z_back, z0[s], rtol=1e-8, atol=1e-8)
        ref = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z_back).sum(-1) + ld_inv
        torch.testing.assert_close(log_q[s], ref, rtol=1e-8, atol=1e-8)


def test_logit_normal_model_variants_are_finite_and_learn_sigma():
    x = torch.rand(6, 12, dtype=torch.float64) * 0.9 + 0.05
    for variance in ("per_dim", "amortized"):
        m = DLGM(DLGMConfig(flow="planar", K=2, likelihood="logit_normal", logit_normal_variance=variance,
                            **SMALL)).double()
        loss = m.loss(x, torch.randn(6, 4, dtype=torch.float64))
        loss.sum().backward()
        assert torch.isfinite(loss).all()
        if variance == "per_dim":
            assert m.log_sigma_x.shape == (12,) and m.log_sigma_x.grad.abs().sum() > 0
        else:
            assert m.dec_out.out_features == 24


@pytest.mark.parametrize("likelihood", ["bernoulli", "logit_normal"])
def test_stacked_rows_equal_single_models(likelihood):
    """Each row of MultiDLGM computes its own DLGM's loss and gradient (float64, tight)."""
    configs = [DLGMConfig(flow=f, K=k, likelihood=likelihood, seed=s, **SMALL)
               for f, k, s in (("planar", 0, 0), ("planar", 3, 0), ("radial", 2, 1), ("nice", 2, 2))]
    multi = MultiDLGM(configs).double()
    singles = [DLGM(c).double() for c in configs]
    x = _x() if likelihood == "bernoulli" else torch.rand(6, 12, dtype=torch.float64) * 0.9 + 0.05
    eps = torch.randn(6, 4, dtype=torch.float64)
    losses = multi.loss(x, eps, 0.7)
    losses.sum().backward()
    for r, m in enumerate(singles):
        loss = m.loss(x, eps, 0.7)
        loss.sum().backward()
        torch.testing.assert_close(losses[r], loss[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(multi.weights["enc1"].grad[r], m.enc[1].weight.grad.t(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(multi.biases["out"].grad[r, 0], m.dec_out.bias.grad, rtol=1e-10, atol=1e-12)
        if m.flow_head is not None:
            torch.testing.assert_close(multi.flow_parts[r].flow_head.weight.grad, m.flow_head.weight.grad,
                                       rtol=1e-10, atol=1e-12)
    # and rows() gives back stand-alone models with the same parameters
    for r, row in enumerate(multi.rows()):
        torch.testing.assert_close(row.loss(x, eps, 0.7)[0], losses[r].detach(), rtol=1e-12, atol=1e-12)


def test_rows_must_share_the_trunk():
    with pytest.raises(ValueError, match="only the flow may differ"):
        MultiDLGM([DLGMConfig(K=0, **SMALL), DLGMConfig(K=0, data_dim=12, latent=4, hidden=32)])


def test_config_errors_say_what_to_do():
    with pytest.raises(ValueError, match="flow must be one of"):
        DLGMConfig(flow="maf")
    with pytest.raises(ValueError, match="multiple of"):
        DLGMConfig(hidden=402)


def test_prior_is_standard_normal():
    z = torch.randn(7, 4, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(standard_normal_log_prob(z), ref)
    assert math.isclose(standard_normal_log_prob(torch.zeros(1, 2, dtype=torch.float64)).item(), -math.log(2 * math.pi))


def test_every_flow_type_is_a_spec_and_sizes_the_head():
    """Every registered spec is a DLGM flow; the head's width is the spec's; K = 0 has no head."""
    from flowbook import flows

    for flow in flows.SPECS:
        c = DLGMConfig(flow=flow, K=3, hidden=16, nice_hidden=5)
        assert c.flow_spec() == flows.spec_for(flow, 40, 3, hidden=5)
        m = DLGM(c)
        assert m.flow_head.out_features == c.flow_param_count() == c.flow_spec().head_size()
        assert [p.shape[1:] for p in m.flow_params(torch.zeros(2, m.config.maxout_outputs))] == [
            c.flow_spec().shapes()[n] for n in c.flow_spec().amortized]
    assert DLGM(DLGMConfig(flow="radial", K=0, hidden=16)).flow_head is None


def test_dlgm_and_multidlgm_share_one_free_energy_path():
    """DLGM.loss is free_energy (eq. 15) of its terms; a MultiDLGM row gives the same value in float64."""
    from flowbook.objectives import free_energy

    configs = [DLGMConfig(flow=f, K=2, hidden=16, nice_hidden=4) for f in flows.SPECS]
    multi = MultiDLGM(configs).double()
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 784, generator=gen) < 0.3).double()
    eps = torch.randn(6, 40, generator=gen, dtype=torch.float64)
    rows = multi.loss(x, eps, beta=0.3)
    for r, row in enumerate(multi.rows()):
        t = row.free_energy_terms(x, eps)
        expected = free_energy(t["log_q0"], t["log_det"], t["log_lik"] + t["log_prior"], 0.3)
        torch.testing.assert_close(row.loss(x, eps, beta=0.3), expected.reshape(1))
        torch.testing.assert_close(rows[r], expected, atol=1e-9, rtol=0)
