"""Inverse autoregressive flow (Kingma et al., 2016), amortized from the encoder like the paper's flows.

Each of the K steps runs a MADE (Germain et al., 2015) over z, one hidden layer of H ELU units with
masked weights, that emits two vectors m and s in which the outputs of dimension i see only the inputs
before i (:func:`made`). The step is the gated update of the IAF paper (§4, Algorithm 1) with one
change of gate::

    g = 1 + tanh(s) = 2·sigmoid(2s),        z' = g ⊙ z + (1 − g) ⊙ m = z + tanh(s) ⊙ (z − m).

Why this gate: the paper's update z' = σ ⊙ z + (1 − σ) ⊙ m with σ = sigmoid(s) is the identity only
at σ = 1, i.e. s = +∞; its forget-gate bias (s starts at +1 or +2) brings it near the identity, but a
stack of K such steps still starts as a contraction by σ(2)^K (0.28 for K = 10), not where the flow-free
model starts. Replacing σ by 2·sigmoid(2s) keeps what made the update stable (a bounded gate,
0 < g < 2, so no exp(s) can overflow; the log-det Σ ln g computed from a log-sigmoid, finite for any s)
and puts the identity at the finite point s = 0, whatever m is. For s ≤ 0 the step is exactly the
paper's convex update with σ = g; for s > 0 it may also expand (at most by 2 per step), which the
paper's contraction-only gate leaves to q0. The identity is exact in floating point: at s = 0,
2·sigmoid(0) = 1 and tanh(0) = 0 make z' = 1·z − 0·m = z and the log-det log1p(0) = 0
(:meth:`IAFSpec.identity`, :meth:`IAFSpec.mask_layers`). The step is computed as g·z − tanh(s)·m,
not as z + tanh(s)·(z − m): a strongly contracting gate (g = 10⁻⁸, say) would round 1 + tanh s to a
multiple of the machine epsilon, while 2·sigmoid(2s) keeps g, and so the map, as accurate as the
log-det.

Because m_i and s_i depend on z_<i only, ∂z'/∂z is triangular with diagonal g, so ln|det| = Σ_i ln g_i:
one pass for the forward map and its log-det, while the inverse needs D sequential passes
(:func:`iaf_inverse`). Odd steps reverse the order of the variables (the masks are built on reversed
degrees), so that each dimension gets to depend on the others across steps.

Conditioning on the encoder (:class:`IAFSpec`): Kingma et al. give the autoregressive network the
encoder's context h as an extra input. Here h enters each step's MADE as a per-data-point bias b1 (K, H)
of its hidden units, the output of a linear map of h (the DLGM's flow head): the same as an unmasked
input h wired to every hidden unit (h is not z, so the autoregressive property holds). The masked
weights and the output biases are global. This is the cheapest conditioning (K·H head outputs per
data point, :meth:`IAFSpec.cost`). It leaves the first variable of each step (the one with no inputs
before it) with an m and s that do not depend on x; the reversal makes it the next step's last
variable, the one that depends on the context and on all the others, and q0's mean and variance
depend on x already.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from flowbook.flowmath import check_param, check_z, num_layers
from flowbook.flows import FlowSpec, _layer_mask, register

__all__ = ["made_masks", "made", "iaf_gate_log", "iaf", "iaf_inverse", "IAFSpec"]

#: below it ln(1 + tanh s) is computed as ln 2 + ln sigmoid(2s), which stays finite where tanh s rounds
#: to −1; above it as log1p(tanh s), which is exactly 0 at s = 0 (the identity)
_LOG_GATE_SWITCH = -0.5


@functools.lru_cache(maxsize=64)
def _masks_cpu(dim: int, hidden: int, reverse: bool) -> tuple[Tensor, Tensor]:
    # degrees (Germain et al. 2015, §4): input i has degree d(i) in 1..D (the order of the step);
    # hidden unit j has degree 1 + (j mod (D − 1)), so every degree 1..D − 1 is present once H ≥ D − 1
    position = torch.arange(dim)
    d_in = dim - position if reverse else position + 1
    d_hidden = 1 + torch.arange(hidden) % (dim - 1)
    input_to_hidden = d_hidden[:, None] >= d_in[None, :]   # (H, D): unit j sees inputs of degree ≤ its own
    hidden_to_output = d_in[:, None] > d_hidden[None, :]   # (D, H): output i sees units of degree < d(i)
    return input_to_hidden, torch.cat([hidden_to_output, hidden_to_output])  # m and s share the mask


def made_masks(dim: int, hidden: int, reverse: bool = False, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """The MADE masks of one step (Germain et al., 2015, §4), built once from the degrees.

    Args:
        dim: D ≥ 2, the number of variables.
        hidden: H ≥ 1 hidden units; with H ≥ D − 1 every output i sees every input before it.
        reverse: the reversed order (variable D first), used by the odd steps of :func:`iaf`.
    Returns:
        The (H, D) mask of the input-to-hidden weights and the (2D, H) mask of the hidden-to-output
        weights (the rows of m, then those of s), as 0/1 in ``dtype``.
    """
    if dim < 2 or hidden < 1:
        raise ValueError(f"made_masks needs dim ≥ 2 (one variable has nothing to depend on) and hidden ≥ 1, "
                         f"got dim={dim}, hidden={hidden}")
    m1, m2 = _masks_cpu(dim, hidden, bool(reverse))
    return m1.to(device=device, dtype=dtype), m2.to(device=device, dtype=dtype)


def _stacked_masks(dim: int, hidden: int, K: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """(K, H, D) and (K, 2D, H): the masks of steps 0..K−1, the odd ones in the reversed order."""
    forward, backward = made_masks(dim, hidden, False, dtype, device), made_masks(dim, hidden, True, dtype, device)
    return tuple(torch.stack([(backward if k % 2 else forward)[i] for k in range(K)]) for i in (0, 1))


def _matvec(x: Tensor, w: Tensor) -> Tensor:
    """x (batch, n) times the weights w (out, n) shared, or (batch, out, n) per example."""
    return F.linear(x, w) if w.dim() == 2 else torch.linalg.vecdot(w, x.unsqueeze(-2))


def made(z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """One MADE over z: (m, s) = W2·elu(W1·z + b1) + b2 with the masks of :func:`made_masks` applied.

    Args:
        z: (batch, D).
        w1: (H, D); b1: (H,); w2: (2D, H); b2: (2D,); each shared, or per example with a leading batch
            axis. Entries the masks remove are ignored.
        reverse: the order of the variables (see :func:`made_masks`).
    Returns:
        m and s, each (batch, D), where m_i and s_i depend only on the variables before i in the order.
    """
    D, H = z.shape[-1], w1.shape[-2]
    m1, m2 = made_masks(D, H, reverse, z.dtype, z.device)
    return _made(z, w1 * m1, b1, w2 * m2, b2)


def _made(z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`made` with weights already masked."""
    out = _matvec(F.elu(_matvec(z, w1) + b1), w2) + b2
    return out.chunk(2, -1)


