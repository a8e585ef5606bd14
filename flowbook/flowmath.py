"""Formulas shared by the reference flows (:mod:`flowbook.flows`) and the fast planar kernels
(:mod:`flowbook.kernels`), written once so that both compute the same map.

* input checks: every public flow entry point says what was wrong and what to do;
* the scalar part of the planar constraint of Appendix A, (wᵀu, ‖w‖²) ↦ (s, 1 + wᵀû) with
  û = u + s·w (:func:`planar_scale`);
* the planar log-det Σ_k ln|1 + h′(a_k)·w_kᵀû_k| of eq. 12 (:func:`planar_log_det`);
* a vectorized bisection for increasing scalar equations (:func:`solve_increasing`), which inverts a
  flow that is monotone along one direction (the planar inverse of Appendix A).

This module imports nothing from ``flowbook``, so the kernels can use it without importing
:mod:`flowbook.flows`, which dispatches to them.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_z", "check_alike", "check_param", "check_planar", "num_layers", "identity", "planar_scale", "planar_u_hat",
           "planar_log_det", "solve_increasing"]


def check_z(z: Tensor, dim: int | None, where: str) -> None:
    """``z`` must be a floating-point (batch, dim) tensor (with ``dim`` features when given)."""
    if not isinstance(z, Tensor):
        raise TypeError(f"{where}: z must be a torch.Tensor of shape (batch, dim), got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(f"{where}: z has dtype {z.dtype}; flows need floating point, e.g. z.float() or z.double()")
    if z.dim() != 2:
        raise ValueError(f"{where}: z must have shape (batch, dim), got {tuple(z.shape)}; "
                         "reshape it, e.g. z.reshape(-1, dim)")
    if dim is not None and z.shape[-1] != dim:
        raise ValueError(f"{where}: z has {z.shape[-1]} features but the flow has dim={dim}")


def check_alike(z: Tensor, p: Tensor, name: str, holder: str, where: str) -> None:
    """``p`` (called ``name``, held by ``holder``, e.g. a module) must have z's dtype and device."""
    if p.dtype != z.dtype:
        raise TypeError(f"{where}: {name} has dtype {p.dtype} but z has {z.dtype}; cast one of them "
                        f"(e.g. z.to({p.dtype}) or {holder}.to({z.dtype}))")
    if p.device != z.device:
        raise ValueError(f"{where}: {name} is on {p.device} but z is on {z.device}; move them to one device "
                         f"(e.g. z.to('{p.device}') or {holder}.to('{z.device}'))")


def check_param(z: Tensor, p: Tensor, name: str, trailing: tuple[int, ...], where: str) -> None:
    """``p`` must be ``(K, *trailing)`` or ``(batch, K, *trailing)``, on z's device and dtype."""
    if not isinstance(p, Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(p).__name__}")
    check_alike(z, p, name, "module", where)
    nt = len(trailing)
    shape_ok = p.dim() in (1 + nt, 2 + nt) and tuple(p.shape[p.dim() - nt:]) == trailing
    if shape_ok and p.dim() == 2 + nt and p.shape[0] != z.shape[0]:
        shape_ok = False
    if not shape_ok:
        want = ", ".join(str(t) for t in trailing)
        sep = ", " if want else ""
        raise ValueError(f"{where}: {name} must have shape (K{sep}{want}) or (batch={z.shape[0]}, K{sep}{want}), "
                         f"got {tuple(p.shape)}")


def num_layers(p: Tensor, trailing: int) -> int:
    """K, the layer axis' length of a (K, …) or (batch, K, …) parameter with ``trailing`` axes after K."""
    return p.shape[p.dim() - trailing - 1]


def identity(z: Tensor) -> tuple[Tensor, Tensor]:
    """K = 0 layers: the identity map, whose log-det is 0 for every example (shape (batch,), as for K ≥ 1)."""
    return z, z.new_zeros(z.shape[0])


