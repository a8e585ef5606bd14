"""Milliseconds per update of Table 2's stored protocol with each Adam implementation, against the update's
matrix products alone (one torch thread, the setting of the stored runs).

One update = a minibatch of 100 binary images, forward, backward and an Adam step
(:data:`flowbook.train.STORED`). The cases, timed in turns within each round so that a slow phase of the
shared machine hits them alike:

* ``for-loop`` (the baseline, what ``torch.optim.Adam`` runs on a CPU by default): one small kernel after
  another for every parameter tensor;
* ``foreach``: the same arithmetic on lists of tensors (``foreach=True``);
* ``fused``: the whole step in one kernel (``fused=True``).

The matrix products' share of an update is read from ``torch.profiler`` (self time of ``aten::addmm``,
``aten::mm`` and ``aten::bmm``, over the profiled update's total), and turned into milliseconds with the
baseline's time. Prints, per row, each case's ms per update, its ratio to the baseline and its ratio to the
products' time; writes ``data/results/bench_update_speed.json``. Take it with no training in the background.

    python benchmarks/update_speed.py [--rounds 20] [--steps 10]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from flowbook.results import save_result
from flowbook.train import STORED, build_model

ROWS = [("planar", 0), ("planar", 10), ("planar", 80), ("nice", 80)]
CASES = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
PRODUCTS = ("aten::addmm", "aten::mm", "aten::bmm")


def _setup(flow: str, K: int, options: dict) -> tuple:
    cfg = dataclasses.replace(STORED, rows=((flow, K),))
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, **options)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(100, 784, generator=g) < 0.13).float()
    return model, opt, x, g


def one_update(model, opt, x, g) -> None:
    """One stored-protocol update: fresh noise, the loss at β = 1, backward, the optimizer's step."""
    eps = torch.randn(100, 40, generator=g)
    loss = model.loss(x, eps, 1.0)
    opt.zero_grad(set_to_none=True)
    loss.sum().backward()
    opt.step()


def products_share(flow: str, K: int, steps: int = 5) -> float:
    """The matrix products' fraction of an update's CPU time, from the profiler."""
    state = _setup(flow, K, CASES["for-loop"])
    for _ in range(3):
        one_update(*state)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            one_update(*state)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in PRODUCTS) / total


def time_row(flow: str, K: int, rounds: int, steps: int) -> dict[str, float]:
    """Median over rounds of each case's mean ms per update, the cases taking turns within a round."""
    states = {name: _setup(flow, K, options) for name, options in CASES.items()}
    for state in states.values():
        for _ in range(3):
            one_update(*state)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(rounds):
        for name, state in states.items():
            start = time.perf_counter()
            for _ in range(steps):
                one_update(*state)
            times[name].append(1000 * (time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    table = {}
    print(f"{'row':10s} {'case':9s} {'ms/update':>9s} {'vs for-loop':>11s} {'vs products':>11s}")
    for flow, K in ROWS:
        row = "diagonal" if K == 0 else f"{flow} {K}"
        ms = time_row(flow, K, args.rounds, args.steps)
        products_ms = products_share(flow, K) * ms["for-loop"]
        table[row] = {"ms": ms, "products_ms": products_ms}
        for name, value in ms.items():
            print(f"{row:10s} {name:9s} {value:9.2f} {ms['for-loop'] / value:10.2f}x {value / products_ms:10.2f}x")
        print(f"{row:10s} {'products':9s} {products_ms:9.2f}")
    save_result("bench_update_speed", config={"rows": ROWS, "cases": CASES, "rounds": args.rounds,
                                              "steps": args.steps, "threads": 1,
                                              "load_average": os.getloadavg()},
                metrics=table, wall_time_s=time.perf_counter() - t0, device="cpu")


if __name__ == "__main__":
    main()