def iaf_gate_log(s: Tensor) -> Tensor:
    """ln g = ln(1 + tanh s) element-wise, finite for every finite s and exactly 0 at s = 0.

    Where tanh s rounds to −1 (s below about −9 in float32) log1p would give −∞, so below −1/2 it is
    ln 2 + ln sigmoid(2s), the same function written without cancellation there. Each branch only sees
    inputs from its own side, so neither produces an infinite gradient that ``torch.where`` would turn
    into NaN."""
    low = s < _LOG_GATE_SWITCH
    switch = torch.full_like(s, _LOG_GATE_SWITCH)  # where() rather than clamp: clamp's gradient is 0 at its bound
    near = torch.log1p(torch.tanh(torch.where(low, switch, s)))
    far = math.log(2.0) + F.logsigmoid(2.0 * torch.where(low, s, switch))
    return torch.where(low, far, near)


def _check_iaf(z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, where: str) -> tuple[int, int]:
    """The arguments of :func:`iaf`; returns (K, H)."""
    check_z(z, None, where)
    D = z.shape[-1]
    if D < 2:
        raise ValueError(f"{where}: an autoregressive flow needs dim ≥ 2 (one variable has nothing to depend on), "
                         f"got {D}; use an element-wise flow for D = 1")
    if not isinstance(w1, Tensor) or w1.dim() not in (3, 4) or w1.shape[-1] != D:
        raise ValueError(f"{where}: w1 must have shape (K, hidden, {D}) or (batch, K, hidden, {D}), "
                         f"got {tuple(getattr(w1, 'shape', ()))}")
    K, H = w1.shape[-3], w1.shape[-2]
    for name, p, tail in (("w1", w1, (H, D)), ("b1", b1, (H,)), ("w2", w2, (2 * D, H)), ("b2", b2, (2 * D,))):
        check_param(z, p, name, tail, where)
        if num_layers(p, len(tail)) != K:
            raise ValueError(f"{where}: {name} has {num_layers(p, len(tail))} layers but w1 has K={K}")
    return K, H


