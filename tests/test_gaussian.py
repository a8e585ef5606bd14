"""Tests of flowbook.gaussian: the one diagonal-Gaussian log-density, against torch.distributions in float64."""
from __future__ import annotations

import torch

from flowbook import gaussian
from flowbook.gaussian import diagonal_normal_log_prob, normal_log_prob_of_noise


def test_diagonal_normal_log_prob_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    z, mean, log_std = (torch.randn(5, 3, dtype=torch.float64, generator=gen) for _ in range(3))
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(diagonal_normal_log_prob(z, mean, log_std), ref, atol=1e-12, rtol=0)


def test_noise_form_is_the_density_of_the_reparameterized_sample():
    """ln q0(μ + σ ε) from ε alone, with one σ (D,) broadcast over a batch of draws (n, B, D)."""
    gen = torch.Generator().manual_seed(1)
    eps = torch.randn(4, 2, 3, dtype=torch.float64, generator=gen)
    mean, log_std = torch.randn(2, 3, dtype=torch.float64, generator=gen), torch.randn(3, dtype=torch.float64)
    z = mean + log_std.exp() * eps
    torch.testing.assert_close(normal_log_prob_of_noise(eps, log_std), diagonal_normal_log_prob(z, mean, log_std),
                               atol=1e-12, rtol=0)


def test_reparameterize_gives_z0_and_its_log_density():
    g = torch.Generator().manual_seed(0)
    mean, log_std, eps = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    z, log_q0 = gaussian.reparameterize(mean, log_std, eps)
    torch.testing.assert_close(z, mean + log_std.exp() * eps)
    torch.testing.assert_close(log_q0, gaussian.diagonal_normal_log_prob(z, mean, log_std))


def test_repeat_per_sample_follows_the_order_of_the_samples():
    p = torch.arange(6.0).reshape(3, 2)  # 3 examples
    first = gaussian.repeat_per_sample(p, 2)  # z from (n, B, D): sample 0 of every example, then sample 1
    torch.testing.assert_close(first, torch.cat([p, p]))
    per_example = gaussian.repeat_per_sample(p, 2, samples_first=False)  # z from (B, n, D)
    torch.testing.assert_close(per_example, p.repeat_interleave(2, dim=0))
