"""Normalizing flows of Rezende & Mohamed (2015), §4, and NICE (Dinh et al., 2015).

Each transform is written once, as a plain function that takes its parameters explicitly:

* :func:`planar` — f(z) = z + û·h(wᵀz + b), h = tanh (the paper's eq. 10–12);
* :func:`radial` — f(z) = z + β·h(α, r)·(z − z0), h = 1/(α + r) (eq. 14);
* :func:`additive_coupling` — NICE's volume-preserving coupling with a fixed mixing.

The functions accept shared parameters (shape ``(K, ...)``, one set for the whole batch) or
per-example parameters (shape ``(batch, K, ...)``), which is the *amortized* form of §4.2 where an
encoder emits the flow's parameters for each data point. The :class:`Planar`, :class:`Radial` and
:class:`AdditiveCoupling` modules hold stacked raw parameters and call the same functions.

Every flow returns ``(z_new, log_det)`` where ``log_det`` has shape ``(batch,)`` and is the sum over
layers of ln|det ∂f_k/∂z_{k−1}|, so that ln q_K(z_K) = ln q_0(z_0) − log_det (eq. 7).

Raw parameters are unconstrained; the invertibility conditions of the paper's Appendix A are
enforced inside the functions (:func:`planar_constrain`, :func:`radial_constrain`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "planar_constrain", "planar", "planar_inverse",
    "radial_constrain", "radial", "radial_inverse",
    "random_mixing", "additive_coupling", "additive_coupling_inverse",
    "Flow", "Planar", "Radial", "AdditiveCoupling", "Compose", "DiagonalGaussian",
]


# ----------------------------------------------------------------------------------------------
# input checks: every public entry point says what was wrong and what to do
# ----------------------------------------------------------------------------------------------
def _check_z(z: Tensor, dim: int | None, where: str) -> None:
    if not isinstance(z, Tensor):
        raise TypeError(f"{where}: z must be a torch.Tensor of shape (batch, dim), got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(f"{where}: z has dtype {z.dtype}; flows need floating point, e.g. z.float() or z.double()")
    if z.dim() != 2:
        raise ValueError(f"{where}: z must have shape (batch, dim), got {tuple(z.shape)}; "
                         "reshape it, e.g. z.reshape(-1, dim)")
    if dim is not None and z.shape[-1] != dim:
        raise ValueError(f"{where}: z has {z.shape[-1]} features but the flow has dim={dim}")


def _check_param(z: Tensor, p: Tensor, name: str, trailing: tuple[int, ...], where: str) -> None:
    """``p`` must be (K, *trailing) or (batch, K, *trailing), on z's device and dtype."""
    if not isinstance(p, Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(p).__name__}")
    if p.dtype != z.dtype:
        raise TypeError(f"{where}: {name} has dtype {p.dtype} but z has {z.dtype}; cast one of them "
                        f"(e.g. z.to({p.dtype}) or module.to({z.dtype}))")
    if p.device != z.device:
        raise ValueError(f"{where}: {name} is on {p.device} but z is on {z.device}; move them to one device "
                         f"(e.g. z.to('{p.device}') or module.to('{z.device}'))")
    nt = len(trailing)
    shape_ok = p.dim() in (1 + nt, 2 + nt) and tuple(p.shape[p.dim() - nt:]) == trailing
    if shape_ok and p.dim() == 2 + nt and p.shape[0] != z.shape[0]:
        shape_ok = False
    if not shape_ok:
        want = ", ".join(str(t) for t in trailing)
        sep = ", " if want else ""
        raise ValueError(f"{where}: {name} must have shape (K{sep}{want}) or (batch={z.shape[0]}, K{sep}{want}), "
                         f"got {tuple(p.shape)}")


def _num_layers(p: Tensor, trailing: int) -> int:
    return p.shape[p.dim() - trailing - 1]


def _identity(z: Tensor) -> tuple[Tensor, Tensor]:
    """K = 0 layers: the identity map, whose log-det is 0 for every example (shape (batch,), as for K ≥ 1)."""
    return z, z.new_zeros(z.shape[0])


