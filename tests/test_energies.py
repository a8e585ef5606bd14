"""Tests for flowbook.energies: Table 1's potentials against independent numpy formulas, confinement,
and the quadrature of ln Z."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowbook.energies import (BOX, POTENTIALS, TARGETS, U1, U2, U3, U4, confine, density_grid,
                               kl_from_free_energy, log_normalizer)


# --- Table 1 of the paper, written out again in numpy -------------------------------------------
def _np_potentials(z: np.ndarray) -> dict[str, np.ndarray]:
    z1, z2 = z[:, 0], z[:, 1]
    w1 = np.sin(2 * np.pi * z1 / 4)
    w2 = 3 * np.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + np.exp(-(z1 - 1) / 0.3))
    norm = np.sqrt(z1 ** 2 + z2 ** 2)
    return {
        "U1": 0.5 * ((norm - 2) / 0.4) ** 2
        - np.log(np.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + np.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)),
        "U2": 0.5 * ((z2 - w1) / 0.4) ** 2,
        "U3": -np.log(np.exp(-0.5 * ((z2 - w1) / 0.35) ** 2) + np.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2)),
        "U4": -np.log(np.exp(-0.5 * ((z2 - w1) / 0.4) ** 2) + np.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2)),
    }


@pytest.mark.parametrize("name", ["U1", "U2", "U3", "U4"])
def test_potentials_match_table_1(name: str) -> None:
    rng = np.random.default_rng(0)
    # points where numpy's plain formula does not underflow, so it is a fair reference
    z = rng.uniform(-3.0, 3.0, size=(500, 2))
    expected = _np_potentials(z)[name]
    got = POTENTIALS[name](torch.tensor(z))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert POTENTIALS[name] is {"U1": U1, "U2": U2, "U3": U3, "U4": U4}[name]


@pytest.mark.parametrize("name", ["U1", "U3", "U4"])
def test_potentials_are_stable_far_from_the_modes(name: str) -> None:
    """Where both exponentials underflow the log-sum-exp form stays finite (the naive one gives inf)."""
    z = torch.tensor([[30.0, -25.0], [-40.0, 40.0]], dtype=torch.float64)
    assert torch.isfinite(POTENTIALS[name](z)).all()
    assert torch.isfinite(POTENTIALS[name](z.float())).all()


def test_potentials_accept_any_leading_shape_and_check_input() -> None:
    z = torch.randn(3, 4, 2)
    assert U3(z).shape == (3, 4)
    with pytest.raises(ValueError, match=r"need z of shape \(\.\.\., 2\), got \(5, 3\)"):
        U1(torch.randn(5, 3))
    with pytest.raises(TypeError, match="use z.float"):
        U2(torch.ones(5, 2, dtype=torch.long))


@pytest.mark.parametrize("name", ["U1", "U2", "U3", "U4"])
def test_confined_equals_raw_inside_the_box_and_grows_outside(name: str) -> None:
    z_in = (torch.rand(1000, 2, dtype=torch.float64) * 2 - 1) * BOX
    assert torch.equal(TARGETS[name](z_in), POTENTIALS[name](z_in))
    z_out = torch.tensor([[5.0, 0.0], [0.0, -6.0], [-4.5, 4.5]], dtype=torch.float64)
    wall = 0.5 * (torch.relu(z_out.abs() - BOX) / 0.25).square().sum(-1)
    torch.testing.assert_close(TARGETS[name](z_out) - POTENTIALS[name](z_out), wall)
    assert TARGETS[name].__name__ == f"{name}_confined"


def test_confine_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="box > 0 and scale > 0"):
        confine(U1, scale=0.0)


@pytest.mark.parametrize("name", ["U1", "U2", "U3", "U4"])
def test_log_normalizer_converges_under_refinement(name: str) -> None:
    """Halving h shrinks the change at least as fast as h² would (midpoint rule), down to rounding."""
    values = [log_normalizer(TARGETS[name], box=7.0, n=n) for n in (70, 140, 280, 560)]
    diffs = [abs(a - b) for a, b in zip(values, values[1:])]
    for coarse, fine in zip(diffs, diffs[1:]):
        assert fine <= max(coarse / 3.5, 1e-11)
    assert diffs[-1] < 1e-6


def test_raw_u2_is_not_normalizable_but_confined_u2_is() -> None:
    """Doubling the box (same spacing) adds ln 2 to the raw U2's 'ln Z': its mass grows with the width
    along z1. The confined U2's ln Z does not move."""
    raw = [log_normalizer(POTENTIALS["U2"], box=b, n=int(50 * b)) for b in (6.0, 12.0, 24.0)]
    confined = [log_normalizer(TARGETS["U2"], box=b, n=int(50 * b)) for b in (6.0, 12.0, 24.0)]
    for a, b in zip(raw, raw[1:]):
        assert abs((b - a) - math.log(2)) < 0.01
    for a, b in zip(confined, confined[1:]):
        assert abs(b - a) < 1e-5


def test_log_normalizer_of_a_standard_gaussian() -> None:
    log_z = log_normalizer(lambda z: 0.5 * z.square().sum(-1), box=8.0, n=400)
    assert abs(log_z - math.log(2 * math.pi)) < 1e-9
    with pytest.raises(ValueError, match="n ≥ 2 and box > 0"):
        log_normalizer(U1, n=1)


def test_density_grid_is_normalized() -> None:
    Z1, Z2, p = density_grid(TARGETS["U1"], box=7.0, n=300)
    h = 14.0 / 300
    assert Z1.shape == Z2.shape == p.shape == (300, 300)
    assert abs(float(p.sum()) * h * h - 1.0) < 1e-12
    _, _, p_exact = density_grid(TARGETS["U1"], box=7.0, n=300, log_Z=log_normalizer(TARGETS["U1"]))
    assert abs(float(p_exact.sum()) * h * h - 1.0) < 1e-6


def test_kl_from_free_energy_is_zero_for_the_exact_density() -> None:
    """For q = p = N(0, I) with U = ½‖z‖², F = E_q[ln q + U] = −ln 2π, so KL = F + ln Z = 0."""
    U = lambda z: 0.5 * z.square().sum(-1)  # noqa: E731
    z = torch.randn(200_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    log_q = -0.5 * z.square().sum(-1) - math.log(2 * math.pi)
    F = float((log_q + U(z)).mean())
    assert abs(kl_from_free_energy(F, log_normalizer(U, box=8.0, n=400))) < 1e-9
    assert kl_from_free_energy(torch.tensor(1.5), 2.0) == 3.5
