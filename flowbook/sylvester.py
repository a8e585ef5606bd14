"""Sylvester normalizing flows (van den Berg et al., 2018): M planar units sharing one layer.

A Sylvester layer is z' = z + A·h(Bz + b) with A (D × M), B (M × D), b (M,) and h = tanh. By Sylvester's
determinant identity det(I_D + A·diag h′·B) = det(I_M + diag h′·BA), an M × M determinant. With
A = QR and B = R̃Qᵀ, where Q (D × M) has orthonormal columns and R, R̃ are upper triangular (M × M),
BA = R̃R is upper triangular too, and

    ln|det ∂z'/∂z| = Σ_i ln|1 + h′(a_i)·r̃_ii·r_ii|,  a = R̃Qᵀz + b,

in O(M) once a is known. The layer is invertible where r_ii·r̃_ii > −1/sup h′ = −1 (their Theorem 2):
here both diagonals pass through tanh, r_ii = tanh(ρ_ii) and r̃_ii = tanh(ρ̃_ii), as in the paper's
code, so every raw value is allowed. Entries below the diagonals are not used (and not emitted by an
amortized head: the triangular layout of :func:`flowbook.flows.pack_upper`).

**Planar is the case M = 1.** The general form with M = 1 is the planar layer z + û·h(wᵀz + b) of
Rezende & Mohamed (2015) with A = û, B = wᵀ. In the QR form Q = q is one unit vector, so A = r·q and
Bᵀ = r̃·q are parallel: a Sylvester layer with M = 1 is the planar layer (:func:`flowbook.flows.planar`)
with w = r̃·q and û = r·q, whose constraint wᵀû = r·r̃ > −1 is planar's (Appendix A).

**Inverse.** On x = Qᵀz the layer is x' = x + R·h(R̃x + b), and on the orthogonal complement of Q's
columns it is the identity (z' − z lies in their span). R and R̃ being upper triangular, x is found by
back-substitution from the last coordinate to the first, each a monotone scalar equation
x_i + r_ii·h(r̃_ii·x_i + c_i) = t_i (slope 1 + h′·r_ii·r̃_ii > 0), solved by the bisection of
:func:`flowbook.flowmath.solve_increasing`; then z = y + Q(x − x'). So the inverse exists, and is
computed, for every M ≤ D.

Two flow types, every parameter amortized (the paper emits all of them from the encoder):

* ``sylvester-h`` (:class:`SylvesterHouseholderSpec`, the paper's Householder Sylvester flow): Q is the
  first M columns of a product of Householder reflections (:func:`flowbook.householder.householder_matrix`);
* ``sylvester-t`` (:class:`SylvesterTriangularSpec`, the paper's triangular Sylvester flow): M = D and Q a
  fixed permutation, the identity in even layers and the reversal of the coordinates in odd ones, so that
  consecutive layers are triangular in opposite directions.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from flowbook.flowmath import check_param, check_z, identity, num_layers, planar_log_det, solve_increasing
from flowbook.flows import FlowSpec, pack_upper, register, unpack_upper
from flowbook.householder import householder_matrix

__all__ = ["upper_triangular", "one_plus_tanh_product", "sylvester", "sylvester_inverse", "alternating_permutations",
           "SylvesterHouseholderSpec", "SylvesterTriangularSpec"]


def upper_triangular(raw: Tensor) -> Tensor:
    """R from raw (…, M, M): the entries above the diagonal as they are, tanh of the diagonal, zero below."""
    return torch.triu(raw, 1) + torch.diag_embed(torch.tanh(torch.diagonal(raw, dim1=-2, dim2=-1)))


def _log_cosh(x: Tensor) -> Tensor:
    # |x| + ln(1 + e^{−2|x|}) − ln 2: no overflow for large |x|
    ax = x.abs()
    return ax + F.softplus(-2.0 * ax) - math.log(2.0)


def one_plus_tanh_product(x: Tensor, y: Tensor) -> Tensor:
    """1 + tanh(x)·tanh(y) > 0, the factor 1 + r_ii·r̃_ii of the log-det, without cancellation.

    Where x and y have opposite signs and large magnitudes the product is close to −1; there it is
    computed as cosh(x + y)/(cosh x·cosh y), from logarithms, which keeps its relative accuracy (and
    underflows to 0 only where it is below the smallest float).
    """
    direct = 1.0 + torch.tanh(x) * torch.tanh(y)
    ratio = torch.exp(_log_cosh(x + y) - _log_cosh(x) - _log_cosh(y))
    return torch.where(x * y >= 0, direct, ratio)


def _matvec(m: Tensor, x: Tensor) -> Tensor:
    """m·x for matrices m (P, N) or (batch, P, N) and vectors x (batch, N): (batch, P)."""
    if m.dim() == 2:
        return x @ m.mT
    # one matrix per example: a product and a sum are 4x faster than a batched product of (P, N) by (N, 1),
    # forward and backward, at P = N = 40 on one CPU thread (bmm is built for larger right-hand sides)
    return (m * x.unsqueeze(-2)).sum(-1)


def _check_sylvester(z: Tensor, q: Tensor, r: Tensor, r_tilde: Tensor, b: Tensor, where: str) -> int:
    """The arguments of a Sylvester chain (see :func:`sylvester`); returns M."""
    check_z(z, None, where)
    D = z.shape[-1]
    if not isinstance(q, Tensor) or q.dim() not in (3, 4) or q.shape[-2] != D or not 1 <= q.shape[-1] <= D:
        raise ValueError(f"{where}: q must have shape (K, {D}, M) or (batch, K, {D}, M) with 1 ≤ M ≤ {D}, "
                         f"got {tuple(getattr(q, 'shape', ()))}")
    M = q.shape[-1]
    for name, p, tail in (("q", q, (D, M)), ("r", r, (M, M)), ("r_tilde", r_tilde, (M, M)), ("b", b, (M,))):
        check_param(z, p, name, tail, where)
        if num_layers(p, len(tail)) != num_layers(q, 2):
            raise ValueError(f"{where}: {name} has {num_layers(p, len(tail))} layers but q has "
                             f"K={num_layers(q, 2)}; give every parameter one entry per layer")
    return M


def sylvester(z: Tensor, q: Tensor, r: Tensor, r_tilde: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """K Sylvester layers z ← z + QR·tanh(R̃Qᵀz + b) in order k = 1..K (van den Berg et al., 2018).

    Args:
        z: (batch, D).
        q: (K, D, M) or (batch, K, D, M), orthonormal columns (not checked: build them with
            :func:`flowbook.householder.householder_matrix` or as permutations).
        r, r_tilde: raw (K, M, M) or (batch, K, M, M); :func:`upper_triangular` makes R and R̃ of them.
        b: (K, M) or (batch, K, M).
    Returns:
        (z_K, log_det) with log_det = Σ_k Σ_i ln(1 + h′(a_ki)·r_ii·r̃_ii) of shape (batch,) (see the module
        docstring). K = 0 is the identity (log_det 0).
    """
    _check_sylvester(z, q, r, r_tilde, b, "sylvester")
    if num_layers(b, 1) == 0:
        return identity(z)
    pre_activations = []
    for q_k, r_k, rt_k, b_k in zip(q.unbind(-3), upper_triangular(r).unbind(-3), upper_triangular(r_tilde).unbind(-3),
                                   b.unbind(-2)):
        a = _matvec(rt_k, _matvec(q_k.mT, z)) + b_k
        z = z + _matvec(q_k, _matvec(r_k, torch.tanh(a)))
        pre_activations.append(a)
    return z, _log_det(torch.stack(pre_activations, -2), r, r_tilde)


def _log_det(a: Tensor, r: Tensor, r_tilde: Tensor) -> Tensor:
    """Σ_k Σ_i ln(tanh²a + sech²a·(1 + r_ii·r̃_ii)) for pre-activations a (batch, K, M) and raw r, r̃ (whose
    diagonals :func:`one_plus_tanh_product` takes through tanh): planar's formula
    (:func:`flowbook.flowmath.planar_log_det`) per hidden unit, with 1 + r_ii·r̃_ii in place of 1 + wᵀû."""
    one_plus = one_plus_tanh_product(torch.diagonal(r, dim1=-2, dim2=-1), torch.diagonal(r_tilde, dim1=-2, dim2=-1))
    return planar_log_det(a, one_plus).sum(-1)


def _back_substitute(target: Tensor, r: Tensor, rt: Tensor, b: Tensor, iters: int) -> Tensor:
    """Solve x + R·tanh(R̃x + b) = target for x (batch, M), R and R̃ upper triangular, last coordinate first."""
    M = target.shape[-1]
    xs: list[Tensor] = []  # x_{M−1}, x_{M−2}, … as they are solved
    hs: list[Tensor] = []  # tanh(a_j) of the solved coordinates, in the same order
    for i in reversed(range(M)):
        c, t = b[..., i], target[..., i]
        if xs:
            later_x, later_h = torch.stack(xs[::-1], -1), torch.stack(hs[::-1], -1)  # coordinates i+1..M−1
            c = c + (rt[..., i, i + 1:] * later_x).sum(-1)
            t = t - (r[..., i, i + 1:] * later_h).sum(-1)
        r_ii, rt_ii = r[..., i, i], rt[..., i, i]
        # |tanh| ≤ 1 puts the root within |r_ii| of t; x + r_ii·tanh(r̃_ii·x + c) increases as r_ii·r̃_ii > −1
        x_i = solve_increasing(lambda x, r_ii=r_ii, rt_ii=rt_ii, c=c: x + r_ii * torch.tanh(rt_ii * x + c),
                               t, t - r_ii.abs(), t + r_ii.abs(), iters)
        xs.append(x_i)
        hs.append(torch.tanh(rt_ii * x_i + c))
    return torch.stack(xs[::-1], -1)


def sylvester_inverse(y: Tensor, q: Tensor, r: Tensor, r_tilde: Tensor, b: Tensor, iters: int = 100
                      ) -> tuple[Tensor, Tensor]:
    """Invert :func:`sylvester` (for every M ≤ D): returns (z_0, −forward log-det).

    Each layer is undone on x = Qᵀz by back-substitution with ``iters`` bisection steps per coordinate;
    the component of z orthogonal to Q's columns is left unchanged by the layer (module docstring).
    """
    _check_sylvester(y, q, r, r_tilde, b, "sylvester_inverse")
    if num_layers(b, 1) == 0:
        return identity(y)
    layers = list(zip(q.unbind(-3), upper_triangular(r).unbind(-3), upper_triangular(r_tilde).unbind(-3),
                      b.unbind(-2)))
    pre_activations = []
    for q_k, r_k, rt_k, b_k in reversed(layers):
        x_new = _matvec(q_k.mT, y)
        x = _back_substitute(x_new, r_k, rt_k, b_k, iters)
        y = y + _matvec(q_k, x - x_new)
        pre_activations.append(_matvec(rt_k, x) + b_k)
    return y, -_log_det(torch.stack(pre_activations[::-1], -2), r, r_tilde)


def alternating_permutations(K: int, D: int, dtype: torch.dtype = torch.float32,
                             device: torch.device | str | None = None) -> Tensor:
    """(K, D, D) permutation matrices: the identity for even k, the reversal of the D coordinates for odd k
    (the triangular Sylvester flow's Q)."""
    eye = torch.eye(D, dtype=dtype, device=device)
    return torch.stack([eye if k % 2 == 0 else eye.flip(-1) for k in range(K)]) if K else eye.new_zeros(0, D, D)


@dataclass(frozen=True)
class _SylvesterSpec(FlowSpec):
    """What the two Sylvester types share: raw R, R̃ (K, M, M) in the triangular head layout and b (K, M),
    the identity start, masking, and the forward and inverse maps given Q (:meth:`q`)."""

    inverse_iters: int = 100

    triangular: ClassVar[tuple[str, ...]] = ("r", "r_tilde")

    @property
    def M(self) -> int:
        """M, the hidden units per layer."""
        raise NotImplementedError

    def q(self, params: Mapping[str, Tensor]) -> Tensor:
        """Q of every layer that ``params`` hold, (…, K, D, M)."""
        raise NotImplementedError

    def head_numel(self, name: str) -> int:
        M = self.M
        return self.K * M * (M + 1) // 2 if name in self.triangular else super().head_numel(name)

    def unpack(self, name: str, flat: Tensor) -> Tensor:
        if name not in self.triangular:
            return super().unpack(name, flat)
        return unpack_upper(flat.unflatten(-1, (self.K, -1)), self.M)

    def pack(self, name: str, value: Tensor) -> Tensor:
        return pack_upper(value).flatten(-2) if name in self.triangular else super().pack(name, value)

    def _identity_rb(self, batch: tuple[int, ...], generator: torch.Generator | None) -> dict[str, Tensor]:
        # R = 0 makes A = QR = 0, the identity; a random R̃ (upper triangular, the scale of a linear
        # layer) keeps ∂/∂R = Q·tanh(R̃Qᵀz) ≠ 0, so the start is not a stationary point
        M = self.M
        r_tilde = torch.triu(torch.randn(*batch, self.K, M, M, generator=generator)) / math.sqrt(M)
        return {"r": torch.zeros(*batch, self.K, M, M), "r_tilde": r_tilde, "b": torch.zeros(*batch, self.K, M)}

    def mask_layers(self, params: Mapping[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        # raw R = 0 gives R = 0 (tanh 0 = 0 on the diagonal): an exact identity layer
        r = params["r"]
        return {**params, "r": r * keep.reshape(*keep.shape, 1, 1).to(r.dtype)}

    def forward(self, z: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        *_, r, r_tilde, b = self.args(params)  # both types end their names with r, r_tilde, b
        return sylvester(z, self.q(params), r, r_tilde, b)

    def inverse(self, y: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        *_, r, r_tilde, b = self.args(params)
        return sylvester_inverse(y, self.q(params), r, r_tilde, b, self.inverse_iters)


@register
@dataclass(frozen=True)
class SylvesterHouseholderSpec(_SylvesterSpec):
    """Sylvester layers with Q the first M = ``units`` columns of ``reflections`` Householder reflections
    (:func:`flowbook.householder.householder_matrix`): v (K, reflections, D), raw R and R̃ (K, M, M), b (K, M),
    all amortized. Head outputs per layer: reflections·D + M(M + 1) + M.

    ``units`` defaults to D and ``reflections`` to M, the number that reaches every D × M matrix with
    orthonormal columns (up to column signs, which R and R̃ absorb); fewer reflections cost less and
    restrict Q. Not named ``hidden``, which the callers of :func:`flowbook.flows.spec_for` use for
    NICE's hidden units.
    """

    units: int | None = None
    reflections: int | None = None

    name: ClassVar[str] = "sylvester-h"
    names: ClassVar[tuple[str, ...]] = ("v", "r", "r_tilde", "b")
    amortized: ClassVar[tuple[str, ...]] = ("v", "r", "r_tilde", "b")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.M <= self.dim or self.n_reflections < 1:
            raise ValueError(f"SylvesterHouseholderSpec needs 1 ≤ units ≤ dim={self.dim} and reflections ≥ 1 "
                             f"(or None for the defaults), got units={self.units}, reflections={self.reflections}")

    @property
    def M(self) -> int:
        """M, the hidden units per layer (``units``, or D when it is None)."""
        return self.dim if self.units is None else self.units

    @property
    def n_reflections(self) -> int:
        """The reflections per layer (``reflections``, or M when it is None)."""
        return self.M if self.reflections is None else self.reflections

    def shapes(self) -> dict[str, tuple[int, ...]]:
        K, M = self.K, self.M
        return {"v": (K, self.n_reflections, self.dim), "r": (K, M, M), "r_tilde": (K, M, M), "b": (K, M)}

    def identity(self, batch: tuple[int, ...] = (), generator: torch.Generator | None = None
                 ) -> dict[str, Tensor]:
        v = torch.randn(*batch, self.K, self.n_reflections, self.dim, generator=generator)
        return {"v": v, **self._identity_rb(batch, generator)}

    def q(self, params: Mapping[str, Tensor]) -> Tensor:
        return householder_matrix(params["v"], self.M)


@register
@dataclass(frozen=True)
class SylvesterTriangularSpec(_SylvesterSpec):
    """Sylvester layers with M = D and Q the permutations of :func:`alternating_permutations`: raw R and R̃
    (K, D, D) and b (K, D), all amortized. Head outputs per layer: D(D + 1) + D."""

    name: ClassVar[str] = "sylvester-t"
    names: ClassVar[tuple[str, ...]] = ("r", "r_tilde", "b")
    amortized: ClassVar[tuple[str, ...]] = ("r", "r_tilde", "b")

    @property
    def M(self) -> int:
        return self.dim

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"r": (self.K, self.dim, self.dim), "r_tilde": (self.K, self.dim, self.dim), "b": (self.K, self.dim)}

    def identity(self, batch: tuple[int, ...] = (), generator: torch.Generator | None = None
                 ) -> dict[str, Tensor]:
        return self._identity_rb(batch, generator)

    def q(self, params: Mapping[str, Tensor]) -> Tensor:
        r = params["r"]
        return alternating_permutations(num_layers(r, 2), self.dim, r.dtype, r.device)
