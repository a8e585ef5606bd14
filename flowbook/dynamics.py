"""Infinitesimal flows of Rezende & Mohamed (2015), §3.2: Langevin and Hamiltonian dynamics.

A finite flow moves samples through K invertible maps; an infinitesimal flow moves them along a
differential equation, and K → ∞ with each map close to the identity. This module holds

* the Langevin flow dz = −∇U(z)dt + √2·dξ (§3.2.1), simulated with Euler–Maruyama
  (:func:`euler_maruyama_step`, :func:`langevin`), and the exact Fokker–Planck solution for the
  quadratic potential U = z²/2 (:func:`ornstein_uhlenbeck_moments`) that checks it;
* the Hamiltonian flow on the augmented space (z, ρ) with H(z, ρ) = U(z) + ½ρᵀρ (§3.2.2),
  discretized by the volume-preserving leapfrog integrator (:func:`leapfrog`), and
  :class:`HamiltonianFlow`, a few leapfrog steps used inside the auxiliary-variable bound of
  Hamiltonian variational inference (Salimans et al., 2015), the HVI rows of the paper's Table 2;
* sample-based entropy and KL estimates (:func:`knn_entropy`, :func:`kl_to_target`), needed because
  the density of a Langevin ensemble has no closed form.

Potentials are callables U(z) → (batch,) for z of shape (batch, D), as in :mod:`flowbook.energies`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowbook.flows import DiagonalGaussian
from flowbook.gaussian import diagonal_normal_log_prob

__all__ = [
    "potential_grad", "euler_maruyama_step", "langevin", "ornstein_uhlenbeck_moments",
    "euler_maruyama_ou_stationary_variance", "hamiltonian", "leapfrog", "gaussian_entropy",
    "knn_entropy", "kl_to_target", "grid_samples", "HamiltonianSample", "HamiltonianFlow",
]

Potential = Callable[[Tensor], Tensor]


def _check_batch(z: Tensor, where: str) -> None:
    if not isinstance(z, Tensor) or z.dim() != 2:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"{where}: z must be a tensor of shape (batch, dim), got {shape}; "
                         "reshape it, e.g. z.reshape(-1, dim)")
    if not z.is_floating_point():
        raise TypeError(f"{where}: z has dtype {z.dtype}; use z.float() or z.double()")


def potential_grad(U: Potential, z: Tensor, create_graph: bool = False) -> Tensor:
    """∇U(z) for each row of z by autograd, shape (batch, D).

    With ``create_graph=True`` the gradient is itself differentiable, which a flow trained through
    its dynamics needs (the HVI bound backpropagates through every leapfrog step). Otherwise z is
    detached first, so simulating a Langevin ensemble builds no graph across steps.
    """
    with torch.enable_grad():
        if not create_graph or not z.requires_grad:
            z = z.detach().requires_grad_(True)
        u = U(z)
        if u.shape != z.shape[:1]:
            raise ValueError(f"potential_grad: U(z) must have shape (batch,) = {tuple(z.shape[:1])}, "
                             f"got {tuple(u.shape)}; U should sum over the last axis of z itself")
        (grad,) = torch.autograd.grad(u.sum(), z, create_graph=create_graph)
    return grad


# ----------------------------------------------------------------------------------------------
# Langevin flow (§3.2.1)
# ----------------------------------------------------------------------------------------------
def euler_maruyama_step(z: Tensor, grad_U: Tensor, dt: float, noise: Tensor) -> Tensor:
    """One Euler–Maruyama step of dz = −∇U(z)dt + √2·dξ: z − ∇U(z)·Δt + √(2Δt)·ξ, ξ ~ N(0, I).

    The drift F = −∇U and the diffusion G = √2·I are the paper's choice in §3.2.1, for which the
    Fokker–Planck equation has the stationary density e^{−U}/Z.
    """
    if dt <= 0:
        raise ValueError(f"euler_maruyama_step: dt must be positive, got {dt}")
    return z - dt * grad_U + math.sqrt(2.0 * dt) * noise


def langevin(U: Potential, z0: Tensor, dt: float, n_steps: int, record_every: int | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Simulate an ensemble under the Langevin flow with Euler–Maruyama (§3.2.1).

    Args:
        U: potential, U(z) of shape (batch,).
        z0: (batch, D) initial particles, samples of q_0.
        dt: time step Δt; the stationary law of the discretization is e^{−U} only as Δt → 0
            (its bias is O(Δt), see :func:`euler_maruyama_ou_stationary_variance`).
        n_steps: number of steps; the final time is n_steps·Δt.
        record_every: store the ensemble every this many steps (default: only the start and end).
        generator: torch random generator for the noise, for repeatable runs.
    Returns:
        (z_T, times, snapshots), the final ensemble, the recorded times (S,) and the recorded
        ensembles (S, batch, D), the first being z0 at t = 0.
    """
    _check_batch(z0, "langevin")
    if n_steps < 0:
        raise ValueError(f"langevin: n_steps must be ≥ 0, got {n_steps}")
    every = record_every if record_every is not None else max(n_steps, 1)
    if every < 1:
        raise ValueError(f"langevin: record_every must be ≥ 1, got {record_every}")
    z = z0.detach()
    times, snaps = [0.0], [z]
    for step in range(1, n_steps + 1):
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        z = euler_maruyama_step(z, potential_grad(U, z), dt, noise).detach()
        if step % every == 0 or step == n_steps:
            times.append(step * dt)
            snaps.append(z)
    return z, torch.tensor(times, dtype=z.dtype), torch.stack(snaps)


