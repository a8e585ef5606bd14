"""Milliseconds per update of Table 2's stored protocol with the flows that came after (chapter 8), against
planar at the same head cost, on one torch thread (the setting of the stored runs).

One update = a minibatch of 100 binary images, forward, backward and a fused Adam step
(:data:`flowbook.train.STORED`, the stages' optimizer). The rows are planar K = 10, 20, 40, 80 and, for each,
the depth K' of every later flow whose head emits the closest to as many outputs per digit (chapter 8,
section 6, :func:`matched_depth`: Householder with 2 reflections K' = 10, 20, 40, 81; Sylvester-H with M = 8
units and 8 reflections K' = K / 5; Sylvester-T K' = 1, 1, 2, 4; IAF with H = 64 hidden units
K' = 13, 25, 51, 101). All rows of one planar K
are timed in turns within each round, so that a slow phase of the shared machine hits them alike; the
figure is the median over rounds of the mean ms per update in a round, and the ratio to planar at that K
is the number to read. Writes ``data/results/bench_later_flows.json``. Take it with no training in the
background (pause it: ``kill -STOP``), the load average is recorded.

    python benchmarks/later_flows.py [--rounds 8] [--steps 5]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from typing import Any

import torch

from flowbook import flows
from flowbook.results import save_result
from flowbook.train import STORED, build_model, make_optimizer
from update_speed import one_update  # the same update as the Adam benchmark (this script's folder is on the path)

PLANAR_KS = (10, 20, 40, 80)
LATER: tuple[tuple[str, dict[str, Any]], ...] = (
    ("householder", {}), ("sylvester-h", {"units": 8, "reflections": 8}), ("sylvester-t", {}), ("iaf", {"hidden": 64}))


def matched_depth(flow: str, options: dict[str, Any], K: int) -> int:
    """Chapter 8's rule: the depth K' (at least 1) whose head emits the closest to planar K's outputs."""
    per_layer = flows.spec_for(flow, 40, 1, **options).head_size_per_layer()
    return max(1, round(flows.spec_for("planar", 40, K).head_size() / per_layer))


def _setup(flow: str, K: int, options: dict[str, Any]) -> tuple:
    cfg = dataclasses.replace(STORED, rows=((flow, K),), flow_options=flows.as_options(options), fused=True)
    model = build_model(cfg)
    opt = make_optimizer(cfg, model.parameters())
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(100, 784, generator=g) < 0.13).float()
    head = flows.spec_for(flow, 40, K, **options).head_size()
    return (model, opt, x, g), head


def time_group(rows: list[tuple[str, int, dict[str, Any]]], rounds: int, steps: int) -> list[float]:
    """Median over rounds of each row's mean ms per update, the rows taking turns within a round."""
    states = [_setup(flow, K, options)[0] for flow, K, options in rows]
    for state in states:
        for _ in range(3):
            one_update(*state)
    times: list[list[float]] = [[] for _ in rows]
    for _ in range(rounds):
        for i, state in enumerate(states):
            start = time.perf_counter()
            for _ in range(steps):
                one_update(*state)
            times[i].append(1000 * (time.perf_counter() - start) / steps)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0, load = time.perf_counter(), os.getloadavg()[0]
    print(f"stored protocol, fused Adam, batch {STORED.batch_size}, 1 thread; load average {load:.1f}")
    print(f"{'flow':<13}{'options':<26}{'K':>5}{'head':>7}{'ms/update':>11}{'vs planar':>11}")
    out = []
    for K in PLANAR_KS:
        rows = [("planar", K, {})] + [(flow, matched_depth(flow, options, K), options) for flow, options in LATER]
        ms = time_group(rows, args.rounds, args.steps)
        for (flow, depth, options), value in zip(rows, ms):
            head = flows.spec_for(flow, 40, depth, **options).head_size()
            text = ", ".join(f"{k}={v}" for k, v in options.items())
            print(f"{flow:<13}{text:<26}{depth:>5}{head:>7}{value:>11.2f}{value / ms[0]:>10.2f}x", flush=True)
            out.append({"flow": flow, "options": options, "K": depth, "planar_K": K, "head_outputs": head,
                        "ms": round(value, 2), "ratio_to_planar": round(value / ms[0], 3)})
    if not args.no_save:
        path = save_result("bench_later_flows",
                           config={"rounds": args.rounds, "steps": args.steps, "threads": 1,
                                   "load_avg_1min": round(load, 1), "optimizer": "adam (fused)"},
                           metrics={"rows": out}, wall_time_s=time.perf_counter() - t0, device="cpu")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
