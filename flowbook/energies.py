"""The 2-D test densities of the paper's Table 1 (§6.1), p(z) ∝ exp(−U(z)), and their normalizers.

``U1``–``U4`` are exactly the potentials printed in Table 1. U2–U4 do not grow along z1 (their
dependence on z1 is periodic or saturating), so exp(−U) has infinite mass on R² and there is no
normalized target: the free energy F = E_q[ln q + U] can then decrease without bound as q spreads
along z1, and "KL" values reported from F alone can be negative. :func:`confine` adds a wall
*outside* the plotting box [−4, 4]² that leaves U unchanged inside it, which makes every target
normalizable, so that the true KL(q‖p) = F + ln Z (:func:`kl_from_free_energy`) is defined.
``TARGETS`` holds the confined potentials used for all reported KLs; ``POTENTIALS`` the raw ones.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["U1", "U2", "U3", "U4", "POTENTIALS", "TARGETS", "BOX", "CONFINE_SCALE", "confine",
           "log_normalizer", "density_grid", "kl_from_free_energy"]

Potential = Callable[[Tensor], Tensor]

BOX = 4.0  # the paper's plotting box [−4, 4]²
CONFINE_SCALE = 0.25  # width of the quadratic wall outside the box (see confine)


def _check(z: Tensor) -> None:
    if not isinstance(z, Tensor) or z.dim() < 1 or z.shape[-1] != 2:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"the 2-D potentials need z of shape (..., 2), got {shape}")
    if not z.is_floating_point():
        raise TypeError(f"z has dtype {z.dtype}; use z.float() or z.double()")


def _w1(z1: Tensor) -> Tensor:
    return torch.sin(2.0 * math.pi * z1 / 4.0)


def _w2(z1: Tensor) -> Tensor:
    return 3.0 * torch.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)


def _w3(z1: Tensor) -> Tensor:
    return 3.0 * torch.sigmoid((z1 - 1.0) / 0.3)


def _neg_log_sum_exp(x: Tensor, y: Tensor) -> Tensor:
    """−ln(eˣ + eʸ), stable for large |x|, |y|."""
    return -torch.logaddexp(x, y)


def U1(z: Tensor) -> Tensor:
    """Table 1, U1: a ring of radius 2 split into two halves by the bimodal factor in z1."""
    _check(z)
    z1 = z[..., 0]
    ring = 0.5 * ((torch.linalg.vector_norm(z, dim=-1) - 2.0) / 0.4) ** 2
    return ring + _neg_log_sum_exp(-0.5 * ((z1 - 2.0) / 0.6) ** 2, -0.5 * ((z1 + 2.0) / 0.6) ** 2)


def U2(z: Tensor) -> Tensor:
    """Table 1, U2: a sine wave, ½[(z2 − w1(z))/0.4]²."""
    _check(z)
    return 0.5 * ((z[..., 1] - _w1(z[..., 0])) / 0.4) ** 2


def U3(z: Tensor) -> Tensor:
    """Table 1, U3: two sine waves that split apart around z1 = 1 (through w2)."""
    _check(z)
    z1, z2 = z[..., 0], z[..., 1]
    w1 = _w1(z1)
    return _neg_log_sum_exp(-0.5 * ((z2 - w1) / 0.35) ** 2, -0.5 * ((z2 - w1 + _w2(z1)) / 0.35) ** 2)


def U4(z: Tensor) -> Tensor:
    """Table 1, U4: a sine wave and a copy shifted down by the sigmoid step w3."""
    _check(z)
    z1, z2 = z[..., 0], z[..., 1]
    w1 = _w1(z1)
    return _neg_log_sum_exp(-0.5 * ((z2 - w1) / 0.4) ** 2, -0.5 * ((z2 - w1 + _w3(z1)) / 0.35) ** 2)


def confine(U: Potential, box: float = BOX, scale: float = CONFINE_SCALE) -> Potential:
    """U(z) + Σ_i ½·(max(abs(z_i) − box, 0)/scale)²: unchanged inside [−box, box]², a quadratic wall outside.

    Inside the box the unnormalized density is exactly the paper's, so the normalized density there
    differs only by a constant factor (the fraction of mass inside the box, close to 1; chapter 4
    reports it). Outside, the wall makes exp(−U) integrable: with scale 0.25 each side of the box adds
    at most about 0.31 box-units of width (∫₀^∞ e^{−x²/(2·0.25²)} dx = 0.25·√(π/2)).
    """
    if box <= 0 or scale <= 0:
        raise ValueError(f"confine needs box > 0 and scale > 0, got box={box}, scale={scale}")

    def confined(z: Tensor) -> Tensor:
        excess = torch.relu(z.abs() - box) / scale
        return U(z) + 0.5 * excess.square().sum(-1)

    confined.__name__ = f"{getattr(U, '__name__', 'U')}_confined"
    confined.__doc__ = f"{getattr(U, '__name__', 'U')} confined outside [−{box}, {box}]² (see flowbook.energies.confine)."
    return confined


POTENTIALS: dict[str, Potential] = {"U1": U1, "U2": U2, "U3": U3, "U4": U4}
TARGETS: dict[str, Potential] = {name: confine(U) for name, U in POTENTIALS.items()}


def _grid(box: float, n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, float]:
    """Cell centres of an n×n midpoint grid on [−box, box]², and the cell area."""
    h = 2.0 * box / n
    x = torch.linspace(-box + h / 2, box - h / 2, n, dtype=dtype)
    Z1, Z2 = torch.meshgrid(x, x, indexing="xy")
    return Z1, Z2, h * h


def log_normalizer(U: Potential, box: float = 7.0, n: int = 1400) -> float:
    """ln Z = ln ∫ exp(−U(z)) dz by the midpoint rule on an n×n grid over [−box, box]², in float64.

    The default box reaches past the confinement wall (at z_i = ±7 the wall adds ½·(3/0.25)² = 72 to
    U, so the mass left out is below e^{−70}); the default grid spacing of 0.01 resolves the narrowest
    feature (σ = 0.35) to well below 10⁻⁴ nats (the test suite checks convergence under refinement).
    For the raw U2–U4 the result grows with ``box`` without limit: they are not normalizable.
    """
    if n < 2 or box <= 0:
        raise ValueError(f"log_normalizer needs n ≥ 2 and box > 0, got n={n}, box={box}")
    Z1, Z2, area = _grid(box, n)
    with torch.no_grad():
        neg_u = -U(torch.stack([Z1, Z2], -1))
    return float(torch.logsumexp(neg_u.flatten(), 0) + math.log(area))


def density_grid(U: Potential, box: float = BOX, n: int = 200,
                 log_Z: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(Z1, Z2, p) on an n×n grid over [−box, box]² for plotting, with p = exp(−U − ln Z).

    When ``log_Z`` is not given, p is normalized over the grid itself (fine for pictures; use
    :func:`log_normalizer` for numbers).
    """
    Z1, Z2, area = _grid(box, n)
    with torch.no_grad():
        neg_u = -U(torch.stack([Z1, Z2], -1))
    if log_Z is None:
        log_Z = float(torch.logsumexp(neg_u.flatten(), 0) + math.log(area))
    return Z1, Z2, torch.exp(neg_u - log_Z)


def kl_from_free_energy(free_energy: float | Tensor, log_Z: float) -> float | Tensor:
    """KL(q‖p) = F + ln Z, where F = E_q[ln q(z) + U(z)] is the variational free energy (eq. 15 with
    ln p(x, z) = −U(z)). F alone is only a bound, offset by the unknown −ln Z."""
    return free_energy + log_Z
