"""Tests for flowbook.dynamics: Langevin (Euler–Maruyama), leapfrog, entropy estimates, HVI bound."""
from __future__ import annotations

import math
import sys

import pytest
import torch

from flowbook import dynamics as dy
from flowbook.energies import TARGETS


def quadratic(z: torch.Tensor) -> torch.Tensor:
    """U(z) = ½‖z‖², whose Langevin flow is the Ornstein–Uhlenbeck process."""
    return 0.5 * z.square().sum(-1)


def test_potential_grad_matches_closed_form():
    z = torch.randn(7, 2, dtype=torch.float64)
    assert torch.allclose(dy.potential_grad(quadratic, z), z)


def test_potential_grad_rejects_unreduced_potential():
    with pytest.raises(ValueError, match="shape"):
        dy.potential_grad(lambda z: z.square(), torch.randn(3, 2))


def test_euler_maruyama_step_is_the_formula():
    z, g, xi = torch.randn(5, 2), torch.randn(5, 2), torch.randn(5, 2)
    expected = z - 0.1 * g + math.sqrt(0.2) * xi
    assert torch.allclose(dy.euler_maruyama_step(z, g, 0.1, xi), expected)
    with pytest.raises(ValueError, match="dt"):
        dy.euler_maruyama_step(z, g, 0.0, xi)


def test_langevin_ensemble_follows_fokker_planck_solution_for_ou():
    """Mean and variance of an OU ensemble match the closed-form Fokker–Planck solution."""
    g = torch.Generator().manual_seed(0)
    n, dt = 10_000, 0.01
    z0 = 3.0 + 0.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    _, times, snaps = dy.langevin(quadratic, z0, dt, 200, record_every=50, generator=g)
    mean, var = dy.ornstein_uhlenbeck_moments(times, 3.0, 0.25)
    # tolerances: Monte Carlo error (≈ 4 standard errors) plus the O(dt) discretization error
    assert torch.allclose(snaps[:, :, 0].mean(1), mean, atol=0.04)
    assert torch.allclose(snaps[:, :, 0].var(1), var, atol=0.06)
    assert not torch.allclose(snaps[-1, :, 0].var(), var[0], atol=0.06)  # the variance did move
    assert times.tolist() == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


def test_euler_maruyama_stationary_variance_is_biased_by_dt():
    g = torch.Generator().manual_seed(1)
    dt = 0.5
    v = dy.euler_maruyama_ou_stationary_variance(dt)
    assert v == pytest.approx(4.0 / 3.0)
    z0 = math.sqrt(v) * torch.randn(100_000, 1, generator=g, dtype=torch.float64)
    z, _, _ = dy.langevin(quadratic, z0, dt, 20, generator=g)
    assert z.var().item() == pytest.approx(v, rel=0.02)  # stays at 4/3, not at the exact 1
    with pytest.raises(ValueError, match="dt"):
        dy.euler_maruyama_ou_stationary_variance(2.5)


@pytest.mark.parametrize("step_size", [0.3, torch.tensor([0.1, 0.4]), torch.tensor([[0.2, 0.1], [0.05, 0.3], [0.3, 0.3]])])
def test_leapfrog_is_volume_preserving(step_size):
    """ln|det| of the leapfrog map (z, ρ) ↦ (z_L, ρ_L) is 0, by a float64 autograd Jacobian on U1."""
    U = TARGETS["U1"]
    n_steps = None if isinstance(step_size, torch.Tensor) and step_size.dim() == 2 else 3
    x = torch.tensor([0.7, -1.3, 0.4, 0.9], dtype=torch.float64)

    def flow(x):
        z, rho = dy.leapfrog(U, x[:2].unsqueeze(0), x[2:].unsqueeze(0), step_size, n_steps, create_graph=True)
        return torch.cat([z, rho], -1).squeeze(0)

    J = torch.autograd.functional.jacobian(flow, x)
    assert not torch.allclose(J, torch.eye(4, dtype=torch.float64))  # the map really moves points
    assert torch.linalg.det(J).item() == pytest.approx(1.0, abs=1e-10)


def test_leapfrog_is_reversible_and_nearly_conserves_energy():
    U = TARGETS["U2"]
    g = torch.Generator().manual_seed(2)
    z = torch.randn(50, 2, generator=g, dtype=torch.float64)
    rho = torch.randn(50, 2, generator=g, dtype=torch.float64)
    zL, rhoL = dy.leapfrog(U, z, rho, 0.01, 20)
    zb, rhob = dy.leapfrog(U, zL, -rhoL, 0.01, 20)
    assert torch.allclose(zb, z, atol=1e-10) and torch.allclose(-rhob, rho, atol=1e-10)
    dH = (dy.hamiltonian(U, zL, rhoL) - dy.hamiltonian(U, z, rho)).abs().max().item()
    # second-order integrator: halving the step cuts the energy error about four times
    zh, rhoh = dy.leapfrog(U, z, rho, 0.005, 40)
    dH_half = (dy.hamiltonian(U, zh, rhoh) - dy.hamiltonian(U, z, rho)).abs().max().item()
    assert 0 < dH < 0.05
    assert 2.5 < dH / dH_half < 5.5


