"""A new flow type is one file: a spec defined here, outside the package, and registered with
:func:`flowbook.flows.register`, trains as a DLGM row through the command line and as 2-D fits through
:mod:`flowbook.experiments2d`, with no edit to flowbook."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import Tensor

from flowbook import experiments2d as E
from flowbook import flows


@dataclass(frozen=True)
class ToyAffineSpec(flows.FlowSpec):
    """K element-wise affine layers f(z) = z·exp(s_k) + t_k, ln|det| = Σ s_k; s, t (K, D), both amortized."""

    name: ClassVar[str] = "toyaffine"
    names: ClassVar[tuple[str, ...]] = ("s", "t")
    amortized: ClassVar[tuple[str, ...]] = ("s", "t")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"s": (self.K, self.dim), "t": (self.K, self.dim)}

    def identity(self, batch: tuple[int, ...] = (), generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {n: torch.zeros(*batch, self.K, self.dim) for n in self.names}

    def mask_layers(self, params: Mapping[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        return {n: params[n] * keep[..., None].to(params[n].dtype) for n in self.names}

    def forward(self, z: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        s, t = self.args(params)
        log_det = z.new_zeros(z.shape[0])
        for k in range(s.shape[-2]):  # the layers given (a fit of a shorter flow passes fewer than K)
            z = z * torch.exp(s[..., k, :]) + t[..., k, :]
            log_det = log_det + s[..., k, :].sum(-1)
        return z, log_det

    def inverse(self, y: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        s, t = self.args(params)
        log_det = y.new_zeros(y.shape[0])
        for k in reversed(range(s.shape[-2])):
            y = (y - t[..., k, :]) * torch.exp(-s[..., k, :])
            log_det = log_det - s[..., k, :].sum(-1)
        return y, log_det


@pytest.fixture
def toy_flow(monkeypatch):
    """The toy type registered for one test (the registry is restored afterwards)."""
    monkeypatch.setattr(flows, "SPECS", dict(flows.SPECS))
    flows.register(ToyAffineSpec)
    return ToyAffineSpec.name


def test_register_refuses_a_second_type_under_a_taken_name(toy_flow):
    assert flows.register(ToyAffineSpec) is ToyAffineSpec  # the same class again: nothing changes
    other = type("Other", (ToyAffineSpec,), {"__module__": __name__})
    with pytest.raises(ValueError, match="already ToyAffineSpec"):
        flows.register(other)
    with pytest.raises(TypeError, match="FlowSpec subclass"):
        flows.register(dict)


def test_the_toy_flow_trains_as_a_dlgm_row_through_the_command_line(toy_flow, train_row):
    train_row(toy_flow)


def test_the_toy_flow_trains_as_2d_fits(toy_flow, fit_2d):
    assert toy_flow in E.FitConfig(methods=(toy_flow,)).methods  # a registered type is a 2-D method
    fit_2d(toy_flow)
