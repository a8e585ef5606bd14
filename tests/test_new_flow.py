"""A new flow type is one file: a spec defined here, outside the package, and registered with
:func:`flowbook.flows.register`, trains as a DLGM row through the command line and as 2-D fits through
:mod:`flowbook.experiments2d`, with no edit to flowbook."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import Tensor

from flowbook import experiments2d as E
from flowbook import flows, pretrained
from flowbook.__main__ import main as flowbook_main


@dataclass(frozen=True)
class ToyAffineSpec(flows.FlowSpec):
    """K element-wise affine layers f(z) = z·exp(c·s_k) + t_k, ln|det| = c·Σ s_k; s, t (K, D), both amortized;
    ``log_scale_gain`` = c is the type's own option."""

    log_scale_gain: float = 1.0

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
        s = s * self.log_scale_gain
        log_det = z.new_zeros(z.shape[0])
        for k in range(s.shape[-2]):  # the layers given (a fit of a shorter flow passes fewer than K)
            z = z * torch.exp(s[..., k, :]) + t[..., k, :]
            log_det = log_det + s[..., k, :].sum(-1)
        return z, log_det

    def inverse(self, y: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        s, t = self.args(params)
        s = s * self.log_scale_gain
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


def test_the_toy_flow_trains_as_a_dlgm_row_through_the_command_line(toy_flow, tmp_path):
    argv = ["train", "--flow", toy_flow, "--K", "2", "--hidden", "16", "--updates", "3", "--batch-size", "20",
            "--eval-points", "5", "--eval-samples", "2", "--no-progress", "--ckpt-dir", str(tmp_path / "ckpt"),
            "--out", str(tmp_path / "out"), "--weights-dir", str(tmp_path / "w"), "--flow-option", "log_scale_gain=0.5"]
    assert flowbook_main(argv) == 0
    record = json.loads((tmp_path / "out" / f"mnist_fast_{toy_flow}_K2.json").read_text())
    assert record["config"]["model"]["flow"] == toy_flow and record["config"]["updates_done"] == 3
    assert record["config"]["model"]["flow_options"] == [["log_scale_gain", 0.5]]
    assert record["config"]["train"]["flow_options"] == [["log_scale_gain", 0.5]]
    assert torch.isfinite(torch.tensor(record["metrics"]["neg_log_p"]))
    row = pretrained.load_file(tmp_path / "w" / f"mnist_fast_{toy_flow}_K2.pt")  # the option travels with the weights
    assert row.config.flow_spec() == ToyAffineSpec(40, 2, log_scale_gain=0.5)


@pytest.mark.parametrize("option, message", [
    ("scale=2", r"'scale' is not an option of the toyaffine flow \(toyaffine's options: log_scale_gain \(float\)\)"),
    ("log_scale_gain=big", "option log_scale_gain must be of type float, got 'big'"),
    ("log_scale_gain", "a flow option is KEY=VALUE")])
def test_a_wrong_flow_option_is_refused_with_the_flows_options(toy_flow, tmp_path, capsys, option, message):
    argv = ["train", "--flow", toy_flow, "--K", "2", "--flow-option", option, "--ckpt-dir", str(tmp_path / "c"),
            "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_:
        flowbook_main(argv)
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_the_toy_flow_trains_as_2d_fits(toy_flow, tmp_path):
    assert toy_flow in E.FitConfig(methods=(toy_flow,)).methods  # a registered type is a 2-D method
    argv = ["--mode", "fast", "--targets", "U1", "--methods", toy_flow, "--Ks", "1", "2", "--updates", "4",
            "--samples", "8", "--eval-samples", "200", "--out", str(tmp_path / "out"),
            "--ckpt-dir", str(tmp_path / "ck"), "--flow-option", "log_scale_gain=0.25", "--store-K", "2"]
    assert E.main(argv) == 0
    record = json.loads((tmp_path / "out" / "energy2d_fast.json").read_text())
    assert record["config"]["flow_options"] == [["log_scale_gain", 0.25]]
    stored = [E.fit_from_state(fit) for fit in record["metrics"]["fits"]]  # a stored fit comes back with its option
    assert stored and all(g.spec == ToyAffineSpec(2, 2, log_scale_gain=0.25) for g in stored)
    group = E.FitGroup(toy_flow, [("U1", toy_flow, 2)], flow_options=(("log_scale_gain", 0.25),))
    assert group.spec.log_scale_gain == 0.25
    rows = record["metrics"]["rows"]
    assert sorted((r["method"], r["K"]) for r in rows) == [(toy_flow, 1), (toy_flow, 2)]
    assert all(torch.isfinite(torch.tensor(r["KL"])) for r in rows)