def check_planar(z: Tensor, u: Tensor, w: Tensor, b: Tensor, where: str) -> None:
    """The arguments of a planar chain: z (batch, D); u, w (K, D) or (batch, K, D); b (K,) or (batch, K)."""
    check_z(z, None, where)
    D = z.shape[-1]
    check_param(z, u, "u", (D,), where)
    check_param(z, w, "w", (D,), where)
    check_param(z, b, "b", (), where)
    if not (num_layers(u, 1) == num_layers(w, 1) == num_layers(b, 0)):
        raise ValueError(f"{where}: u, w and b disagree on the number of layers K: "
                         f"{tuple(u.shape)}, {tuple(w.shape)}, {tuple(b.shape)}")


def planar_scale(wu: Tensor, w2: Tensor) -> tuple[Tensor, Tensor]:
    """From wᵀu and ‖w‖², the scalar s of û = u + s·w and 1 + wᵀû (Appendix A; see
    :func:`flowbook.flows.planar_constrain`)."""
    # ‖w‖² below √(smallest normal) counts as w = 0: the correction's gradient grows as 1/‖w‖², which
    # would overflow there, while the correction itself (≈ ‖u‖·‖w‖ < 10⁻¹⁹·‖u‖) is below rounding.
    nonzero = w2 > math.sqrt(torch.finfo(w2.dtype).tiny)
    # where() on the denominator (not on the quotient) keeps the gradient finite at w = 0.
    w2_safe = torch.where(nonzero, w2, torch.ones_like(w2))
    softplus = F.softplus(wu)
    scale = torch.where(nonzero, (softplus - 1.0 - wu) / w2_safe, torch.zeros_like(wu))
    return scale, torch.where(nonzero, softplus, 1.0 + wu)


def planar_log_det(a: Tensor, one_plus_wu_hat: Tensor) -> Tensor:
    """ln(1 + h′(a)·wᵀû) for h = tanh, summed over the layer axis (the last one) (eq. 12).

    Written as ln(tanh²a + sech²a·(1 + wᵀû)): both terms are ≥ 0, so nothing cancels even when
    wᵀû is within rounding of −1. The floor at the smallest normal number only matters where the
    map is singular in floating point (tanh a = 0 and softplus(wᵀu) underflows).
    """
    t2 = torch.tanh(a).square()
    det = t2 + (1.0 - t2) * one_plus_wu_hat
    return torch.log(det.clamp_min(torch.finfo(det.dtype).tiny)).sum(-1)


def planar_u_hat(u: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """û = u + s·w (Appendix A) and 1 + wᵀû, with what they were computed from: wᵀu, ‖w‖² and s
    (:func:`planar_scale`), which a hand-written backward needs again."""
    wu, w2 = torch.linalg.vecdot(w, u), torch.linalg.vecdot(w, w)
    scale, one_plus_wu_hat = planar_scale(wu, w2)
    u_hat = torch.addcmul(u, scale.unsqueeze(-1), w)  # u + scale·w in one pass over the (…, K, D) tensors
    return u_hat, one_plus_wu_hat, wu, w2, scale


def solve_increasing(f: Callable[[Tensor], Tensor], target: Tensor, lo: Tensor, hi: Tensor, iters: int
                     ) -> Tensor:
    """Solve f(x) = target elementwise by bisection, for an increasing f on brackets [lo, hi].

    Args:
        f: elementwise and non-decreasing (strictly increasing gives a unique root); called on a
            tensor shaped like ``target``.
        target, lo, hi: tensors of one shape (or broadcastable to it), with lo ≤ hi and
            f(lo) ≤ target ≤ f(hi) for every element, so that each bracket holds a root.
        iters: the number of halvings, ≥ 0.
    Returns:
        The midpoints of the final brackets. Each step keeps the half whose ends still enclose the
        root, so bisection converges for every such input, also where f′ vanishes and Newton's method
        fails. After ``iters`` halvings the result is within (hi − lo)·2^−(iters+1) of a root, until
        the bracket is as narrow as the dtype resolves: from then on the error stays within a few
        units in the last place. A target outside [f(lo), f(hi)] gives the nearer end.
    """
    if iters < 0:
        raise ValueError(f"solve_increasing: iters must be ≥ 0, got {iters}")
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        too_big = f(mid) > target
        hi = torch.where(too_big, mid, hi)
        lo = torch.where(too_big, lo, mid)
    return 0.5 * (lo + hi)