# ----------------------------------------------------------------------------------------------
# planar flow (eq. 10–12, Appendix A)
# ----------------------------------------------------------------------------------------------
def planar_constrain(u: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Map raw ``u`` to û with wᵀû ≥ −1, which makes the planar layer invertible (Appendix A).

    û = u + (m(wᵀu) − wᵀu)·w/‖w‖², with m(x) = −1 + softplus(x), so that wᵀû = m(wᵀu) > −1.
    Returns ``(û, 1 + wᵀû)``. The second output is computed as softplus(wᵀu) directly rather than
    from û, so the log-det never suffers the cancellation 1 + (−1 + tiny). For w = 0 (and ‖w‖ within
    rounding of 0) the correction is skipped: û = u and 1 + wᵀû = 1 + wᵀu, and the layer is then a
    translation.
    """
    scale, one_plus_wu_hat = _planar_scale(torch.linalg.vecdot(w, u), torch.linalg.vecdot(w, w))
    u_hat = torch.addcmul(u, scale.unsqueeze(-1), w)  # u + scale·w in one pass over the (…, K, D) tensors
    return u_hat, one_plus_wu_hat


def _planar_scale(wu: Tensor, w2: Tensor) -> tuple[Tensor, Tensor]:
    """From wᵀu and ‖w‖², the scalar s of û = u + s·w and 1 + wᵀû (see :func:`planar_constrain`)."""
    # ‖w‖² below √(smallest normal) counts as w = 0: the correction's gradient grows as 1/‖w‖², which
    # would overflow there, while the correction itself (≈ ‖u‖·‖w‖ < 10⁻¹⁹·‖u‖) is below rounding.
    nonzero = w2 > math.sqrt(torch.finfo(w2.dtype).tiny)
    # where() on the denominator (not on the quotient) keeps the gradient finite at w = 0.
    w2_safe = torch.where(nonzero, w2, torch.ones_like(w2))
    softplus = F.softplus(wu)
    scale = torch.where(nonzero, (softplus - 1.0 - wu) / w2_safe, torch.zeros_like(wu))
    return scale, torch.where(nonzero, softplus, 1.0 + wu)


def _check_planar(z: Tensor, u: Tensor, w: Tensor, b: Tensor, where: str) -> None:
    _check_z(z, None, where)
    D = z.shape[-1]
    _check_param(z, u, "u", (D,), where)
    _check_param(z, w, "w", (D,), where)
    _check_param(z, b, "b", (), where)
    if not (_num_layers(u, 1) == _num_layers(w, 1) == _num_layers(b, 0)):
        raise ValueError(f"{where}: u, w and b disagree on the number of layers K: "
                         f"{tuple(u.shape)}, {tuple(w.shape)}, {tuple(b.shape)}")


def _planar_log_det(a: Tensor, one_plus_wu_hat: Tensor) -> Tensor:
    """ln(1 + h′(a)·wᵀû) for h = tanh, summed over the layer axis (the last one).

    Written as ln(tanh²a + sech²a·(1 + wᵀû)): both terms are ≥ 0, so nothing cancels even when
    wᵀû is within rounding of −1. The floor at the smallest normal number only matters where the
    map is singular in floating point (tanh a = 0 and softplus(wᵀu) underflows).
    """
    t2 = torch.tanh(a).square()
    det = t2 + (1.0 - t2) * one_plus_wu_hat
    return torch.log(det.clamp_min(torch.finfo(det.dtype).tiny)).sum(-1)


def planar(z: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """K planar layers f_k(z) = z + û_k·tanh(w_kᵀz + b_k) applied in order k = 1..K (eq. 10).

    Args:
        z: (batch, D) input.
        u, w: raw parameters, (K, D) shared or (batch, K, D) per example (amortized, §4.2).
        b: (K,) or (batch, K).
    Returns:
        (z_K, log_det) with log_det = Σ_k ln|1 + u_kᵀψ_k(z_{k−1})| of shape (batch,) (eq. 12),
        computed in O(D) per layer by the matrix determinant lemma. K = 0 is the identity (log_det 0).
    """
    _check_planar(z, u, w, b, "planar")
    if _num_layers(b, 0) == 0:
        return _identity(z)
    u_hat, one_plus_wu_hat = planar_constrain(u, w)
    pre_activations = []
    # unbind (not w[:, k]) so the backward pass does not materialize a full-size gradient per layer
    for u_k, w_k, b_k in zip(u_hat.unbind(-2), w.unbind(-2), b.unbind(-1)):
        a = (z * w_k).sum(-1) + b_k
        z = z + u_k * torch.tanh(a).unsqueeze(-1)
        pre_activations.append(a)
    a = torch.stack(pre_activations, -1)  # (batch, K)
    return z, _planar_log_det(a, one_plus_wu_hat)


def _solve_planar_preactivation(target: Tensor, c: Tensor, iters: int) -> Tensor:
    """Solve a + c·tanh(a) = target for a, where c = wᵀû ≥ −1 makes the left side non-decreasing.

    Bisection on the bracket [target − |c|, target + |c|], which contains the root because
    |tanh| ≤ 1; each step halves it, so it converges for every input (Newton alone can fail
    when c is close to −1, where the slope 1 + c·sech²a vanishes at a = 0).
    """
    lo = target - c.abs()
    hi = target + c.abs()
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        too_big = mid + c * torch.tanh(mid) > target
        hi = torch.where(too_big, mid, hi)
        lo = torch.where(too_big, lo, mid)
    return 0.5 * (lo + hi)


def planar_inverse(y: Tensor, u: Tensor, w: Tensor, b: Tensor, iters: int = 100) -> tuple[Tensor, Tensor]:
    """Invert :func:`planar`: returns (z_0, log_det) with log_det = ln|det ∂z_0/∂y| = −(forward log-det).

    Each layer is inverted along w: with a = wᵀz + b, the equation wᵀy + b = a + (wᵀû)·tanh(a) is a
    monotone scalar equation (Appendix A), solved by bisection; then z = y − û·tanh(a).
    """
    _check_planar(y, u, w, b, "planar_inverse")
    if _num_layers(b, 0) == 0:
        return _identity(y)
    u_hat, one_plus_wu_hat = planar_constrain(u, w)
    c = one_plus_wu_hat - 1.0  # wᵀû per layer
    z = y
    pre_activations = []
    for u_k, w_k, b_k, c_k in reversed(list(zip(u_hat.unbind(-2), w.unbind(-2), b.unbind(-1), c.unbind(-1)))):
        a = _solve_planar_preactivation((z * w_k).sum(-1) + b_k, c_k, iters)
        z = z - u_k * torch.tanh(a).unsqueeze(-1)
        pre_activations.append(a)
    a = torch.stack(pre_activations[::-1], -1)
    return z, -_planar_log_det(a, one_plus_wu_hat)


# ----------------------------------------------------------------------------------------------
# radial flow (eq. 14, Appendix A)
# ----------------------------------------------------------------------------------------------
def _check_radial(z: Tensor, z0: Tensor, alpha: Tensor, beta: Tensor, where: str) -> None:
    _check_z(z, None, where)
    _check_param(z, z0, "z0", (z.shape[-1],), where)
    _check_param(z, alpha, "alpha", (), where)
    _check_param(z, beta, "beta", (), where)


RADIAL_FLOOR = 1e-6  # lower bound on α and on α + β


def radial_constrain(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Raw (α, β) → (α > 0, β > −α), the invertibility condition of Appendix A.

    α = ε + softplus(α_raw) and β = −α + ε + softplus(β_raw), with ε = 10⁻⁶. The third output,
    α + β, is returned separately so the log-det can use it without cancellation. The floor ε keeps
    β/α and α·(α + β) representable in float32 for raw values down to −100 (softplus(−100) ≈ 4·10⁻⁴⁴
    would make them overflow or underflow); it changes nothing a fit could want.
    """
    a = RADIAL_FLOOR + F.softplus(alpha)
    a_plus_b = RADIAL_FLOOR + F.softplus(beta)
    return a, a_plus_b - a, a_plus_b


def _radial_log_det(r: Tensor, a: Tensor, a_plus_b: Tensor, D: int) -> Tensor:
    """(D−1)·ln(1 + βh) + ln(1 + βh + βh′r) with h = 1/(α + r), summed over layers (eq. 14).

    1 + βh = (r + α + β)/(α + r) and 1 + βh + βh′r = (r² + 2αr + α(α + β))/(α + r)²: every factor is
    positive under the constraint, so the logs are taken of positive numbers formed without cancellation.
    """
    ar = a + r
    first = torch.log(r + a_plus_b) - torch.log(ar)
    second = torch.log(r * r + 2.0 * a * r + a * a_plus_b) - 2.0 * torch.log(ar)
    return ((D - 1) * first + second).sum(-1)


def radial(z: Tensor, z0: Tensor, alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """K radial layers f_k(z) = z + β_k·(z − z0_k)/(α_k + ‖z − z0_k‖) in order k = 1..K (eq. 14).

    Args:
        z: (batch, D).
        z0: reference points, (K, D) or (batch, K, D).
        alpha, beta: raw parameters, (K,) or (batch, K); constrained by :func:`radial_constrain`.
    Returns:
        (z_K, log_det) with log_det of shape (batch,). K = 0 is the identity (log_det 0).
    """
    _check_radial(z, z0, alpha, beta, "radial")
    if _num_layers(alpha, 0) == 0:
        return _identity(z)
    a, bt, a_plus_b = radial_constrain(alpha, beta)
    radii = []
    for z0_k, a_k, b_k in zip(z0.unbind(-2), a.unbind(-1), bt.unbind(-1)):
        diff = z - z0_k
        # vector_norm's backward is defined as 0 at r = 0, so gradients stay finite there
        r = torch.linalg.vector_norm(diff, dim=-1)
        z = z + (b_k / (a_k + r)).unsqueeze(-1) * diff
        radii.append(r)
    r = torch.stack(radii, -1)
    return z, _radial_log_det(r, a, a_plus_b, z.shape[-1])


def radial_inverse(y: Tensor, z0: Tensor, alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """Closed-form inverse of :func:`radial`; returns (z_0, −forward log-det).

    With r = ‖z − z0‖ and ρ = ‖y − z0‖ = r(α + β + r)/(α + r), r is the positive root of
    r² + (α + β − ρ)r − αρ = 0; then z = z0 + (y − z0)·(α + r)/(α + β + r).
    """
    _check_radial(y, z0, alpha, beta, "radial_inverse")
    if _num_layers(alpha, 0) == 0:
        return _identity(y)
    a, _, a_plus_b = radial_constrain(alpha, beta)
    z = y
    radii = []
    layers = list(zip(z0.unbind(-2), a.unbind(-1), a_plus_b.unbind(-1)))
    for z0_k, a_k, apb_k in reversed(layers):
        diff = z - z0_k
        rho = torch.linalg.vector_norm(diff, dim=-1)
        p = apb_k - rho
        disc = torch.sqrt(p * p + 4.0 * a_k * rho)
        # the two algebraically equal root formulas; each avoids cancellation on its side of p = 0
        r = torch.where(p >= 0, 2.0 * a_k * rho / (p + disc).clamp_min(torch.finfo(y.dtype).tiny),
                        0.5 * (disc - p))
        z = z0_k + diff * ((a_k + r) / (apb_k + r)).unsqueeze(-1)
        radii.append(r)
    r = torch.stack(radii[::-1], -1)
    return z, -_radial_log_det(r, a, a_plus_b, y.shape[-1])


# ----------------------------------------------------------------------------------------------
# NICE: additive coupling with fixed random mixing (Dinh et al., 2015; the paper's §6)
# ----------------------------------------------------------------------------------------------
def random_mixing(dim: int, K: int, kind: str = "orth", generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """K fixed mixings applied before each coupling: ``"orth"`` gives (K, D, D) random orthogonal
    matrices (Haar, via QR with sign correction), ``"perm"`` gives (K, D) random permutations.
    Both have determinant ±1, so the flow stays volume-preserving."""
    if kind == "orth":
        g = torch.randn(K, dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
        return q.to(dtype)
    if kind == "perm":
        return torch.stack([torch.randperm(dim, generator=generator) for _ in range(K)])
    raise ValueError(f"random_mixing: kind must be 'orth' or 'perm', got {kind!r}")


def _mix(z: Tensor, m: Tensor, inverse: bool = False) -> Tensor:
    if m.is_floating_point():  # orthogonal: z ↦ Qz (rows of z), inverse Qᵀ
        return z @ m if inverse else z @ m.transpose(-1, -2)
    if inverse:
        return z[..., torch.argsort(m)]
    return z[..., m]


def _coupling_shift(z1: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """The coupling function m(z1) = W2·relu(W1·z1 + b1) + b2 for one layer (biases may be per example)."""
    return F.linear(torch.relu(F.linear(z1, w1) + b1), w2) + b2


def _check_coupling(z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, mixing: Tensor, where: str) -> int:
    _check_z(z, None, where)
    D = z.shape[-1]
    if D < 2:
        raise ValueError(f"{where}: a coupling needs dim ≥ 2 to split z in two, got {D}")
    d = D // 2
    if not isinstance(w1, Tensor) or w1.dim() != 3 or w1.shape[-1] != d:
        raise ValueError(f"{where}: w1 must have shape (K, hidden, {d}), got {tuple(w1.shape)}")
    K, H = w1.shape[0], w1.shape[1]
    if tuple(w2.shape) != (K, D - d, H):
        raise ValueError(f"{where}: w2 must have shape ({K}, {D - d}, {H}), got {tuple(w2.shape)}")
    for name, p, tail in (("w1", w1, (H, d)), ("b1", b1, (H,)), ("w2", w2, (D - d, H)), ("b2", b2, (D - d,))):
        _check_param(z, p, name, tail, where)
    if mixing.is_floating_point():
        ok = tuple(mixing.shape) == (K, D, D)
    else:
        ok = tuple(mixing.shape) == (K, D)
    if not ok:
        raise ValueError(f"{where}: mixing must be (K={K}, {D}, {D}) orthogonal matrices or (K={K}, {D}) "
                         f"permutations, got {tuple(mixing.shape)}")
    if mixing.device != z.device:
        raise ValueError(f"{where}: mixing is on {mixing.device} but z is on {z.device}")
    if mixing.is_floating_point() and mixing.dtype != z.dtype:
        raise TypeError(f"{where}: mixing has dtype {mixing.dtype} but z has {z.dtype}; "
                        f"build it with random_mixing(..., dtype={z.dtype})")
    return d


def additive_coupling(z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                      mixing: Tensor) -> tuple[Tensor, Tensor]:
    """K NICE layers: z ← mix_k(z), then z = (z1, z2) ↦ (z1, z2 + m_k(z1)) (Dinh et al., 2015).

    Args:
        z: (batch, D); the split is z1 = z[:, :D//2], z2 = z[:, D//2:].
        w1: (K, H, D//2), w2: (K, D − D//2, H): shared weights of the coupling MLPs.
        b1: (K, H) or (batch, K, H); b2: (K, D − D//2) or (batch, K, D − D//2). Per-example biases are
            the amortized form: the encoder shifts each coupling function for its data point.
        mixing: (K, D, D) orthogonal matrices ("NICE-orth") or (K, D) permutations ("NICE-perm").
    Returns:
        (z_K, log_det) with log_det = 0, since every step is volume-preserving.
    """
    d = _check_coupling(z, w1, b1, w2, b2, mixing, "additive_coupling")
    for w1_k, b1_k, w2_k, b2_k, m_k in zip(w1, b1.unbind(-2), w2, b2.unbind(-2), mixing):
        z = _mix(z, m_k)
        z1, z2 = z[:, :d], z[:, d:]
        z = torch.cat([z1, z2 + _coupling_shift(z1, w1_k, b1_k, w2_k, b2_k)], -1)
    return z, z.new_zeros(z.shape[0])


def additive_coupling_inverse(y: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                              mixing: Tensor) -> tuple[Tensor, Tensor]:
    """Exact inverse of :func:`additive_coupling` (subtract the shift, then undo the mixing)."""
    d = _check_coupling(y, w1, b1, w2, b2, mixing, "additive_coupling_inverse")
    layers = list(zip(w1, b1.unbind(-2), w2, b2.unbind(-2), mixing))
    for w1_k, b1_k, w2_k, b2_k, m_k in reversed(layers):
        y1, y2 = y[:, :d], y[:, d:]
        y = _mix(torch.cat([y1, y2 - _coupling_shift(y1, w1_k, b1_k, w2_k, b2_k)], -1), m_k, inverse=True)
    return y, y.new_zeros(y.shape[0])


# ----------------------------------------------------------------------------------------------
# modules: stacked raw parameters, calling the functions above
# ----------------------------------------------------------------------------------------------
class Flow(nn.Module):
    """A flow z ↦ f(z) with ``forward(z) -> (z_new, log_det)`` and ``inverse(y) -> (z, log_det)``."""

    dim: int

    def _param_like(self) -> Tensor:
        return next(self.parameters())

    def _check(self, z: Tensor, where: str) -> None:
        _check_z(z, self.dim, where)
        p = self._param_like()
        if z.dtype != p.dtype:
            raise TypeError(f"{where}: z has dtype {z.dtype} but the flow's parameters are {p.dtype}; "
                            f"use z.to({p.dtype}) or flow.to({z.dtype})")
        if z.device != p.device:
            raise ValueError(f"{where}: z is on {z.device} but the flow is on {p.device}; "
                             f"use z.to('{p.device}') or flow.to('{z.device}')")

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


class Planar(Flow):
    """K planar layers with stacked raw parameters u, w of shape (K, dim) and b of shape (K,).

    ``fused=True`` (the default) runs :func:`flowbook.fused.planar_chain`, the same map with a
    hand-written backward that is several times faster; ``fused=False`` runs the reference
    :func:`planar`, which also supports double backward.
    """

    def __init__(self, dim: int, K: int, fused: bool = True):
        super().__init__()
        if dim < 1 or K < 1:
            raise ValueError(f"Planar needs dim ≥ 1 and K ≥ 1, got dim={dim}, K={K}")
        self.dim, self.K, self.fused = dim, K, fused
        bound = 1.0 / math.sqrt(dim)
        self.u = nn.Parameter(torch.empty(K, dim).uniform_(-bound, bound))
        self.w = nn.Parameter(torch.empty(K, dim).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.zeros(K))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self._check(z, "Planar.forward")
        if self.fused:
            from flowbook.fused import planar_chain  # imported here: flowbook.fused builds on this module

            return planar_chain(z, self.u, self.w, self.b)
        return planar(z, self.u, self.w, self.b)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self._check(y, "Planar.inverse")
        return planar_inverse(y, self.u, self.w, self.b)


class Radial(Flow):
    """K radial layers with stacked reference points z0 (K, dim) and raw α, β (K,)."""

    def __init__(self, dim: int, K: int):
        super().__init__()
        if dim < 1 or K < 1:
            raise ValueError(f"Radial needs dim ≥ 1 and K ≥ 1, got dim={dim}, K={K}")
        self.dim, self.K = dim, K
        self.z0 = nn.Parameter(torch.randn(K, dim))
        self.alpha = nn.Parameter(torch.zeros(K))
        self.beta = nn.Parameter(torch.zeros(K))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self._check(z, "Radial.forward")
        return radial(z, self.z0, self.alpha, self.beta)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self._check(y, "Radial.inverse")
        return radial_inverse(y, self.z0, self.alpha, self.beta)


class AdditiveCoupling(Flow):
    """NICE: K additive couplings, each after a fixed random mixing (``"orth"`` or ``"perm"``).

    The mixing is drawn once at construction from ``seed`` and stored as a buffer (it is not trained),
    following the paper's comparison of NICE-orth and NICE-perm in Figure 3d.
    """

    def __init__(self, dim: int, K: int, hidden: int = 64, mixing: str = "orth", seed: int = 0):
        super().__init__()
        if dim < 2 or K < 1:
            raise ValueError(f"AdditiveCoupling needs dim ≥ 2 and K ≥ 1, got dim={dim}, K={K}")
        self.dim, self.K, self.mixing_kind = dim, K, mixing
        d = dim // 2
        self.seed = seed
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("mixing", random_mixing(dim, K, mixing, gen))
        self.w1 = nn.Parameter(torch.randn(K, hidden, d, generator=gen) / math.sqrt(d))
        self.b1 = nn.Parameter(torch.zeros(K, hidden))
        # the last layer starts at zero: every coupling starts as the identity
        self.w2 = nn.Parameter(torch.zeros(K, dim - d, hidden))
        self.b2 = nn.Parameter(torch.zeros(K, dim - d))

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        # .double()/.to() would cast the orthogonal matrices, which were rounded in their old dtype;
        # redraw them in float64 from the seed instead, so they are orthogonal to the new precision.
        out = super()._apply(fn, *args, **kwargs)
        if self.mixing.is_floating_point():
            exact = random_mixing(self.dim, self.K, "orth", torch.Generator().manual_seed(self.seed), torch.float64)
            self.mixing = exact.to(dtype=self.mixing.dtype, device=self.mixing.device)
        return out

    def _params(self) -> tuple[Tensor, ...]:
        return self.w1, self.b1, self.w2, self.b2, self.mixing

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self._check(z, "AdditiveCoupling.forward")
        return additive_coupling(z, *self._params())

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self._check(y, "AdditiveCoupling.inverse")
        return additive_coupling_inverse(y, *self._params())


class Compose(Flow):
    """The composition f_K ∘ … ∘ f_1 of flows; log-dets add (eq. 7)."""

    def __init__(self, flows: Sequence[Flow]):
        super().__init__()
        if not flows:
            raise ValueError("Compose needs at least one flow")
        dims = {f.dim for f in flows}
        if len(dims) != 1:
            raise ValueError(f"Compose: all flows must share one dim, got {sorted(dims)}")
        self.dim = dims.pop()
        self.flows = nn.ModuleList(flows)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for f in self.flows:
            z, ld = f(z)
            total = total + ld
        return z, total

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        total = y.new_zeros(y.shape[0])
        for f in reversed(self.flows):
            y, ld = f.inverse(y)
            total = total + ld
        return y, total


class DiagonalGaussian(nn.Module):
    """The initial density q_0 = N(μ, diag σ²) with learnable μ and ln σ (the paper's §4)."""

    def __init__(self, dim: int, mean: float = 0.0, log_std: float = 0.0):
        super().__init__()
        self.dim = dim
        self.mean = nn.Parameter(torch.full((dim,), float(mean)))
        self.log_std = nn.Parameter(torch.full((dim,), float(log_std)))

    def log_prob(self, z: Tensor) -> Tensor:
        _check_z(z, self.dim, "DiagonalGaussian.log_prob")
        eps = (z - self.mean) * torch.exp(-self.log_std)
        return -0.5 * (eps.square() + math.log(2 * math.pi)).sum(-1) - self.log_std.sum()

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterized samples z = μ + σ·ε (stochastic backpropagation) and their ln q_0(z)."""
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        z = self.mean + torch.exp(self.log_std) * eps
        log_q = -0.5 * (eps.square() + math.log(2 * math.pi)).sum(-1) - self.log_std.sum()
        return z, log_q