def ornstein_uhlenbeck_moments(t: Tensor | float, mean0: float, var0: float) -> tuple[Tensor, Tensor]:
    """Exact mean and variance at time t of the Langevin flow for U(z) = z²/2 (per coordinate).

    For this potential the SDE is the Ornstein–Uhlenbeck process dz = −z·dt + √2·dξ, and the
    Fokker–Planck equation maps a Gaussian q_0 = N(m_0, s_0²) to the Gaussian
    q_t = N(m_0·e^{−t}, 1 + (s_0² − 1)·e^{−2t}) (Risken, 1996, §5.3), which tends to e^{−U}/Z = N(0, 1).
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    return mean0 * torch.exp(-t), 1.0 + (var0 - 1.0) * torch.exp(-2.0 * t)


def euler_maruyama_ou_stationary_variance(dt: float) -> float:
    """Stationary variance of Euler–Maruyama for U = z²/2: 1/(1 − Δt/2), not the exact 1.

    The chain z' = (1 − Δt)·z + √(2Δt)·ξ has a stationary variance v with v = (1 − Δt)²·v + 2Δt, so
    v = 2Δt/(2Δt − Δt²): the discretization is biased by O(Δt), and unstable for Δt ≥ 2.
    """
    if not 0 < dt < 2:
        raise ValueError(f"Euler–Maruyama on U = z²/2 has a stationary law only for 0 < dt < 2, got {dt}")
    return 1.0 / (1.0 - dt / 2.0)


# ----------------------------------------------------------------------------------------------
# Hamiltonian flow (§3.2.2) and the leapfrog integrator
# ----------------------------------------------------------------------------------------------
def hamiltonian(U: Potential, z: Tensor, rho: Tensor) -> Tensor:
    """H(z, ρ) = U(z) + ½ρᵀρ: potential plus kinetic energy with unit mass (§3.2.2)."""
    return U(z) + 0.5 * rho.square().sum(-1)


def _step_sizes(step_size: Tensor | float, n_steps: int | None, z: Tensor) -> Tensor:
    """Step sizes as an (L, D) tensor: one ε_l per leapfrog step, per dimension or shared."""
    eps = torch.as_tensor(step_size, dtype=z.dtype, device=z.device)
    if eps.dim() == 0 or (eps.dim() == 1 and n_steps is not None):
        if n_steps is None:
            raise ValueError("leapfrog: give n_steps when step_size is a scalar or a (D,) vector")
        eps = eps.expand(n_steps, *eps.shape)
    if eps.dim() == 1:  # (L,) shared over dimensions
        eps = eps.unsqueeze(-1)
    if eps.dim() != 2 or eps.shape[-1] not in (1, z.shape[-1]):
        raise ValueError(f"leapfrog: step_size must be a scalar, (D,), (L,) or (L, D) with D = {z.shape[-1]}, "
                         f"got shape {tuple(eps.shape)}")
    if n_steps is not None and eps.shape[0] != n_steps:
        raise ValueError(f"leapfrog: step_size has {eps.shape[0]} steps but n_steps = {n_steps}")
    return eps


def leapfrog(U: Potential, z: Tensor, rho: Tensor, step_size: Tensor | float, n_steps: int | None = None,
             create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """L leapfrog steps of Hamilton's equations dz/dt = ρ, dρ/dt = −∇U(z) (§3.2.2; Neal, 2011).

    Each step l, with step size ε_l (a scalar or one per dimension), is::

        ρ ← ρ − (ε_l/2)⊙∇U(z);  z ← z + ε_l⊙ρ;  ρ ← ρ − (ε_l/2)⊙∇U(z).

    Every substep changes one of (z, ρ) by a function of the other only, a shear with unit Jacobian
    determinant, so the map (z_0, ρ_0) ↦ (z_L, ρ_L) is volume-preserving whatever the step sizes:
    ln|det| = 0 and the joint density is carried along unchanged, q_L(z_L, ρ_L) = q_0(z_0, ρ_0).
    The gradient at the end of one step is reused at the start of the next: L + 1 evaluations of ∇U.

    Args:
        U: potential; z, rho: (batch, D) position and momentum.
        step_size: scalar or (D,) with ``n_steps`` given, or (L,) / (L, D) with one row per step.
        create_graph: keep the graph through ∇U so that a loss can be differentiated with respect
            to the step sizes and the initial point (needed when the flow is trained).
    Returns:
        (z_L, ρ_L).
    """
    _check_batch(z, "leapfrog")
    if rho.shape != z.shape:
        raise ValueError(f"leapfrog: rho must have the shape of z, {tuple(z.shape)}, got {tuple(rho.shape)}")
    eps = _step_sizes(step_size, n_steps, z)
    grad = potential_grad(U, z, create_graph)
    for eps_l in eps:
        rho = rho - 0.5 * eps_l * grad
        z = z + eps_l * rho
        grad = potential_grad(U, z, create_graph)
        rho = rho - 0.5 * eps_l * grad
    return z, rho


# ----------------------------------------------------------------------------------------------
# Entropy and KL from samples
# ----------------------------------------------------------------------------------------------
def gaussian_entropy(cov: Tensor) -> Tensor:
    """Differential entropy of N(μ, Σ): ½·ln det(2πe·Σ), in nats."""
    D = cov.shape[-1]
    return 0.5 * (D * math.log(2.0 * math.pi * math.e) + torch.logdet(cov))


def knn_entropy(x: Tensor, k: int = 4, chunk: int = 2048) -> Tensor:
    """Kozachenko–Leonenko k-nearest-neighbour estimate of the differential entropy H = −E[ln q(x)].

    Ĥ = ψ(N) − ψ(k) + ln V_D + (D/N)·Σ_i ln r_i, where r_i is the distance from x_i to its k-th
    nearest neighbour among the other N − 1 samples and V_D = π^{D/2}/Γ(1 + D/2) is the volume of
    the unit ball (Kozachenko & Leonenko, 1987; Kraskov et al., 2004). It is consistent, with a
    bias that shrinks as N grows and that is largest where the density curves sharply over the
    scale r_i; the chapter measures both bias and spread at its ensemble size. Computed in float64
    with a k-d tree (scipy), or without scipy by brute force in row chunks (memory O(chunk·N)).
    Returns a float64 scalar on the CPU.
    """
    _check_batch(x, "knn_entropy")
    N, D = x.shape
    if not 1 <= k < N:
        raise ValueError(f"knn_entropy: need 1 ≤ k < N, got k={k} with N={N} samples")
    x = x.detach().to(torch.float64)
    try:  # a k-d tree finds neighbours in O(N log N); scipy is in requirements.txt and on Colab
        from scipy.spatial import cKDTree
    except ImportError:
        cKDTree = None
    if cKDTree is not None:
        # k + 1 neighbours because the nearest one of each point is itself (distance 0)
        dist, _ = cKDTree(x.cpu().numpy()).query(x.cpu().numpy(), k=k + 1)
        r_k = torch.as_tensor(dist[:, k], dtype=torch.float64)
    else:
        r_k = torch.cat([torch.cdist(x[start:start + chunk], x).topk(k + 1, dim=-1, largest=False).values[:, k]
                         for start in range(0, N, chunk)]).cpu()
    log_r = torch.log(r_k.clamp_min(torch.finfo(torch.float64).tiny))
    log_unit_ball = 0.5 * D * math.log(math.pi) - math.lgamma(1.0 + 0.5 * D)
    n, kk = torch.tensor(float(N), dtype=torch.float64), torch.tensor(float(k), dtype=torch.float64)
    return torch.digamma(n) - torch.digamma(kk) + log_unit_ball + D * log_r.mean()


def kl_to_target(x: Tensor, U: Potential, log_Z: float, k: int = 4) -> Tensor:
    """KL(q‖p) for p = e^{−U}/Z from samples x ~ q: −Ĥ(q) + mean U(x) + ln Z.

    This is the free energy E_q[ln q + U] plus ln Z (:func:`flowbook.energies.kl_from_free_energy`)
    with E_q[ln q] = −H(q) estimated by :func:`knn_entropy`; its error is that of the entropy
    estimate plus the Monte Carlo error of the mean of U.
    """
    with torch.no_grad():
        mean_U = U(x.detach()).to(torch.float64).mean()
    return -knn_entropy(x, k) + mean_U + log_Z


def grid_samples(U: Potential, n: int, box: float = 5.0, cells: int = 500,
                 generator: torch.Generator | None = None) -> Tensor:
    """n independent samples of p = e^{−U}/Z for a 2-D potential, drawn through a fine grid, in float64.

    A cell of the cells×cells grid over [−box, box]² is picked with probability ∝ e^{−U(centre)}, then
    a point uniformly inside it: exact up to the variation of U within a cell (spacing 2·box/cells)
    and the mass outside the box (for the confined targets of :mod:`flowbook.energies` at box = 5,
    below e^{−8}). These reference samples measure the bias of sample-based estimates such as
    :func:`kl_to_target` at the target itself, where the true KL is 0.
    """
    if n < 1 or cells < 2 or box <= 0:
        raise ValueError(f"grid_samples needs n ≥ 1, cells ≥ 2 and box > 0, got n={n}, cells={cells}, box={box}")
    h = 2.0 * box / cells
    x = torch.linspace(-box + h / 2, box - h / 2, cells, dtype=torch.float64)
    centres = torch.stack(torch.meshgrid(x, x, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        weights = torch.softmax(-U(centres), 0)
    idx = torch.multinomial(weights, n, replacement=True, generator=generator)
    jitter = torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5
    return centres[idx] + h * jitter


# ----------------------------------------------------------------------------------------------
# Hamiltonian variational inference (Salimans et al., 2015): leapfrog steps inside a bound
# ----------------------------------------------------------------------------------------------
@dataclass
class HamiltonianSample:
    """What one pass of :class:`HamiltonianFlow` produces, one row per sample.

    ``log_weight`` = ln p̃(z_L) + ln r(ρ_L|z_L) − ln q_0(z_0) − ln q(ρ_0|z_0), with p̃ = e^{−U}; its mean
    is the auxiliary lower bound on ln Z.
    """

    z0: Tensor
    rho0: Tensor
    z: Tensor
    rho: Tensor
    log_weight: Tensor


class HamiltonianFlow(nn.Module):
    """A Hamiltonian flow as a variational family: q_0(z_0)·q(ρ_0), then L leapfrog steps (HVI).

    The marginal density of z_L is intractable, but the joint (z_L, ρ_L) has the density
    q_0(z_0)·q(ρ_0) because leapfrog preserves volume. With an auxiliary *reverse model*
    r(ρ_L | z_L), the bound of Salimans et al. (2015),

        ln Z ≥ E[ln p̃(z_L) + ln r(ρ_L|z_L) − ln q_0(z_0) − ln q(ρ_0)]
             = ln Z − KL(q_L(z)‖p) − E_{q_L(z)} KL(q_L(ρ|z)‖r(ρ|z)),

    holds for every r; it is tight when the flow's marginal is p and r is the true conditional of
    ρ_L given z_L. Learnable: the mean and scale of q_0 = N(μ, diag σ²), the scale of the initial
    momentum q(ρ_0) = N(0, diag s²), the step sizes ε_l (one per step and dimension, kept in
    (0, max_step) through a sigmoid, see :meth:`step_sizes`) and r, a Gaussian whose mean and
    log-scale are an MLP of z_L (``reverse_hidden`` units; 0 gives a Gaussian that does not depend on z).
    """

    def __init__(self, U: Potential, dim: int, n_leapfrog: int, step_size: float = 0.1,
                 reverse_hidden: int = 32, max_step: float = 0.35):
        super().__init__()
        if dim < 1 or n_leapfrog < 1 or not 0 < step_size < max_step or reverse_hidden < 0:
            raise ValueError("HamiltonianFlow needs dim ≥ 1, n_leapfrog ≥ 1, 0 < step_size < max_step and "
                             f"reverse_hidden ≥ 0, got {dim}, {n_leapfrog}, {step_size} (max_step={max_step}), "
                             f"{reverse_hidden}")
        self.U, self.dim, self.n_leapfrog, self.max_step = U, dim, n_leapfrog, max_step
        self.q0 = DiagonalGaussian(dim)
        self.momentum_log_std = nn.Parameter(torch.zeros(dim))
        # ε = max_step·sigmoid(raw): leapfrog is unstable once ε·√(curvature of U) > 2, and a sample of
        # q0 in a steep region (the confining wall of flowbook.energies has curvature 16) would
        # otherwise blow up and turn every parameter into NaN
        ratio = step_size / max_step
        self.step_raw = nn.Parameter(torch.full((n_leapfrog, dim), math.log(ratio / (1.0 - ratio))))
        if reverse_hidden:
            self.reverse = nn.Sequential(nn.Linear(dim, reverse_hidden), nn.Tanh(),
                                         nn.Linear(reverse_hidden, 2 * dim))
            # start from r = N(0, I) so that training begins from the plain bound
            nn.init.zeros_(self.reverse[-1].weight)
            nn.init.zeros_(self.reverse[-1].bias)
        else:
            self.reverse = None
            self.reverse_params = nn.Parameter(torch.zeros(2 * dim))

    def step_sizes(self) -> Tensor:
        """The leapfrog step sizes ε, shape (L, D), each in (0, max_step)."""
        return self.max_step * torch.sigmoid(self.step_raw)

    def reverse_log_prob(self, rho: Tensor, z: Tensor) -> Tensor:
        """ln r(ρ | z) for the reverse model."""
        out = self.reverse(z) if self.reverse is not None else self.reverse_params.expand(z.shape[0], -1)
        mean, log_std = out.chunk(2, dim=-1)
        return diagonal_normal_log_prob(rho, mean, log_std)

    def forward(self, n: int, generator: torch.Generator | None = None, beta: float = 1.0) -> HamiltonianSample:
        """Draw n reparameterized samples and their log-weights (differentiable in every parameter).

        ``beta`` < 1 weights the energy by β_t as in the annealed free energy of §6
        (:func:`flowbook.objectives.beta_schedule`); the bound on ln Z is the mean at β = 1.
        """
        z0, log_q0 = self.q0.sample(n, generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=z0.dtype, device=z0.device)
        rho0 = torch.exp(self.momentum_log_std) * eps
        log_q_rho = diagonal_normal_log_prob(rho0, torch.zeros_like(rho0), self.momentum_log_std)
        z, rho = leapfrog(self.U, z0, rho0, self.step_sizes(), create_graph=True)
        log_weight = -beta * self.U(z) + self.reverse_log_prob(rho, z) - log_q0 - log_q_rho
        return HamiltonianSample(z0=z0, rho0=rho0, z=z, rho=rho, log_weight=log_weight)

    def gradient_evaluations(self) -> int:
        """Evaluations of ∇U per sample in one pass: L + 1 (see :func:`leapfrog`)."""
        return self.n_leapfrog + 1
