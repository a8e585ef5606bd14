"""The benchmarks' own logic (their timings are runs, stored in data/results/, not tests)."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    # a benchmark imports its neighbours as a script does: its folder on the path
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def later_flows():
    return _load("later_flows")


@pytest.mark.parametrize("flow, options, depths", [
    ("householder", {}, (10, 20, 40, 81)),                                 # 80 outputs a layer against 81
    ("sylvester-h", {"units": 8, "reflections": 8}, (2, 4, 8, 16)),        # 400 a layer
    ("sylvester-t", {}, (1, 1, 2, 4)),                                     # 1680: at least one layer
    ("iaf", {"hidden": 64}, (13, 25, 51, 101)),                            # 64 a step
])
def test_matched_depths_are_chapter_8s(later_flows, flow, options, depths) -> None:
    assert tuple(later_flows.matched_depth(flow, options, K) for K in later_flows.PLANAR_KS) == depths


def test_time_group_times_every_row(later_flows) -> None:
    ms = later_flows.time_group([("planar", 2, {}), ("sylvester-h", 1, {"units": 2, "reflections": 2})],
                                rounds=1, steps=1)
    assert len(ms) == 2 and all(math.isfinite(v) and v > 0 for v in ms)
