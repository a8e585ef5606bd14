"""The Householder flow (Tomczak & Welling, 2016): volume-preserving reflections of z.

A Householder reflection H_v = I − 2vvᵀ/‖v‖² mirrors z in the hyperplane orthogonal to v (the
paper's §3). It is orthogonal, so a chain of them keeps volumes (log-det 0) and is its own exact
inverse taken in reverse order. Tomczak & Welling emit the vectors v from the encoder, which makes
the posterior's covariance full rather than diagonal (§3); here, as for the planar flow's u, w, b
(Rezende & Mohamed, 2015, §4.2), the encoder's head emits every vector v of every layer per data point.

:func:`householder` applies the reflections to z; :func:`householder_matrix` gives their product as
a matrix (its first M columns are the orthonormal Q of the Sylvester flow, :mod:`flowbook.sylvester`);
:class:`HouseholderSpec` is the registered flow type ``householder``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from flowbook.flowmath import check_alike, check_z
from flowbook.flows import FlowSpec, register

__all__ = ["unit_vectors", "reflect", "householder", "householder_inverse", "householder_matrix", "HouseholderSpec"]


def unit_vectors(v: Tensor) -> Tensor:
    """v/‖v‖ along the last axis, exact for tiny and huge v; v = 0 gives 0 (then H_v is taken as I).

    A reflection depends only on the direction of v. Scaling by max|vᵢ| before the norm keeps ‖v‖²
    from underflowing (‖v‖ = 10⁻³⁰ in float32) or overflowing, so the gradient stays finite as well.
    """
    scale = v.abs().amax(-1, keepdim=True)
    nonzero = scale > 0
    # where() on the divisor, not on the quotient, so that v = 0 has a finite (zero) gradient
    scaled = v / torch.where(nonzero, scale, torch.ones_like(scale))
    norm = torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)
    return scaled / torch.where(nonzero, norm, torch.ones_like(norm))


def reflect(x: Tensor, unit: Tensor) -> Tensor:
    """H x = x − 2(uᵀx)u for a unit vector u, both (…, D) (broadcast against each other)."""
    return x - 2.0 * (x * unit).sum(-1, keepdim=True) * unit


def _check_vectors(z: Tensor, v: Tensor, where: str) -> None:
    """v must be (K, R, D) or (batch, K, R, D), on z's device and dtype."""
    check_z(z, None, where)
    if not isinstance(v, Tensor):
        raise TypeError(f"{where}: v must be a torch.Tensor, got {type(v).__name__}")
    D, batch = z.shape[-1], z.shape[0]
    if v.dim() not in (3, 4) or v.shape[-1] != D or (v.dim() == 4 and v.shape[0] != batch):
        raise ValueError(f"{where}: v must have shape (K, reflections, {D}) or (batch={batch}, K, reflections, "
                         f"{D}), got {tuple(v.shape)}")
    check_alike(z, v, "v", "module", where)


def _units_by_layer(v: Tensor) -> list[list[Tensor]]:
    """The unit vectors of (…, K, R, D) as K lists of R tensors (…, D), each broadcastable against z."""
    return [list(layer.unbind(-2)) for layer in unit_vectors(v).unbind(-3)]