def _steps(z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, where: str) -> list[tuple[Tensor, ...]]:
    """Per-step (masked w1, b1, masked w2, b2), each shared or per example."""
    K, H = _check_iaf(z, w1, b1, w2, b2, where)
    m1, m2 = _stacked_masks(z.shape[-1], H, K, z.dtype, z.device)
    return list(zip((w1 * m1).unbind(-3), b1.unbind(-2), (w2 * m2).unbind(-3), b2.unbind(-2)))


def iaf(z: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """K inverse autoregressive steps z ← g ⊙ z + (1 − g) ⊙ m, g = 1 + tanh(s), (m, s) = MADE_k(z)
    (module docstring).

    Args:
        z: (batch, D), D ≥ 2.
        w1: (K, H, D) and w2: (K, 2D, H), the MADE weights (masked here; odd steps in the reversed
            order); b1: (K, H), the hidden biases, which carry the encoder's context when per example;
            b2: (K, 2D), the biases of m and s. Each shared or per example with a leading batch axis.
    Returns:
        (z_K, log_det), log_det = Σ_k Σ_i ln(1 + tanh s_ki), shape (batch,).
    """
    gates = []
    for step in _steps(z, w1, b1, w2, b2, "iaf"):
        m, s = _made(z, *step)
        # g·z + (1 − g)·m with g = 2·sigmoid(2s) and 1 − g = −tanh(s), each computed to its own relative
        # precision: g stays accurate when a contracting gate makes it tiny (1 + tanh s would round it to
        # a multiple of the machine epsilon, or to 0), and at s = 0 both are exact (1 and 0): z' = z
        z = 2.0 * torch.sigmoid(2.0 * s) * z - torch.tanh(s) * m
        gates.append(s)
    if not gates:
        return z, z.new_zeros(z.shape[0])
    # the log-det of all steps at once: one pass of iaf_gate_log's dozen small operations, not K
    return z, iaf_gate_log(torch.stack(gates, -2)).sum((-2, -1))


def iaf_inverse(y: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """Exact inverse of :func:`iaf`, step by step from the last, each by D sequential MADE passes.

    Within a step z = (y − (1 − g)·m)/g. Pass p solves the variable p-th in the step's order from those
    before it, already solved (m and s of a variable depend only on those); the variables not yet
    solved are held at 0 rather than at a guess, because a guess divided by a tiny g may overflow, and
    a masked weight 0 times ∞ is NaN. D passes give z and, from the last pass, the s that the log-det
    needs. Finite wherever g = 2·sigmoid(2s) does not underflow to 0 (s above about −44 in float32),
    i.e. wherever the forward map is not numerically singular.

    Returns:
        (z_0, −log_det of :func:`iaf` at z_0), shape (batch, D) and (batch,).
    """
    steps = _steps(y, w1, b1, w2, b2, "iaf_inverse")
    D, log_det = y.shape[-1], y.new_zeros(y.shape[0])
    for k in reversed(range(len(steps))):
        order = range(D - 1, -1, -1) if k % 2 else range(D)  # odd steps run in the reversed order
        z = torch.zeros_like(y)
        for i in order:
            m, s = _made(z, *steps[k])
            solved = (y[:, i] + torch.tanh(s[:, i]) * m[:, i]) / (2.0 * torch.sigmoid(2.0 * s[:, i]))
            z = torch.cat([z[:, :i], solved[:, None], z[:, i + 1:]], -1)
        log_det = log_det - iaf_gate_log(s).sum(-1)
        y = z
    return y, log_det


@register
@dataclass(frozen=True)
class IAFSpec(FlowSpec):
    """Inverse autoregressive flow (:func:`iaf`) with ``hidden`` = H ELU units per step's MADE.

    Amortized is the hidden bias b1 (K, H): the encoder's context, a linear map of h per data point
    (module docstring). Global are the masked weights w1 (K, H, D), w2 (K, 2D, H) and the output biases
    b2 (K, 2D). A padded layer of H hidden units costs real arithmetic, so fits of different K do not
    share one spec (``pads_layers`` is False), as for NICE; :meth:`mask_layers` still gives exact
    identity layers."""

    hidden: int = 64

    name: ClassVar[str] = "iaf"
    names: ClassVar[tuple[str, ...]] = ("w1", "b1", "w2", "b2")
    amortized: ClassVar[tuple[str, ...]] = ("b1",)
    min_dim: ClassVar[int] = 2
    pads_layers: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden < 1:
            raise ValueError(f"IAFSpec needs hidden ≥ 1 units per MADE, got hidden={self.hidden}")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        K, H, D = self.K, self.hidden, self.dim
        return {"w1": (K, H, D), "b1": (K, H), "w2": (K, 2 * D, H), "b2": (K, 2 * D)}

    def identity(self, batch: tuple[int, ...] = (), generator: torch.Generator | None = None
                 ) -> dict[str, Tensor]:
        """Random first layers (scaled by 1/√D) and zero output layers: s = 0, so every step is exactly
        the identity with log-det exactly 0 (module docstring), and the gradient reaches the s outputs
        at once (∂z'/∂s = z − m = z there)."""
        K, H, D = self.K, self.hidden, self.dim
        return {"w1": torch.randn(*batch, K, H, D, generator=generator) / math.sqrt(D),
                "b1": torch.zeros(*batch, K, H), "w2": torch.zeros(*batch, K, 2 * D, H),
                "b2": torch.zeros(*batch, K, 2 * D)}

    def mask_layers(self, params: Mapping[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        """Zero output weights and biases where ``keep`` is 0: s = 0 there, an exact identity step
        whatever its inputs (and the reversed order of an odd step changes nothing in an identity)."""
        return {**params, "w2": params["w2"] * _layer_mask(keep, params["w2"], 2),
                "b2": params["b2"] * _layer_mask(keep, params["b2"], 1)}

    def forward(self, z: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return iaf(z, *self.args(params))

    def inverse(self, y: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return iaf_inverse(y, *self.args(params))

    def cost(self) -> dict[str, int]:
        """What K steps cost, for comparing flows at equal cost: ``head_outputs``, the encoder head's
        outputs per data point (:meth:`~flowbook.flows.FlowSpec.head_size`, K·H), and
        ``global_parameters``, the trained global numbers the masks let through (the masked-out weights
        are stored but never used): per step, the non-zero entries of both masks of :func:`made_masks`,
        and the 2D output biases."""
        m1, m2 = made_masks(self.dim, self.hidden)  # the reversed masks are permutations: the same counts
        per_step = int(m1.sum()) + int(m2.sum()) + 2 * self.dim
        return {"head_outputs": self.head_size(), "global_parameters": self.K * per_step}