def test_leapfrog_rejects_bad_step_sizes():
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="n_steps"):
        dy.leapfrog(quadratic, z, z, 0.1)
    with pytest.raises(ValueError, match="step_size"):
        dy.leapfrog(quadratic, z, z, torch.ones(4, 3))
    with pytest.raises(ValueError, match="rho"):
        dy.leapfrog(quadratic, z, torch.zeros(3, 3), 0.1, 2)


def test_knn_entropy_on_a_gaussian():
    g = torch.Generator().manual_seed(3)
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    x = torch.randn(8000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    assert dy.knn_entropy(x, k=4, chunk=1000).item() == pytest.approx(dy.gaussian_entropy(cov).item(), abs=0.03)
    with pytest.raises(ValueError, match="k"):
        dy.knn_entropy(x[:3], k=3)


def test_knn_entropy_without_scipy_agrees_with_the_tree(monkeypatch):
    x = torch.randn(700, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with_tree = dy.knn_entropy(x, k=3)
    monkeypatch.setitem(sys.modules, "scipy.spatial", None)  # makes `from scipy.spatial import` fail
    assert dy.knn_entropy(x, k=3, chunk=256).item() == pytest.approx(with_tree.item(), abs=1e-12)


def test_kl_to_target_is_near_zero_on_target_samples_and_positive_off_target():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    log_Z = math.log(2 * math.pi)
    assert abs(dy.kl_to_target(x, quadratic, log_Z).item()) < 0.05
    # KL(N(0, 4I) ‖ N(0, I)) = 2·½(4 − 1 − ln 4) ≈ 1.614
    assert dy.kl_to_target(2 * x, quadratic, log_Z).item() == pytest.approx(3 - math.log(4), abs=0.08)


def test_grid_samples_match_the_moments_of_a_gaussian():
    g = torch.Generator().manual_seed(8)
    x = dy.grid_samples(lambda z: 0.5 * ((z - torch.tensor([1.0, -0.5], dtype=z.dtype)) / 0.7).square().sum(-1),
                        20_000, generator=g)
    assert torch.allclose(x.mean(0), torch.tensor([1.0, -0.5], dtype=torch.float64), atol=0.02)
    assert torch.allclose(x.std(0), torch.tensor([0.7, 0.7], dtype=torch.float64), atol=0.02)
    with pytest.raises(ValueError, match="cells"):
        dy.grid_samples(quadratic, 10, cells=1)


def test_hamiltonian_flow_log_weight_is_lnZ_minus_energy_error():
    """With q0 = p = N(0, I), q(ρ0) = r = N(0, I), the log-weight is ln Z − (H_L − H_0) exactly."""
    torch.manual_seed(5)
    flow = dy.HamiltonianFlow(quadratic, dim=2, n_leapfrog=3, step_size=0.3, reverse_hidden=0).double()
    with torch.no_grad():
        s = flow(500)
    dH = dy.hamiltonian(quadratic, s.z, s.rho) - dy.hamiltonian(quadratic, s.z0, s.rho0)
    assert dH.abs().max() > 1e-4  # the integrator's energy error is visible, so the check can fail
    # and the dynamics are those of leapfrog: running it backwards returns the start
    z0b, rho0b = dy.leapfrog(quadratic, s.z, -s.rho, flow.step_sizes().flip(0))
    assert torch.allclose(z0b, s.z0, atol=1e-10) and torch.allclose(-rho0b, s.rho0, atol=1e-10)
    assert torch.allclose(s.log_weight, math.log(2 * math.pi) - dH, atol=1e-10)
    assert flow.gradient_evaluations() == 4
    assert torch.allclose(flow.step_sizes(), torch.full((3, 2), 0.3, dtype=torch.float64))
    with pytest.raises(ValueError, match="max_step"):
        dy.HamiltonianFlow(quadratic, dim=2, n_leapfrog=3, step_size=0.5)


@pytest.mark.slow
def test_hamiltonian_flow_training_tightens_the_bound():
    torch.manual_seed(6)
    U = TARGETS["U1"]
    flow = dy.HamiltonianFlow(U, dim=2, n_leapfrog=2, step_size=0.2, reverse_hidden=8)
    opt = torch.optim.Adam(flow.parameters(), lr=2e-2)
    with torch.no_grad():
        before = flow(2000).log_weight.mean().item()
    for _ in range(150):
        loss = -flow(128).log_weight.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = flow(2000).log_weight.mean().item()
    log_Z = 1.8775  # flowbook.energies.log_normalizer(TARGETS["U1"])
    assert before < after < log_Z + 0.05  # a lower bound on ln Z, up to Monte Carlo error
    assert after > log_Z - 1.0
