"""The diagonal-Gaussian log-density, written once: the initial density q0 of every flow (§4, eq. 7).

q0(z) = N(z; μ, diag σ²). Sampled by reparameterization, z = μ + σ ⊙ ε with ε ~ N(0, I) (stochastic
backpropagation, §2.3), its log-density needs only ε and ln σ:

    ln q0(z) = −½ Σ_d (ε_d² + ln 2π) − Σ_d ln σ_d.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["LOG_2PI", "normal_log_prob_of_noise", "diagonal_normal_log_prob", "reparameterize", "repeat_per_sample"]

#: ln 2π, the normalizing constant of one standard normal dimension (times two)
LOG_2PI = math.log(2 * math.pi)


def normal_log_prob_of_noise(eps: Tensor, log_std: Tensor) -> Tensor:
    """ln N(μ + σ ⊙ ε; μ, diag σ²) from the standardized noise ε, summed over the last axis.

    Args:
        eps: ε = (z − μ)/σ, shape (…, D).
        log_std: ln σ, shape (…, D), broadcasting against ``eps`` after the sum (e.g. (D,) for one σ).
    Returns:
        −½ Σ_d (ε_d² + ln 2π) − Σ_d ln σ_d, shape (…).
    """
    return -0.5 * (eps.square() + LOG_2PI).sum(-1) - log_std.sum(-1)


def diagonal_normal_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """ln N(z; μ, diag σ²) summed over the last axis: :func:`normal_log_prob_of_noise` of ε = (z − μ)/σ."""
    return normal_log_prob_of_noise((z - mean) * torch.exp(-log_std), log_std)


def reparameterize(mean: Tensor, log_std: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """z0 = μ + σ ⊙ ε (stochastic backpropagation, §2.3) and ln q0(z0) from ε alone
    (:func:`normal_log_prob_of_noise`); ``mean`` and ``log_std`` broadcast against ``eps`` (…, D)."""
    return mean + torch.exp(log_std) * eps, normal_log_prob_of_noise(eps, log_std)


def repeat_per_sample(p: Tensor, n: int, samples_first: bool = True) -> Tensor:
    """Per-example parameters (B, …) repeated for n samples each, as (n·B, …): sample-major (the order
    of z reshaped from (n, B, D)) or, with ``samples_first=False``, example-major (from (B, n, D))."""
    axis = 0 if samples_first else 1
    shape = (n, *p.shape) if samples_first else (p.shape[0], n, *p.shape[1:])
    return p.unsqueeze(axis).expand(shape).reshape(n * p.shape[0], *p.shape[1:])
