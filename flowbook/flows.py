"""Normalizing flows of Rezende & Mohamed (2015), §4, and NICE (Dinh et al., 2015).

Each transform is written once, as a plain function that takes its parameters explicitly:

* :func:`planar` — f(z) = z + û·h(wᵀz + b), h = tanh (the paper's eq. 10–12);
* :func:`radial` — f(z) = z + β·h(α, r)·(z − z0), h = 1/(α + r) (eq. 14);
* :func:`additive_coupling` — NICE's volume-preserving coupling with a fixed mixing.

The functions accept shared parameters (shape ``(K, ...)``, one set for the whole batch) or
per-example parameters (shape ``(batch, K, ...)``), which is the *amortized* form of §4.2 where an
encoder emits the flow's parameters for each data point.

Each flow type also has one *spec* (:class:`PlanarSpec`, :class:`RadialSpec`, :class:`NiceSpec`, all
in :data:`SPECS`): its parameter shapes for a dimension D and K layers, how an amortized head's flat
output is split into those parameters, an identity initialization, and the forward and inverse maps,
which call the functions above. Like a lazy transform, a spec holds sizes, not parameter values. The
:class:`Planar`, :class:`Radial` and :class:`AdditiveCoupling` modules, the DLGM of
:mod:`flowbook.models` and the 2-D fits of :mod:`flowbook.experiments2d` all go through the specs, so
a new flow type is one new spec.

The planar chain has faster implementations than the reference :func:`planar` (a hand-written
backward, and C kernels; :mod:`flowbook.kernels`), all reached through :func:`planar_chain`;
:func:`planar_impl` names the one that runs.

Every flow returns ``(z_new, log_det)`` where ``log_det`` has shape ``(batch,)`` and is the sum over
layers of ln|det ∂f_k/∂z_{k−1}|, so that ln q_K(z_K) = ln q_0(z_0) − log_det (eq. 7).

Raw parameters are unconstrained; the invertibility conditions of the paper's Appendix A are
enforced inside the functions (:func:`planar_constrain`, :func:`radial_constrain`).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowbook.flowmath import (check_alike, check_param, check_planar, check_z, identity, num_layers, planar_log_det,
                               planar_u_hat, solve_increasing)
from flowbook.gaussian import diagonal_normal_log_prob, reparameterize
from flowbook.kernels import fused, native

__all__ = [
    "planar_constrain", "planar", "planar_inverse", "PLANAR_IMPLS", "planar_chain", "planar_impl",
    "radial_constrain", "radial", "radial_inverse",
    "random_mixing", "coupling_shift", "additive_coupling", "additive_coupling_inverse",
    "FlowSpec", "PlanarSpec", "RadialSpec", "NiceSpec", "SPECS", "register", "variants", "spec_for",
    "as_options", "options_of", "check_options", "options_for", "check_run_options",
    "parse_options", "pack_upper", "unpack_upper",
    "Flow", "Planar", "Radial", "AdditiveCoupling", "Compose", "DiagonalGaussian",
]


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
    u_hat, one_plus_wu_hat, *_ = planar_u_hat(u, w)
    return u_hat, one_plus_wu_hat


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
    check_planar(z, u, w, b, "planar")
    if num_layers(b, 0) == 0:
        return identity(z)
    u_hat, one_plus_wu_hat = planar_constrain(u, w)
    pre_activations = []
    # unbind (not w[:, k]) so the backward pass does not materialize a full-size gradient per layer
    for u_k, w_k, b_k in zip(u_hat.unbind(-2), w.unbind(-2), b.unbind(-1)):
        a = (z * w_k).sum(-1) + b_k
        z = z + u_k * torch.tanh(a).unsqueeze(-1)
        pre_activations.append(a)
    a = torch.stack(pre_activations, -1)  # (batch, K)
    return z, planar_log_det(a, one_plus_wu_hat)


def _solve_planar_preactivation(target: Tensor, c: Tensor, iters: int) -> Tensor:
    """Solve a + c·tanh(a) = target for a, where c = wᵀû ≥ −1 makes the left side non-decreasing.

    The bracket [target − |c|, target + |c|] contains the root because |tanh| ≤ 1, so bisection
    (:func:`flowbook.flowmath.solve_increasing`) converges for every input (Newton alone can fail
    when c is close to −1, where the slope 1 + c·sech²a vanishes at a = 0).
    """
    return solve_increasing(lambda a: a + c * torch.tanh(a), target, target - c.abs(), target + c.abs(), iters)


def planar_inverse(y: Tensor, u: Tensor, w: Tensor, b: Tensor, iters: int = 100) -> tuple[Tensor, Tensor]:
    """Invert :func:`planar`: returns (z_0, log_det) with log_det = ln|det ∂z_0/∂y| = −(forward log-det).

    Each layer is inverted along w: with a = wᵀz + b, the equation wᵀy + b = a + (wᵀû)·tanh(a) is a
    monotone scalar equation (Appendix A), solved by bisection; then z = y − û·tanh(a).
    """
    check_planar(y, u, w, b, "planar_inverse")
    if num_layers(b, 0) == 0:
        return identity(y)
    u_hat, one_plus_wu_hat = planar_constrain(u, w)
    c = one_plus_wu_hat - 1.0  # wᵀû per layer
    z = y
    pre_activations = []
    for u_k, w_k, b_k, c_k in reversed(list(zip(u_hat.unbind(-2), w.unbind(-2), b.unbind(-1), c.unbind(-1)))):
        a = _solve_planar_preactivation((z * w_k).sum(-1) + b_k, c_k, iters)
        z = z - u_k * torch.tanh(a).unsqueeze(-1)
        pre_activations.append(a)
    a = torch.stack(pre_activations[::-1], -1)
    return z, -planar_log_det(a, one_plus_wu_hat)


#: the implementations of a planar chain that :func:`planar_chain` can run
PLANAR_IMPLS = ("auto", "autograd", "fused", "native")


def _check_impl(impl: str, where: str) -> None:
    if impl not in PLANAR_IMPLS:
        raise ValueError(f"{where}: impl must be one of {PLANAR_IMPLS}, got {impl!r}")


def planar_chain(z: Tensor, u: Tensor, w: Tensor, b: Tensor, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """K planar layers (eq. 10–12), the map of :func:`planar`, by the implementation ``impl``.

    Args:
        z, u, w, b: as for :func:`planar` (shared or per-example raw parameters).
        impl: ``"autograd"``: :func:`planar` itself (autograd records every operation; the only one
            with double backward); ``"fused"``: :func:`flowbook.kernels.fused.planar_chain`'s PyTorch
            loop with a hand-written backward (several times faster, any device); ``"native"``: its C
            kernel (per-example parameters on a CPU; raises where it cannot run, saying why);
            ``"auto"``: the C kernel where it can run, else the PyTorch loop (:func:`planar_impl`
            names the choice).
    Returns:
        (z_K, log_det) with log_det of shape (batch,); every ``impl`` gives the same numbers up to
        rounding. K = 0 is the identity (log_det 0).
    """
    _check_impl(impl, "planar_chain")
    if impl == "autograd":
        return planar(z, u, w, b)
    check_planar(z, u, w, b, "planar_chain")
    if num_layers(b, 0) == 0:
        return identity(z)
    return fused.planar_chain(z, u, w, b, compiled={"auto": None, "fused": False, "native": True}[impl])


def planar_impl(device: torch.device | str = "cpu", dtype: torch.dtype | str = "float32", impl: str = "auto",
                per_example: bool = True) -> str:
    """One line naming what :func:`planar_chain` runs for ``impl`` on ``device`` and ``dtype``, with
    per-example (amortized) or shared parameters: the function, and for the C kernel its library file,
    or why the kernel is not used. Results record it (the model's flows call ``impl="auto"``)."""
    _check_impl(impl, "planar_impl")
    if impl == "autograd":
        return "flowbook.flows.planar (autograd reference)"
    loop = "flowbook.kernels.fused.planar_chain (PyTorch loop, hand-written backward)"
    if impl == "fused":
        return loop
    name = str(dtype).removeprefix("torch.")
    kind = torch.device(device).type
    if kind != "cpu" or not per_example or name not in native.REALS:
        why = ("the compiled kernel takes per-example float32/float64 parameters on a CPU (here: "
               f"{'per-example' if per_example else 'shared'} {name} on {kind})")
    elif native.load("planar_chain", name) is None:
        why = native.status("planar_chain", name).split(", because ", 1)[1]
    else:
        lib = native.load("planar_chain", name)
        return f"flowbook.kernels.native planar_chain ({name}): compiled kernel {lib._name}"
    if impl == "native":
        return f"none: planar_chain(impl='native') raises, because {why}"
    return f"{loop}, because {why}"


# ----------------------------------------------------------------------------------------------
# radial flow (eq. 14, Appendix A)
# ----------------------------------------------------------------------------------------------
def _check_radial(z: Tensor, z0: Tensor, alpha: Tensor, beta: Tensor, where: str) -> None:
    check_z(z, None, where)
    check_param(z, z0, "z0", (z.shape[-1],), where)
    check_param(z, alpha, "alpha", (), where)
    check_param(z, beta, "beta", (), where)


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
    if num_layers(alpha, 0) == 0:
        return identity(z)
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
    if num_layers(alpha, 0) == 0:
        return identity(y)
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
    if not m.is_floating_point():  # a permutation: z ↦ z[m], inverse z[argsort(m)]
        return z[..., torch.argsort(m)] if inverse else z[..., m]
    if m.dim() == 3:  # one matrix per example: (batch, D, D)
        return torch.linalg.vecdot(m.mT if inverse else m, z.unsqueeze(-2))
    return z @ m if inverse else z @ m.transpose(-1, -2)  # orthogonal: z ↦ Qz (rows of z), inverse Qᵀ


def coupling_shift(z1: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """The coupling function m(z1) = W2·relu(W1·z1 + b1) + b2 of one layer.

    Weights are shared, W1 (H, d) and W2 (D − d, H), or per example, (batch, H, d) and (batch, D − d, H);
    biases are (H,), (D − d,) or per example with a leading batch axis."""
    h = F.linear(z1, w1) if w1.dim() == 2 else torch.linalg.vecdot(w1, z1.unsqueeze(-2))
    h = torch.relu(h + b1)
    return (F.linear(h, w2) if w2.dim() == 2 else torch.linalg.vecdot(w2, h.unsqueeze(-2))) + b2


def _check_coupling(z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, mixing: Tensor, where: str) -> int:
    check_z(z, None, where)
    D = z.shape[-1]
    if D < 2:
        raise ValueError(f"{where}: a coupling needs dim ≥ 2 to split z in two, got {D}")
    d = D // 2
    if not isinstance(w1, Tensor) or w1.dim() not in (3, 4) or w1.shape[-1] != d:
        raise ValueError(f"{where}: w1 must have shape (K, hidden, {d}) or (batch, K, hidden, {d}), "
                         f"got {tuple(getattr(w1, 'shape', ()))}")
    K, H = w1.shape[-3], w1.shape[-2]
    for name, p, tail in (("w1", w1, (H, d)), ("b1", b1, (H,)), ("w2", w2, (D - d, H)), ("b2", b2, (D - d,))):
        check_param(z, p, name, tail, where)
        if num_layers(p, len(tail)) != K:
            raise ValueError(f"{where}: {name} has {num_layers(p, len(tail))} layers but w1 has K={K}")
    if mixing.is_floating_point():
        ok = tuple(mixing.shape) in ((K, D, D), (z.shape[0], K, D, D))
    else:
        ok = tuple(mixing.shape) == (K, D)
    if not ok:
        raise ValueError(f"{where}: mixing must be (K={K}, {D}, {D}) orthogonal matrices, (K={K}, {D}) "
                         f"permutations or (batch={z.shape[0]}, K={K}, {D}, {D}) matrices, got {tuple(mixing.shape)}")
    if mixing.device != z.device:
        raise ValueError(f"{where}: mixing is on {mixing.device} but z is on {z.device}")
    if mixing.is_floating_point() and mixing.dtype != z.dtype:
        raise TypeError(f"{where}: mixing has dtype {mixing.dtype} but z has {z.dtype}; "
                        f"build it with random_mixing(..., dtype={z.dtype})")
    return d


def _coupling_layers(w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, mixing: Tensor) -> list[tuple[Tensor, ...]]:
    """Per-layer slices (w1_k, b1_k, w2_k, b2_k, mixing_k), each parameter shared or per example."""
    per_example_mixing = mixing.dim() == 4
    return list(zip(w1.unbind(-3), b1.unbind(-2), w2.unbind(-3), b2.unbind(-2),
                    mixing.unbind(1 if per_example_mixing else 0)))


def additive_coupling(z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                      mixing: Tensor) -> tuple[Tensor, Tensor]:
    """K NICE layers: z ← mix_k(z), then z = (z1, z2) ↦ (z1, z2 + m_k(z1)) (Dinh et al., 2015).

    Args:
        z: (batch, D); the split is z1 = z[:, :D//2], z2 = z[:, D//2:].
        w1: (K, H, D//2), w2: (K, D − D//2, H): the weights of the coupling MLPs (:func:`coupling_shift`),
            shared, or per example with a leading batch axis.
        b1: (K, H) or (batch, K, H); b2: (K, D − D//2) or (batch, K, D − D//2). Per-example biases are
            the amortized form: the encoder shifts each coupling function for its data point.
        mixing: (K, D, D) orthogonal matrices ("NICE-orth"), (K, D) permutations ("NICE-perm"), or
            (batch, K, D, D) matrices of either kind per example.
    Returns:
        (z_K, log_det) with log_det = 0, since every step is volume-preserving.
    """
    d = _check_coupling(z, w1, b1, w2, b2, mixing, "additive_coupling")
    for w1_k, b1_k, w2_k, b2_k, m_k in _coupling_layers(w1, b1, w2, b2, mixing):
        z = _mix(z, m_k)
        z1, z2 = z[:, :d], z[:, d:]
        z = torch.cat([z1, z2 + coupling_shift(z1, w1_k, b1_k, w2_k, b2_k)], -1)
    return z, z.new_zeros(z.shape[0])


def additive_coupling_inverse(y: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                              mixing: Tensor) -> tuple[Tensor, Tensor]:
    """Exact inverse of :func:`additive_coupling` (subtract the shift, then undo the mixing)."""
    d = _check_coupling(y, w1, b1, w2, b2, mixing, "additive_coupling_inverse")
    for w1_k, b1_k, w2_k, b2_k, m_k in reversed(_coupling_layers(w1, b1, w2, b2, mixing)):
        y1, y2 = y[:, :d], y[:, d:]
        y = _mix(torch.cat([y1, y2 - coupling_shift(y1, w1_k, b1_k, w2_k, b2_k)], -1), m_k, inverse=True)
    return y, y.new_zeros(y.shape[0])


# ----------------------------------------------------------------------------------------------
# specs: one per flow type, used by the modules below, the DLGM's heads and the 2-D fits
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlowSpec:
    """A flow type with its sizes, ``dim`` = D and ``K`` layers; parameter values are passed in.

    Subclasses name their parameters in ``names`` (the order of the transform's arguments), say which
    of them an encoder emits per data point in ``amortized`` (§4.2) and which are fixed buffers in
    ``buffers``, and give their shapes, an identity initialization and the forward and inverse maps.
    Every parameter may be shared, with the shape of :meth:`shapes`, or per example, with a leading
    batch axis.
    """

    dim: int
    K: int

    name: ClassVar[str]
    names: ClassVar[tuple[str, ...]]
    amortized: ClassVar[tuple[str, ...]]
    buffers: ClassVar[tuple[str, ...]] = ()
    min_dim: ClassVar[int] = 1
    #: the methods this type offers to the 2-D experiments, each with the options it passes to the spec
    #: (e.g. NICE with an orthogonal or a permutation mixing); empty: one method, the type's ``name``
    variants: ClassVar[Mapping[str, Mapping[str, object]]] = {}
    #: whether fits of different K may share one spec of the largest K, the short ones padded with
    #: identity layers (:meth:`mask_layers`); False where a padded layer would cost real arithmetic
    pads_layers: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.dim < self.min_dim or self.K < 0:
            raise ValueError(f"{type(self).__name__} needs dim ≥ {self.min_dim} and K ≥ 0, "
                             f"got dim={self.dim}, K={self.K}")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each shared parameter, (K, …), by name (a per-example one adds a batch axis)."""
        raise NotImplementedError

    def head_numel(self, name: str) -> int:
        """Head outputs per data point for the amortized parameter ``name``: by default every entry of its
        shape; a layout that leaves entries out (e.g. the zeros below a triangular matrix's diagonal,
        :func:`pack_upper`) overrides this with :meth:`unpack` and :meth:`pack`."""
        return math.prod(self.shapes()[name])

    def unpack(self, name: str, flat: Tensor) -> Tensor:
        """The head's outputs for ``name``, (batch, :meth:`head_numel`), as the parameter ``(batch, *shape)``."""
        return flat.reshape(*flat.shape[:-1], *self.shapes()[name])

    def pack(self, name: str, value: Tensor) -> Tensor:
        """The inverse of :meth:`unpack`: parameter ``name`` ``(…, *shape)`` as (…, :meth:`head_numel`) outputs."""
        return value.flatten(value.dim() - len(self.shapes()[name]))

    def head_size(self) -> int:
        """Outputs per data point of an amortized head: the :meth:`head_numel` of the ``amortized`` parameters."""
        return sum(self.head_numel(n) for n in self.amortized)

    def head_size_per_layer(self) -> int:
        """The head outputs per data point that one layer costs (every layer costs the same), so that
        :meth:`head_size` = K times this: what compares flow types at equal cost. Computed for one layer,
        so it is defined for K = 0 too."""
        return dataclasses.replace(self, K=1).head_size()

    def split(self, raw: Tensor) -> dict[str, Tensor]:
        """Cut a head's output (batch, :meth:`head_size`) into the per-example amortized parameters."""
        if raw.dim() != 2 or raw.shape[-1] != self.head_size():
            raise ValueError(f"{type(self).__name__}.split: the head output must be (batch, {self.head_size()}), "
                             f"got {tuple(raw.shape)}")
        parts = raw.split([self.head_numel(n) for n in self.amortized], -1)
        return {n: self.unpack(n, p) for n, p in zip(self.amortized, parts)}

    def identity(self, batch: tuple[int, ...] = (), generator: torch.Generator | None = None
                 ) -> dict[str, Tensor]:
        """Trainable parameters, shape ``batch + shapes()[name]``, at which the flow is the identity map
        (random where the identity leaves a direction free, so that gradients are not all zero)."""
        raise NotImplementedError

    def free_start(self, batch: tuple[int, ...] = (), generator: torch.Generator | None = None
                   ) -> dict[str, Tensor]:
        """The start of a fit whose parameters no encoder emits (the 2-D fits of §6.1): by default the
        identity (:meth:`identity`)."""
        return self.identity(batch, generator)

    def matrix_buffers(self, buffers: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``buffers`` (from :meth:`draw_buffers`) as floating tensors that :meth:`mask_layers` can mask;
        by default unchanged."""
        return dict(buffers)

    def flatten_amortized(self, params: Mapping[str, Tensor]) -> Tensor:
        """The inverse of :meth:`split` for shared parameters: the ``amortized`` ones as one flat vector,
        e.g. the bias of a head that emits ``params`` for every x (from :meth:`identity`: the identity)."""
        return torch.cat([self.pack(n, params[n]) for n in self.amortized])

    def draw_buffers(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
                     ) -> dict[str, Tensor]:
        """The fixed (untrained) tensors named in ``buffers``, drawn from ``generator`` (floating ones in ``dtype``)."""
        return {}

    def mask_layers(self, params: Mapping[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        """``params`` with layer k replaced by an identity layer where ``keep[..., k]`` is 0 (``keep`` is
        (K,) or (batch, K) of 0/1), so that flows of different lengths share one K."""
        raise NotImplementedError

    def forward(self, z: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(z_K, Σ_k ln|det ∂f_k/∂z_{k−1}|) for z (batch, D) and ``params`` by name; the layers are those
        ``params`` hold (K or fewer: a 2-D fit of a shorter flow passes its own)."""
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(z_0, ln|det ∂z_0/∂y|) = the inverse map and minus the forward log-det."""
        raise NotImplementedError

    def implementation(self, device: torch.device | str = "cpu", dtype: torch.dtype | str = "float32") -> str:
        """What runs this flow's forward map on ``device`` in ``dtype``, as a result records it: by default
        the spec's own :meth:`forward`."""
        return f"{type(self).__module__}.{type(self).__qualname__}.forward"

    def args(self, params: Mapping[str, Tensor]) -> list[Tensor]:
        """``params`` in the order the transform functions take them."""
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ValueError(f"{type(self).__name__}: parameters {missing} are missing; it needs {self.names}")
        return [params[n] for n in self.names]


def _layer_mask(keep: Tensor, p: Tensor, trailing: int) -> Tensor:
    """``keep`` (K,) or (batch, K) shaped to broadcast against parameter ``p`` with ``trailing`` axes after K."""
    return keep.reshape(*keep.shape, *([1] * trailing)).to(p.dtype)


def pack_upper(x: Tensor) -> Tensor:
    """The entries on and above the diagonal of square matrices x (…, M, M), row by row: (…, M(M+1)/2).

    A non-dense head layout (:meth:`FlowSpec.pack`): an upper-triangular parameter costs M(M+1)/2 head
    outputs instead of M², the zeros below the diagonal are not emitted."""
    return x.flatten(-2).index_select(-1, _upper_positions(x.shape[-1], x.device))


def unpack_upper(flat: Tensor, M: int) -> Tensor:
    """The inverse of :func:`pack_upper`: (…, M(M+1)/2) entries → upper-triangular (…, M, M), zero below."""
    if flat.shape[-1] != M * (M + 1) // 2:
        raise ValueError(f"unpack_upper: an upper-triangular {M}×{M} matrix takes {M * (M + 1) // 2} entries, "
                         f"got {flat.shape[-1]} (shape {tuple(flat.shape)})")
    positions = _upper_positions(M, flat.device).expand(flat.shape)
    # a scatter along the last axis (its backward a gather) is 2-3x faster than advanced-index assignment
    return flat.new_zeros(*flat.shape[:-1], M * M).scatter(-1, positions, flat).unflatten(-1, (M, M))


def _upper_positions(M: int, device: torch.device) -> Tensor:
    """The positions, in a flattened M × M matrix, of its entries on and above the diagonal, row by row."""
    rows, cols = torch.triu_indices(M, M, device=device)
    return rows * M + cols


@dataclass(frozen=True)
class PlanarSpec(FlowSpec):
    """Planar layers (eq. 10–12): u, w (K, D) and b (K,), all amortized; run by :func:`planar_chain`
    with ``impl`` (inverse by bisection with ``inverse_iters`` steps, :func:`planar_inverse`)."""

    impl: str = "auto"
    inverse_iters: int = 100

    name: ClassVar[str] = "planar"
    names: ClassVar[tuple[str, ...]] = ("u", "w", "b")
    amortized: ClassVar[tuple[str, ...]] = ("u", "w", "b")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_impl(self.impl, "PlanarSpec")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"u": (self.K, self.dim), "w": (self.K, self.dim), "b": (self.K,)}

    def identity(self, batch: tuple[int, ...] = (), generator: torch.Generator | None = None
                 ) -> dict[str, Tensor]:
        # random hyperplane normals w, so that ∂F/∂u ≠ 0 at the start; and u parallel to w with
        # wᵀu = ln(e − 1), where the constraint of Appendix A maps u to û = 0: the identity
        w = torch.randn(*batch, self.K, self.dim, generator=generator) / math.sqrt(self.dim)
        u = math.log(math.e - 1.0) * w / w.square().sum(-1, keepdim=True)
        return {"u": u, "w": w, "b": torch.zeros(*batch, self.K)}

    def free_start(self, batch: tuple[int, ...] = (), generator: torch.Generator | None = None
                   ) -> dict[str, Tensor]:
        """u, w uniform in ±1/√D (not the identity), at the scale of a linear layer, and b = 0: the start of
        the 2-D fits (:class:`flowbook.experiments2d.FitGroup`) and of a :class:`Planar` module (with
        ``generator`` None, torch's global one)."""
        bound = 1.0 / math.sqrt(self.dim)
        shape = (*batch, self.K, self.dim)
        return {"u": (torch.rand(shape, generator=generator) * 2 - 1) * bound,
                "w": (torch.rand(shape, generator=generator) * 2 - 1) * bound,
                "b": torch.zeros(*batch, self.K)}

    def mask_layers(self, params: Mapping[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        # u = w = b = 0 is an exact identity layer (û = u when w = 0)
        return {n: params[n] * _layer_mask(keep, params[n], len(s) - 1) for n, s in self.shapes().items()}

    def implementation(self, device: torch.device | str = "cpu", dtype: torch.dtype | str = "float32") -> str:
        """The planar chain that runs (:func:`planar_impl`)."""
        return planar_impl(device, dtype, impl=self.impl)

    def forward(self, z: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return planar_chain(z, *self.args(params), impl=self.impl)

    def inverse(self, y: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return planar_inverse(y, *self.args(params), iters=self.inverse_iters)


@dataclass(frozen=True)
class RadialSpec(FlowSpec):
    """Radial layers (eq. 14): reference points z0 (K, D) and raw α, β (K,), all amortized."""

    name: ClassVar[str] = "radial"
    names: ClassVar[tuple[str, ...]] = ("z0", "alpha", "beta")
    amortized: ClassVar[tuple[str, ...]] = ("z0", "alpha", "beta")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"z0": (self.K, self.dim), "alpha": (self.K,), "beta": (self.K,)}

    def identity(self, batch: tuple[int, ...] = (), generator: torch.Generator | None = None
                 ) -> dict[str, Tensor]:
        # reference points spread like a standard normal; raw α = raw β gives β = 0 exactly
        return {"z0": torch.randn(*batch, self.K, self.dim, generator=generator),
                "alpha": torch.zeros(*batch, self.K), "beta": torch.zeros(*batch, self.K)}

    def mask_layers(self, params: Mapping[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        # raw β = raw α makes β = 0 (radial_constrain): an exact identity layer
        return {**params, "beta": torch.where(keep > 0, params["beta"], params["alpha"])}

    def forward(self, z: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return radial(z, *self.args(params))

    def inverse(self, y: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return radial_inverse(y, *self.args(params))


@dataclass(frozen=True)
class NiceSpec(FlowSpec):
    """NICE layers (:func:`additive_coupling`) with ``hidden`` = H units per coupling MLP and a fixed
    ``mixing`` (``"orth"`` or ``"perm"``, :func:`random_mixing`) before each coupling.

    Amortized are the biases b1 (K, H) and b2 (K, D − d); the weights w1 (K, H, d) and w2 (K, D − d, H)
    are global, and the mixing a buffer. The paper does not say which NICE parameters are amortized:
    shifting each coupling's hidden units per data point is the cheapest way to make it depend on x
    (amortizing the weights would cost K·H·D outputs per data point)."""

    hidden: int = 64
    mixing: str = "orth"

    name: ClassVar[str] = "nice"
    names: ClassVar[tuple[str, ...]] = ("w1", "b1", "w2", "b2", "mixing")
    amortized: ClassVar[tuple[str, ...]] = ("b1", "b2")
    buffers: ClassVar[tuple[str, ...]] = ("mixing",)
    min_dim: ClassVar[int] = 2
    # Figure 3d compares NICE with orthogonal and with permutation mixings
    variants: ClassVar[Mapping[str, Mapping[str, object]]] = {"nice-orth": {"mixing": "orth"},
                                                              "nice-perm": {"mixing": "perm"}}
    # a padded layer of H hidden units costs real arithmetic, unlike a padded planar layer
    pads_layers: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden < 1 or self.mixing not in ("orth", "perm"):
            raise ValueError(f"NiceSpec needs hidden ≥ 1 and mixing 'orth' or 'perm', got hidden={self.hidden}, "
                             f"mixing={self.mixing!r}")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        K, H, D, d = self.K, self.hidden, self.dim, self.dim // 2
        mixing = (K, D, D) if self.mixing == "orth" else (K, D)
        return {"w1": (K, H, d), "b1": (K, H), "w2": (K, D - d, H), "b2": (K, D - d), "mixing": mixing}

    def draw_mixing(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """The fixed mixings, drawn by :func:`random_mixing`."""
        return random_mixing(self.dim, self.K, self.mixing, generator, dtype)

    def draw_buffers(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
                     ) -> dict[str, Tensor]:
        return {"mixing": self.draw_mixing(generator, dtype)}

    def matrix_buffers(self, buffers: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A permutation mixing (K, D) of indices as the (K, D, D) matrices P with P z = z[perm]."""
        mixing = buffers["mixing"]
        if mixing.is_floating_point():
            return dict(buffers)
        return {**buffers, "mixing": torch.eye(self.dim)[mixing]}

    def identity(self, batch: tuple[int, ...] = (), generator: torch.Generator | None = None
                 ) -> dict[str, Tensor]:
        """Random first layers (scaled by 1/√d) and zero last layers, so that every coupling starts as
        the identity: its shift is zero whatever its input."""
        K, H, D, d = self.K, self.hidden, self.dim, self.dim // 2
        return {"w1": torch.randn(*batch, K, H, d, generator=generator) / math.sqrt(d),
                "b1": torch.zeros(*batch, K, H), "w2": torch.zeros(*batch, K, D - d, H),
                "b2": torch.zeros(*batch, K, D - d)}

    def mask_layers(self, params: Mapping[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        # a zero shift after an identity mixing is an exact identity layer
        mixing = params["mixing"]
        if not mixing.is_floating_point():
            raise ValueError("NiceSpec.mask_layers needs the mixings as matrices, e.g. permutation matrices")
        eye = torch.eye(self.dim, dtype=mixing.dtype, device=mixing.device)
        return {**params, "w2": params["w2"] * _layer_mask(keep, params["w2"], 2),
                "b2": params["b2"] * _layer_mask(keep, params["b2"], 1),
                "mixing": torch.where(_layer_mask(keep, mixing, 2) > 0, mixing, eye)}

    def forward(self, z: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return additive_coupling(z, *self.args(params))

    def inverse(self, y: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return additive_coupling_inverse(y, *self.args(params))


#: Every flow type's spec class by name, the one list of flow types. The command line's ``--flow``
#: choices, the DLGM's rows and the 2-D experiments' methods (:func:`variants`) are read from it when
#: they are used, so a type added by :func:`register` is offered everywhere.
SPECS: dict[str, type[FlowSpec]] = {"planar": PlanarSpec, "radial": RadialSpec, "nice": NiceSpec}


def register(cls: type[FlowSpec]) -> type[FlowSpec]:
    """Add a flow type to :data:`SPECS` under ``cls.name`` (usable as a class decorator); a new flow
    type is one spec class and this call."""
    if not (isinstance(cls, type) and issubclass(cls, FlowSpec)) or not getattr(cls, "name", ""):
        raise TypeError(f"register: expected a FlowSpec subclass with a name, got {cls!r}")
    if SPECS.get(cls.name, cls) is not cls:
        raise ValueError(f"register: flow type {cls.name!r} is already {SPECS[cls.name].__name__}; pick another name")
    SPECS[cls.name] = cls
    return cls


def variants() -> dict[str, tuple[str, dict[str, object]]]:
    """Every method of the registered flow types (:attr:`FlowSpec.variants`): name → (flow type, options)."""
    out: dict[str, tuple[str, dict[str, object]]] = {}
    for name, cls in SPECS.items():
        for method, options in (cls.variants or {name: {}}).items():
            out[method] = (name, dict(options))
    return out


#: the value types an option may have: what JSON and a command line can both carry
_OPTION_TYPES = (bool, int, float, str)


def _spec_class(flow: str, where: str) -> type[FlowSpec]:
    if flow not in SPECS:
        raise ValueError(f"{where}: flow must be one of {tuple(SPECS)}, got {flow!r}")
    return SPECS[flow]


def options_of(flow: str) -> dict[str, type]:
    """The options of flow type ``flow`` (a key of :data:`SPECS`): its spec's fields beyond ``dim`` and
    ``K``, by name, with their types (e.g. planar: ``impl`` str, ``inverse_iters`` int)."""
    cls = _spec_class(flow, "options_of")
    hints = typing.get_type_hints(cls)
    return {f.name: _given(hints[f.name]) for f in dataclasses.fields(cls) if f.name not in ("dim", "K")}


def _given(hint: Any) -> Any:
    """The type of an option's value when one is given: ``X`` for ``X | None`` (None is the default that
    leaves the option to the spec, e.g. Sylvester-H's ``units``), else the hint itself."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and len(typing.get_args(hint)) == 2 else hint


def _describe(flow: str) -> str:
    """``flow``'s options for an error message, e.g. ``planar's options: impl (str), inverse_iters (int)``."""
    listed = ", ".join(f"{n} ({getattr(t, '__name__', t)})" for n, t in options_of(flow).items())
    return f"{flow}'s options: {listed or 'none'}"


def as_options(options: Mapping[str, Any] | Iterable[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
    """``options``, a mapping or (name, value) pairs (JSON stores them as lists), as the form a flow type's own options
    (the fields of its spec beyond ``dim`` and ``K``, e.g. NICE's ``hidden``) travel in: sorted (name, value)
    pairs, hashable, so that a frozen configuration can hold them, and plain in JSON."""
    pairs = options.items() if isinstance(options, Mapping) else (tuple(p) for p in options)
    return tuple(sorted(dict(pairs).items()))


def check_options(flow: str, options: Mapping[str, Any] | Iterable[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
    """``options`` (a mapping, or (name, value) pairs as JSON stores them) as sorted pairs (:func:`as_options`) after
    checking that each is an option of ``flow`` (:func:`options_of`) with a value of its type; raises ValueError
    naming the option and listing the flow's options otherwise."""
    known, out = options_of(flow), {}
    for name, value in as_options(options):
        if name not in known:
            raise ValueError(f"{name!r} is not an option of the {flow} flow; {_describe(flow)}")
        kind = known[name]
        # an int is a valid float; a bool is not a valid int (it would be a typo for a count)
        fits = isinstance(value, kind) and not (kind is int and isinstance(value, bool)) \
            or (kind is float and isinstance(value, int) and not isinstance(value, bool))
        if kind not in _OPTION_TYPES or not fits:
            raise ValueError(f"the {flow} flow's option {name} must be of type "
                             f"{getattr(kind, '__name__', kind)}, got {value!r}; {_describe(flow)}")
        out[name] = value
    return as_options(out)


def options_for(flow: str, options: Mapping[str, Any] | Iterable[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
    """Those of ``options`` that flow type ``flow`` has (:func:`options_of`), checked: a run of several flow types
    gives each the options that are its own."""
    known = options_of(flow)
    return check_options(flow, [(n, v) for n, v in as_options(options) if n in known])


def _parse_value(flow: str, name: str, kind: type, text: str) -> Any:
    """``text`` as a value of ``kind`` (bool: true/false, 1/0, yes/no)."""
    if kind is bool and text.lower() in ("true", "1", "yes", "false", "0", "no"):
        return text.lower() in ("true", "1", "yes")
    try:
        if kind in (int, float, str):
            return kind(text)
    except ValueError:
        pass
    raise ValueError(f"the {flow} flow's option {name} must be of type {getattr(kind, '__name__', kind)}, "
                     f"got {text!r}")


def check_run_options(flows: Sequence[str], options: Mapping[str, Any] | Iterable[Sequence[Any]]
                      ) -> tuple[tuple[str, Any], ...]:
    """``options`` of a run of the flow types ``flows`` as sorted pairs (:func:`as_options`), after checking that each
    is an option of at least one of them and that its value suits every one that has it (each type gets its own,
    :func:`options_for`). Raises ValueError naming the option and listing the flows' options."""
    types = list(dict.fromkeys(flows))
    for name, value in as_options(options):
        owners = [f for f in types if name in options_of(f)]
        if not owners:
            raise ValueError(f"{name!r} is not an option of the {', '.join(types)} flow "
                             f"({'; '.join(_describe(f) for f in types)})")
        for flow in owners:
            check_options(flow, {name: value})
    return as_options(options)


def parse_options(flows: Sequence[str], items: Iterable[str]) -> tuple[tuple[str, Any], ...]:
    """Command-line ``KEY=VALUE`` items as sorted pairs (:func:`as_options`) for a run of the flow types ``flows``,
    each value read as its option's type (:func:`check_run_options` checks the rest). Raises ValueError saying
    what was wrong and listing the flows' options."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"a flow option is KEY=VALUE, e.g. hidden=64; got {item!r}")
        owner = next((f for f in flows if name in options_of(f)), None)
        if owner is not None:  # one that no flow has is refused below, with the flows' options
            text = _parse_value(owner, name, options_of(owner)[name], text.strip())
        out[name] = text
    return check_run_options(flows, out)


def spec_for(flow: str, dim: int, K: int, **options) -> FlowSpec:
    """The spec of flow type ``flow`` (a key of :data:`SPECS`); ``options`` that the type does not have
    (e.g. ``hidden`` for a planar flow) are ignored, so one call serves every type."""
    cls = _spec_class(flow, "spec_for")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(dim, K, **{k: v for k, v in options.items() if k in fields})


# ----------------------------------------------------------------------------------------------
# modules: stacked raw parameters, run by their spec
# ----------------------------------------------------------------------------------------------
class Flow(nn.Module):
    """A flow z ↦ f(z) with ``forward(z) -> (z_new, log_det)`` and ``inverse(y) -> (z, log_det)``.

    A subclass sets ``spec`` and registers one parameter (or buffer) per name in ``spec.names``."""

    dim: int
    spec: FlowSpec

    def __init__(self, spec: FlowSpec):
        super().__init__()
        if spec.K < 1:
            raise ValueError(f"{type(self).__name__} needs dim ≥ {spec.min_dim} and K ≥ 1, got dim={spec.dim}, "
                             f"K={spec.K}")
        self.spec, self.dim, self.K = spec, spec.dim, spec.K

    def _check(self, z: Tensor, where: str) -> None:
        check_z(z, self.dim, where)
        check_alike(z, next(self.parameters()), "the flow", "flow", where)

    def params(self) -> dict[str, Tensor]:
        """The flow's parameters and buffers by the spec's names."""
        return {n: getattr(self, n) for n in self.spec.names}

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self._check(z, f"{type(self).__name__}.forward")
        return self.spec.forward(z, self.params())

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self._check(y, f"{type(self).__name__}.inverse")
        return self.spec.inverse(y, self.params())


class Planar(Flow):
    """K planar layers with stacked raw parameters u, w of shape (K, dim) and b of shape (K,).

    ``impl`` chooses the implementation (:func:`planar_chain`): ``"auto"`` (the default) runs the hand-written
    backward of :mod:`flowbook.kernels`, several times faster; ``"autograd"`` runs the reference
    :func:`planar`, which also supports double backward.
    """

    def __init__(self, dim: int, K: int, impl: str = "auto"):
        super().__init__(PlanarSpec(dim, K, impl=impl))
        # u and w start at random (not at the identity), as a 2-D fit does: PlanarSpec.free_start, drawn
        # from torch's global generator
        for name, value in self.spec.free_start().items():
            setattr(self, name, nn.Parameter(value))


class Radial(Flow):
    """K radial layers with stacked reference points z0 (K, dim) and raw α, β (K,), starting as the identity."""

    def __init__(self, dim: int, K: int):
        super().__init__(RadialSpec(dim, K))
        for name, value in self.spec.identity().items():
            setattr(self, name, nn.Parameter(value))


class AdditiveCoupling(Flow):
    """NICE: K additive couplings, each after a fixed random mixing (``"orth"`` or ``"perm"``).

    The mixing is drawn once at construction from ``seed`` and stored as a buffer (it is not trained),
    following the paper's comparison of NICE-orth and NICE-perm in Figure 3d; then the couplings start
    as the identity (:meth:`NiceSpec.identity`, from the same generator).
    """

    def __init__(self, dim: int, K: int, hidden: int = 64, mixing: str = "orth", seed: int = 0):
        super().__init__(NiceSpec(dim, K, hidden=hidden, mixing=mixing))
        self.mixing_kind, self.seed = mixing, seed
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("mixing", self.spec.draw_mixing(gen))
        for name, value in self.spec.identity(generator=gen).items():
            setattr(self, name, nn.Parameter(value))

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        # .double()/.to() would cast the orthogonal matrices, which were rounded in their old dtype;
        # redraw them in float64 from the seed instead, so they are orthogonal to the new precision.
        out = super()._apply(fn, *args, **kwargs)
        if self.mixing.is_floating_point():
            exact = self.spec.draw_mixing(torch.Generator().manual_seed(self.seed), torch.float64)
            self.mixing = exact.to(dtype=self.mixing.dtype, device=self.mixing.device)
        return out


class Compose(Flow):
    """The composition f_K ∘ … ∘ f_1 of flows; log-dets add (eq. 7)."""

    def __init__(self, flows: Sequence[Flow]):
        nn.Module.__init__(self)  # a composition has no spec of its own
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
        check_z(z, self.dim, "DiagonalGaussian.log_prob")
        return diagonal_normal_log_prob(z, self.mean, self.log_std)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterized samples z = μ + σ·ε (stochastic backpropagation) and their ln q_0(z)."""
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        return reparameterize(self.mean, self.log_std, eps)
