"""Tests for flowbook.objectives on a linear-Gaussian model whose ln p(x) and posterior are known:
z ~ N(0, I₂), x | z ~ N(Az + c, σ²I₃), so p(x) = N(c, AAᵀ + σ²I) and p(z | x) = N(μ, Σ) with
Σ = (I + AᵀA/σ²)⁻¹, μ = ΣAᵀ(x − c)/σ²."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from flowbook.objectives import beta_schedule, free_energy, importance_log_marginal

F64 = torch.float64
A = torch.tensor([[1.0, -0.5], [0.3, 2.0], [-1.2, 0.7]], dtype=F64)
C = torch.tensor([0.5, -1.0, 0.2], dtype=F64)
SIGMA = 0.6
X = torch.tensor([1.3, 0.4, -2.0], dtype=F64)


def log_marginal() -> float:
    return float(MultivariateNormal(C, A @ A.T + SIGMA ** 2 * torch.eye(3, dtype=F64)).log_prob(X))


def posterior() -> tuple[torch.Tensor, torch.Tensor]:
    cov = torch.linalg.inv(torch.eye(2, dtype=F64) + A.T @ A / SIGMA ** 2)
    return cov @ A.T @ (X - C) / SIGMA ** 2, cov


def log_joint(z: torch.Tensor) -> torch.Tensor:
    """ln p(x, z) for z of shape (n, batch, 2)."""
    prior = -0.5 * z.square().sum(-1) - math.log(2 * math.pi)
    resid = X - (z @ A.T + C)
    lik = -0.5 * resid.square().sum(-1) / SIGMA ** 2 - 3 * math.log(SIGMA) - 1.5 * math.log(2 * math.pi)
    return prior + lik


def gaussian_proposal(mean: torch.Tensor, cov: torch.Tensor, batch: int, seed: int):
    """propose(n) -> (z, ln q(z)) with z of shape (n, batch, 2): `batch` independent replicates."""
    q = MultivariateNormal(mean, cov)
    gen = torch.Generator().manual_seed(seed)
    L = torch.linalg.cholesky(cov)

    def propose(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = mean + torch.randn(n, batch, 2, generator=gen, dtype=F64) @ L.T
        return z, q.log_prob(z)
    return propose


def imperfect_proposal() -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior shifted by one standard deviation and widened by 1.5 (wider, so weights have
    finite variance)."""
    mu, cov = posterior()
    return mu + torch.sqrt(torch.diagonal(cov)), 1.5 ** 2 * cov


def test_model_is_consistent() -> None:
    """Bayes' rule holds pointwise: ln p(x, z) − ln p(z | x) = ln p(x) for any z."""
    mu, cov = posterior()
    z = torch.randn(5, 1, 2, dtype=F64)
    diff = log_joint(z) - MultivariateNormal(mu, cov).log_prob(z)
    torch.testing.assert_close(diff, torch.full_like(diff, log_marginal()), atol=1e-12, rtol=0)


def test_elbo_is_below_log_marginal_by_the_kl() -> None:
    mean, cov = imperfect_proposal()
    z, log_q = gaussian_proposal(mean, cov, 1, seed=0)(200_000)
    elbo = float((log_joint(z) - log_q).mean())
    mu, post_cov = posterior()
    kl = float(torch.distributions.kl_divergence(MultivariateNormal(mean, cov), MultivariateNormal(mu, post_cov)))
    assert kl > 0.3
    assert elbo < log_marginal() - 0.25
    assert abs(elbo - (log_marginal() - kl)) < 0.02
    # free_energy is the negative ELBO
    F = free_energy(log_q, torch.zeros_like(log_q), log_joint(z))
    assert abs(float(F) + elbo) < 1e-12


@pytest.mark.parametrize("seed", [0, 1])
def test_importance_estimate_rises_to_log_marginal(seed: int) -> None:
    """E[estimate_S] increases with S (Burda et al., 2016) and reaches ln p(x); averaged over replicates."""
    mean, cov = imperfect_proposal()
    replicates = {1: 4000, 10: 1000, 100: 1000, 5000: 50}
    means = []
    for S, R in replicates.items():
        est = importance_log_marginal(gaussian_proposal(mean, cov, R, seed), log_joint, num_samples=S, chunk=500)
        assert est.shape == (R,)
        means.append(float(est.mean()))
    truth = log_marginal()
    # from S = 100 on, the remaining gap (≈0.01) is comparable to the replicates' noise, so S = 5000
    # is compared with the truth rather than with S = 100
    assert means[0] < means[1] < means[2], means
    assert means[0] < truth - 0.25
    assert means[1] < means[3] and abs(means[-1] - truth) < 0.01


