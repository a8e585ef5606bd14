"""Tests of flowbook.gaps: the inference gap's split into amortization and approximation."""
from __future__ import annotations

import pytest
import torch

from flowbook import gaps
from flowbook.models import DLGM, DLGMConfig
from flowbook.train import evaluate


pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(K: int):
    model = DLGM(DLGMConfig(flow="planar", K=K, hidden=16)).double()
    x = (torch.rand(12, 784, generator=torch.Generator().manual_seed(0), dtype=torch.float64) < 0.2).double()
    return model, x


@pytest.mark.parametrize("K", [0, 3])
def test_bounds_of_the_encoders_posterior_agree_with_evaluate(K):
    model, x = _setup(K)
    h = model.encode(x)
    elbo, nlp = gaps.posterior_bounds(model, x, *model.q0(h), model.flow_params(h), samples=2000)
    ref = evaluate(model, x, samples=2000, batch=12)
    # different draws, same quantities: agree within a few standard errors of 2000-sample means
    assert abs(elbo.mean().item() - ref["neg_elbo"]) < 1.0
    assert abs(nlp.mean().item() - ref["neg_log_p"]) < 1.0
    assert (nlp <= elbo + 1e-9).all()


@pytest.mark.parametrize("K", [0, 3])
def test_local_refinement_tightens_the_bound_and_the_gaps_add_up(K):
    model, x = _setup(K)
    before = [p.detach().clone() for p in model.parameters()]
    r = gaps.inference_gaps(model, x, steps=60, samples=500)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))  # the model is untouched
    assert r["neg_elbo_local"] < r["neg_elbo_amortized"] - 0.5  # an untrained encoder is far from optimal
    assert r["amortization_gap"] + r["approximation_gap"] == pytest.approx(
        r["neg_elbo_amortized"] - r["neg_log_p"], abs=1e-9)
    assert r["approximation_gap"] >= 0
