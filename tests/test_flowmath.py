"""Tests of flowbook.flowmath: the generic bisection for increasing scalar equations, in float64."""
from __future__ import annotations

import pytest
import torch

from flowbook.flowmath import solve_increasing


@pytest.mark.parametrize("iters", [0, 5, 20, 40])
def test_bisection_error_is_within_the_halved_bracket(iters):
    """exp(x) = t has the closed-form root ln t; per-element brackets of different widths."""
    gen = torch.Generator().manual_seed(0)
    root = torch.rand(50, dtype=torch.float64, generator=gen) * 8 - 4
    lo = root - torch.rand(50, dtype=torch.float64, generator=gen) * 3
    hi = root + torch.rand(50, dtype=torch.float64, generator=gen) * 3
    x = solve_increasing(torch.exp, root.exp(), lo, hi, iters)
    bound = (hi - lo) * 2.0 ** -(iters + 1)
    # the root's own rounding (ln of a rounded exp) is a few ulps of the root
    assert ((x - root).abs() <= bound + 1e-15).all()


def test_bisection_reaches_float64_resolution_where_the_slope_vanishes():
    """x³ = t at t = 0: f′(0) = 0 stalls Newton's method; bisection still converges to 0."""
    target = torch.tensor([0.0, 8.0, -27.0], dtype=torch.float64)
    x = solve_increasing(lambda v: v ** 3, target, torch.full_like(target, -5.0), torch.full_like(target, 5.0), 200)
    torch.testing.assert_close(x, torch.tensor([0.0, 2.0, -3.0], dtype=torch.float64), atol=1e-15, rtol=0)


def test_bisection_outside_the_range_gives_the_nearer_end_and_refuses_negative_iters():
    target = torch.tensor([-10.0, 10.0], dtype=torch.float64)
    x = solve_increasing(lambda v: v, target, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64),
                         60)
    torch.testing.assert_close(x, torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-15, rtol=0)
    with pytest.raises(ValueError, match="iters must be ≥ 0"):
        solve_increasing(lambda v: v, target, target, target, -1)
