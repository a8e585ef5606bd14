"""Objectives: the (annealed) flow free energy of eq. 15 and the importance-sampled ln p(x).

With q_K the density after K flow steps, the free energy (the negative ELBO) is

    F(x) = E_{q0(z0)}[ ln q0(z0) − Σ_k ln|det ∂f_k/∂z_{k−1}| − β_t·ln p(x, z_K) ]        (eq. 15)

where β_t = min(1, 0.01 + t/10000) anneals the joint during training (§6). At β = 1, F ≥ −ln p(x),
with equality iff q_K is the exact posterior. The tighter estimate of ln p(x) used for Table 2 is the
importance-sampled log-mean-exp with q_K as proposal (Burda et al., 2016; Rezende et al., 2014).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["beta_schedule", "free_energy", "importance_log_marginal", "shared_draw_bounds"]


def beta_schedule(t: int | float, start: float = 0.01, warmup: float = 10_000) -> float:
    """The paper's annealing of the joint: β_t = min(1, start + t/warmup), t the update count."""
    if warmup <= 0:
        return 1.0
    return min(1.0, start + t / warmup)


def free_energy(log_q0: Tensor, log_det: Tensor, log_joint: Tensor, beta: float = 1.0,
                dim: int | None = None) -> Tensor:
    """Monte Carlo estimate of eq. 15: mean over samples of ln q0(z0) − log_det − β·ln p(x, z_K).

    Args:
        log_q0: ln q0(z0) for each sample, shape (n,) (or any shape shared by the three inputs).
        log_det: Σ_k ln|det ∂f_k/∂z_{k−1}| for the same samples.
        log_joint: ln p(x, z_K) for the same samples (for an energy, −U(z_K)).
        beta: the annealing weight β_t; 1 gives the (negative) ELBO.
        dim: the axis to average over, for one free energy per model or fit along the other axes
            (e.g. (rows, batch) → (rows,)); None averages over everything.
    Returns:
        The free energy averaged over every sample (and data point), as a scalar, or one per index of
        the axes other than ``dim``.
    """
    if not (log_q0.shape == log_det.shape == log_joint.shape):
        raise ValueError("free_energy: log_q0, log_det and log_joint must have one shape, got "
                         f"{tuple(log_q0.shape)}, {tuple(log_det.shape)}, {tuple(log_joint.shape)}")
    terms = log_q0 - log_det - beta * log_joint
    return terms.mean() if dim is None else terms.mean(dim)


def importance_log_marginal(propose: Callable[[int], tuple[Tensor, Tensor]],
                            log_joint: Callable[[Tensor], Tensor],
                            num_samples: int = 5000, chunk: int = 500) -> Tensor:
    """ln p(x) ≈ ln (1/S) Σ_s p(x, z_s)/q_K(z_s | x), z_s ~ q_K, accumulated in chunks.

    Args:
        propose: ``propose(n) -> (z, log_q)`` draws n samples per data point from the proposal q_K,
            z of shape (n, batch, D) and log_q = ln q_K(z) of shape (n, batch).
        log_joint: ``log_joint(z) -> ln p(x, z)`` of shape (n, batch).
        num_samples: S, the number of importance samples (the paper's Table 2 uses 5000).
        chunk: samples drawn at once; memory is O(chunk·batch·D) whatever S is.
    Returns:
        (batch,) estimates. For every S the expectation of the estimate is ≤ ln p(x) (Jensen), it is
        ≥ the ELBO in expectation, and it converges to ln p(x) as S → ∞.
    """
    if num_samples < 1 or chunk < 1:
        raise ValueError(f"importance_log_marginal needs num_samples ≥ 1 and chunk ≥ 1, got {num_samples}, {chunk}")
    running: Tensor | None = None
    done = 0
    with torch.no_grad():
        while done < num_samples:
            n = min(chunk, num_samples - done)
            z, log_q = propose(n)
            log_w = log_joint(z) - log_q
            if log_w.dim() != 2 or log_w.shape[0] != n:
                raise ValueError(f"importance_log_marginal: log weights must have shape ({n}, batch), "
                                 f"got {tuple(log_w.shape)}; check propose/log_joint")
            chunk_lse = torch.logsumexp(log_w, 0)
            running = chunk_lse if running is None else torch.logaddexp(running, chunk_lse)
            done += n
    assert running is not None
    return running - math.log(num_samples)


def shared_draw_bounds(propose: Callable[[int], tuple[Tensor, Tensor]],
                       log_joint: Callable[[Tensor], Tensor],
                       num_samples: int, chunk: int) -> tuple[Tensor, Tensor]:
    """Per data point (−ELBO, −ln p(x)), float64, from the same ``num_samples`` draws z_s ~ q_K.

    −ELBO is :func:`free_energy` at β = 1 (eq. 15) and −ln p(x) is :func:`importance_log_marginal`;
    sharing the draws makes their difference, the KL, ≥ 0 for every point and not only in
    expectation. Both accumulate in float64, so a float32 model's S = 5000 sums lose no digits.

    Args:
        propose: ``propose(n) -> (z, log_q)`` as for :func:`importance_log_marginal`.
        log_joint: ``log_joint(z) -> ln p(x, z)`` of shape (n, batch).
        num_samples: S, the draws per data point.
        chunk: draws made at once (memory O(chunk·batch·D)).
    Returns:
        ((batch,) −ELBO, (batch,) −ln p(x)), both float64.
    """
    weighted: list[Tensor] = []  # n·F per chunk: the last chunk may be shorter
    last_log_q: list[Tensor] = []

    def propose64(n: int) -> tuple[Tensor, Tensor]:
        z, log_q = propose(n)
        last_log_q[:] = [log_q.to(torch.float64)]
        return z, last_log_q[0]

    def log_joint64(z: Tensor) -> Tensor:
        lj = log_joint(z).to(torch.float64)
        log_q = last_log_q[0]
        weighted.append(free_energy(log_q, torch.zeros_like(log_q), lj, dim=0) * lj.shape[0])
        return lj

    neg_log_p = -importance_log_marginal(propose64, log_joint64, num_samples, chunk)
    return torch.stack(weighted).sum(0) / num_samples, neg_log_p
