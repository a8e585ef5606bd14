"""Dequantization and units: 8-bit pixels to a density on ``[eps, 1 - eps]^D`` and back to nats per
image or bits per dimension of the pixels, so that likelihoods compare with the literature (Table 3)."""
from __future__ import annotations

import math

import torch

__all__ = ["to_unit_interval", "unit_interval_log_jacobian", "pixel_space_log_density", "bits_per_dim"]


def to_unit_interval(x: torch.Tensor, eps: float = 1e-4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Map 8-bit pixels into ``[eps, 1 - eps]``: ``y = eps + (1 - 2 eps) (x + u) / 256``, u ~ U[0, 1).

    The uniform dequantization ``(x + u) / 256`` (not ``x / 255``) turns the discrete pixels into a
    density on ``[0, 256)^D``; then ``E_u ln p(x + u)`` is a lower bound on the discrete ``ln P(x)``
    (Theis et al., 2016), so likelihoods are comparable with the literature. Keeping ``y`` away from
    0 and 1 by ``eps`` keeps ``logit(y)`` finite for flows defined on the real line. Pass a seeded
    ``generator`` (on ``x``'s device) for reproducible test likelihoods. Returns float32, same shape.

    The map from pixel space is affine per dimension, so a density of ``y`` converts back with
    :func:`pixel_space_log_density`.
    """
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"eps must lie in [0, 0.5), got {eps}")
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return eps + (1.0 - 2.0 * eps) * (x.to(torch.float32) + u) / 256.0


def unit_interval_log_jacobian(dim: int, eps: float = 1e-4) -> float:
    """``D ln(1 - 2 eps)``: the log-Jacobian determinant of the affine map ``[0, 1]^D -> [eps, 1 - eps]^D``,
    ``v -> eps + (1 - 2 eps) v``, used by :func:`to_unit_interval`."""
    return dim * math.log1p(-2.0 * eps)


def pixel_space_log_density(log_p_unit: torch.Tensor | float, dim: int, eps: float = 1e-4) -> torch.Tensor | float:
    """Log-density of the dequantized pixels ``x + u`` in ``[0, 256)^D`` from the log-density of
    ``y = to_unit_interval(x)``: change of variables through ``y = eps + (1 - 2 eps)(x + u) / 256``,
    ``ln p(x + u) = ln p(y) + D ln(1 - 2 eps) - D ln 256``."""
    return log_p_unit + unit_interval_log_jacobian(dim, eps) - dim * math.log(256.0)


def bits_per_dim(log_p_pixel: torch.Tensor | float, dim: int) -> torch.Tensor | float:
    """``-ln p(x + u) / (D ln 2)``: the usual CIFAR-10 score, from a pixel-space log-density in nats."""
    return -log_p_pixel / (dim * math.log(2.0))