@pytest.mark.parametrize("S", [1, 7, 100])
def test_importance_estimate_is_exact_with_the_posterior_as_proposal(S: int) -> None:
    mu, cov = posterior()
    est = importance_log_marginal(gaussian_proposal(mu, cov, 4, seed=S), log_joint, num_samples=S, chunk=3)
    torch.testing.assert_close(est, torch.full((4,), log_marginal(), dtype=F64), atol=1e-10, rtol=0)


def test_chunking_does_not_change_the_estimate() -> None:
    """The same samples served in chunks of 1, 7 or all at once give the same estimate."""
    mean, cov = imperfect_proposal()
    z_all, log_q_all = gaussian_proposal(mean, cov, 5, seed=3)(1000)

    def served():
        start = 0

        def propose(n: int):
            nonlocal start
            out = z_all[start:start + n], log_q_all[start:start + n]
            start += n
            return out
        return propose

    one = importance_log_marginal(served(), log_joint, num_samples=1000, chunk=1000)
    expected = torch.logsumexp(log_joint(z_all) - log_q_all, 0) - math.log(1000)
    torch.testing.assert_close(one, expected, atol=1e-12, rtol=0)
    for chunk in (1, 7, 999):
        torch.testing.assert_close(importance_log_marginal(served(), log_joint, num_samples=1000, chunk=chunk),
                                   one, atol=1e-12, rtol=0)


def test_importance_errors() -> None:
    mu, cov = posterior()
    propose = gaussian_proposal(mu, cov, 2, seed=0)
    with pytest.raises(ValueError, match="num_samples ≥ 1 and chunk ≥ 1"):
        importance_log_marginal(propose, log_joint, num_samples=0)
    def propose_flat(n: int):  # forgets the batch axis of ln q
        z, log_q = propose(n)
        return z, log_q.sum(-1)
    with pytest.raises(ValueError, match=r"log weights must have shape \(5, batch\), got \(5,\); check propose"):
        importance_log_marginal(propose_flat, lambda z: log_joint(z).sum(-1), num_samples=5)


def test_importance_runs_without_building_a_graph() -> None:
    w = torch.ones((), dtype=F64, requires_grad=True)

    def propose(n: int):
        z = w * torch.randn(n, 2, 2, dtype=F64)
        return z, -0.5 * z.square().sum(-1)
    assert not importance_log_marginal(propose, log_joint, num_samples=10).requires_grad


def test_beta_schedule() -> None:
    assert beta_schedule(0) == pytest.approx(0.01)
    assert beta_schedule(4950) == pytest.approx(0.505)
    assert beta_schedule(9900) == pytest.approx(1.0)
    assert beta_schedule(50_000) == 1.0
    assert beta_schedule(10, start=0.5, warmup=100) == pytest.approx(0.6)
    assert beta_schedule(0, warmup=0) == 1.0
    values = [beta_schedule(t) for t in range(0, 12_000, 500)]
    assert values == sorted(values) and max(values) == 1.0


def test_free_energy_value_and_shapes() -> None:
    log_q0 = torch.tensor([1.0, 2.0])
    log_det = torch.tensor([0.5, -0.5])
    log_joint_ = torch.tensor([-3.0, -1.0])
    # mean of (1 − 0.5 + 3·β, 2 + 0.5 + 1·β)
    assert float(free_energy(log_q0, log_det, log_joint_)) == pytest.approx((3.5 + 3.5) / 2)
    assert float(free_energy(log_q0, log_det, log_joint_, beta=0.1)) == pytest.approx((0.8 + 2.6) / 2)
    with pytest.raises(ValueError, match=r"must have one shape, got \(2,\), \(3,\), \(2,\)"):
        free_energy(log_q0, torch.zeros(3), log_joint_)
    with pytest.raises(ValueError, match="must have one shape"):
        free_energy(log_q0, log_det, log_joint_.unsqueeze(0))


def test_free_energy_per_row_averages_over_one_axis():
    """dim=-1 gives one free energy per row (the MultiDLGM rows, the 2-D fits), their mean the overall one."""
    gen = torch.Generator().manual_seed(3)
    q0, ld, lj = (torch.randn(3, 5, dtype=torch.float64, generator=gen) for _ in range(3))
    rows = free_energy(q0, ld, lj, beta=0.5, dim=-1)
    assert rows.shape == (3,)
    torch.testing.assert_close(rows, (q0 - ld - 0.5 * lj).mean(-1))
    torch.testing.assert_close(rows.mean(), free_energy(q0, ld, lj, beta=0.5))