def householder(z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """K layers of R reflections each, z ← H_{v_kR} ⋯ H_{v_k1} z for k = 1..K (Tomczak & Welling, §3).

    Args:
        z: (batch, D).
        v: the reflection vectors, (K, R, D) shared or (batch, K, R, D) per example (amortized). Only their
            directions matter; a zero vector counts as no reflection.
    Returns:
        (z_K, log_det) with log_det = 0 of shape (batch,), since reflections are orthogonal (ln|det H| = 0).
    """
    _check_vectors(z, v, "householder")
    for layer in _units_by_layer(v):
        for unit in layer:
            z = reflect(z, unit)
    return z, z.new_zeros(z.shape[0])


def householder_inverse(y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """The exact inverse of :func:`householder`: the same reflections in reverse order (H_v⁻¹ = H_v)."""
    _check_vectors(y, v, "householder_inverse")
    for layer in reversed(_units_by_layer(v)):
        for unit in reversed(layer):
            y = reflect(y, unit)
    return y, y.new_zeros(y.shape[0])


def householder_matrix(v: Tensor, columns: int | None = None) -> Tensor:
    """The first ``columns`` columns of H_{v_R} ⋯ H_{v_1}, the matrix of R reflections applied in order.

    Args:
        v: (…, R, D) vectors of one chain of reflections (any leading axes, e.g. (batch, K)).
        columns: M ≤ D columns to keep (default D: the whole orthogonal matrix).
    Returns:
        The (…, D, M) matrices, with orthonormal columns. R = M reflections reach every D × M matrix
        with orthonormal columns up to the signs of its columns (as in a Householder QR).

    Computed in the compact WY form (Schreiber & Van Loan, 1989; LAPACK's ``larft``): with the unit
    vectors u_i as the rows of Y (R × D), H_{u_R} ⋯ H_{u_1} = I − Yᵀ T Y, where T is lower triangular
    with T⁻¹ = ½ I + the part of Y Yᵀ below its diagonal (check by induction on R: appending H_u = I − 2uuᵀ
    on the left adds the row [−2 (uᵀYᵀ) T, 2] to T). So Q = E − Yᵀ (T Y E) for E the first M columns of
    the identity: one Gram matrix, one triangular solve and one product, instead of R passes over the
    (…, D, M) matrices (2-3x faster forward and backward at D = 40, M = R = 8).
    """
    D = v.shape[-1]
    M = D if columns is None else columns
    if not 1 <= M <= D:
        raise ValueError(f"householder_matrix: columns must be between 1 and D={D}, got {columns}")
    y = unit_vectors(v)  # (…, R, D); v = 0 gives a zero row, whose reflection is then the identity
    eye_r = torch.eye(y.shape[-2], dtype=v.dtype, device=v.device)
    t_inverse = 0.5 * eye_r + torch.tril(y @ y.mT, -1)
    ty = torch.linalg.solve_triangular(t_inverse, y[..., :M], upper=False)  # T·(Y E), (…, R, M)
    return torch.eye(D, M, dtype=v.dtype, device=v.device) - y.mT @ ty


@register
@dataclass(frozen=True)
class HouseholderSpec(FlowSpec):
    """Householder layers (:func:`householder`): each of the K layers is ``reflections`` reflections, whose
    vectors v (K, reflections, D) are all amortized (reflections·D head outputs per layer).

    Why ``reflections`` is even: a single reflection is never the identity (it maps v to −v), and a
    product of an odd number of them has determinant −1, so no odd chain can start at, or be trained
    continuously into, the identity. A layer of an even number of reflections is a rotation
    (determinant +1), it starts as the identity with its vectors in equal pairs (H_v H_v = I), and a
    layer of 2⌊D/2⌋ reflections reaches every rotation of R^D (by Cartan–Dieudonné a rotation is a
    product of an even number of at most D reflections; equal pairs fill up the rest).
    """

    reflections: int = 2

    name: ClassVar[str] = "householder"
    names: ClassVar[tuple[str, ...]] = ("v",)
    amortized: ClassVar[tuple[str, ...]] = ("v",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reflections < 2 or self.reflections % 2:
            raise ValueError(f"HouseholderSpec: reflections per layer must be even and ≥ 2 (a layer starts as the "
                             f"identity only as pairs of equal reflections), got {self.reflections}")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"v": (self.K, self.reflections, self.dim)}

    def identity(self, batch: tuple[int, ...] = (), generator: torch.Generator | None = None
                 ) -> dict[str, Tensor]:
        # random directions, each twice in a row: H_v H_v = I; the gradient with respect to either copy
        # is not zero, so training can move the pair apart. Norms about √D (not 1): the DLGM head's small
        # initial weights then turn each v, and the flow, only a little away from the identity for every x
        v = torch.randn(*batch, self.K, self.reflections // 2, self.dim, generator=generator)
        return {"v": v.repeat_interleave(2, dim=-2)}

    def mask_layers(self, params: Mapping[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        # an even number of reflections by one vector (the layer's first) is an exact identity layer
        v = params["v"]
        keep = keep.reshape(*keep.shape, 1, 1).to(v.dtype)
        return {**params, "v": torch.where(keep > 0, v, v[..., :1, :].expand_as(v))}

    def forward(self, z: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return householder(z, *self.args(params))

    def inverse(self, y: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return householder_inverse(y, *self.args(params))
