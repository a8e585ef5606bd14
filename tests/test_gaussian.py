"""Tests of flowbook.gaussian: the one diagonal-Gaussian log-density, against torch.distributions in float64."""
from __future__ import annotations

import torch

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
