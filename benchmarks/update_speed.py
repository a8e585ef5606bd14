"""Milliseconds per update of Table 2's stored protocol with each Adam implementation and each form of the
Bernoulli likelihood, against the update's matrix products alone (one torch thread, the setting of the stored
runs); and the importance-sampled evaluation with each form of the likelihood.

One update = a minibatch of 100 binary images, forward, backward and an Adam step
(:data:`flowbook.train.STORED`). The cases, timed in turns within each round so that a slow phase of the
shared machine hits them alike:

* ``for-loop`` (the baseline, what ``torch.optim.Adam`` runs on a CPU by default): one small kernel after
  another for every parameter tensor; the likelihood through torch's ``binary_cross_entropy_with_logits``;
* ``foreach``: the same arithmetic on lists of tensors (``foreach=True``);
* ``fused``: the whole step in one kernel (``fused=True``);
* ``fused+ll``: the fused step and flowbook's closed-form likelihood
  (:func:`flowbook.models.bernoulli_log_likelihood`: ``log`` instead of torch's ``log1p``, which is not
  vectorized on the CPU, and the gradient x − σ(l) in one step).

The matrix products' share of an update is read from ``torch.profiler`` (self time of ``aten::addmm``,
``aten::mm`` and ``aten::bmm``, over the profiled update's total), and turned into milliseconds with the
baseline's time. The evaluation case: S = 1000 importance samples (:func:`flowbook.evaluation.point_bounds`,
the stored evaluation's chunk) of 100 digits, torch's likelihood against flowbook's, in turns. Prints, per
row, each case's ms per update, its ratio to the baseline and to the products' time, and the evaluation's
seconds both ways; writes ``data/results/bench_update_speed.json``. Take it with no training in the
background.

    python benchmarks/update_speed.py [--rounds 20] [--steps 10]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from flowbook import models
from flowbook.evaluation import point_bounds
from flowbook.results import save_result
from flowbook.train import STORED, build_model

ROWS = [("planar", 0), ("planar", 10), ("planar", 80), ("nice", 80)]
# case: (Adam's options, the likelihood: "torch" or flowbook's "closed" form)
CASES = {"for-loop": ({"foreach": False}, "torch"), "foreach": ({"foreach": True}, "torch"),
         "fused": ({"fused": True}, "torch"), "fused+ll": ({"fused": True}, "closed")}
PRODUCTS = ("aten::addmm", "aten::mm", "aten::bmm")


def _setup(flow: str, K: int, options: dict) -> tuple:
    cfg = dataclasses.replace(STORED, rows=((flow, K),))
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, **options)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(100, 784, generator=g) < 0.13).float()
    return model, opt, x, g


def torch_bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The likelihood as flowbook computed it before: torch's binary cross-entropy (``log1p`` inside)."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)


@contextlib.contextmanager
def likelihood(kind: str) -> Iterator[None]:
    """Within the block the models compute the Bernoulli likelihood the ``kind`` way."""
    closed = models.bernoulli_log_likelihood
    models.bernoulli_log_likelihood = closed if kind == "closed" else torch_bernoulli_log_likelihood
    try:
        yield
    finally:
        models.bernoulli_log_likelihood = closed


def one_update(model, opt, x, g) -> None:
    """One stored-protocol update: fresh noise, the loss at β = 1, backward, the optimizer's step."""
    eps = torch.randn(100, 40, generator=g)
    loss = model.loss(x, eps, 1.0)
    opt.zero_grad(set_to_none=True)
    loss.sum().backward()
    opt.step()


def products_share(flow: str, K: int, steps: int = 5) -> float:
    """The matrix products' fraction of an update's CPU time, from the profiler."""
    options, kind = CASES["for-loop"]
    state = _setup(flow, K, options)
    with likelihood(kind):
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
    states = {name: _setup(flow, K, options) for name, (options, _) in CASES.items()}
    for name, state in states.items():
        with likelihood(CASES[name][1]):
            for _ in range(3):
                one_update(*state)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(rounds):
        for name, state in states.items():
            with likelihood(CASES[name][1]):
                start = time.perf_counter()
                for _ in range(steps):
                    one_update(*state)
                times[name].append(1000 * (time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def time_evaluation(flow: str, K: int, rounds: int, samples: int = 1000) -> dict[str, float]:
    """Median seconds of S = ``samples`` importance samples of 100 digits (the stored evaluation's batch
    and chunk), with each likelihood in turns, and the largest difference in −ln p(x) between them."""
    model, _, x, _ = _setup(flow, K, {})
    times: dict[str, list[float]] = {"torch": [], "closed": []}
    values = {}
    for _ in range(rounds):
        for kind in times:
            with likelihood(kind):
                start = time.perf_counter()
                values[kind] = point_bounds(model, x, samples, torch.Generator().manual_seed(1), 200)[1]
                times[kind].append(time.perf_counter() - start)
    return {**{kind: statistics.median(t) for kind, t in times.items()},
            "max_abs_diff_neg_log_p": float((values["torch"] - values["closed"]).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eval-rounds", type=int, default=3)
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
        table[row]["evaluation_s"] = ev = time_evaluation(flow, K, args.eval_rounds)
        print(f"{row:10s} S = 1000 on 100 digits: torch's likelihood {ev['torch']:.2f} s, flowbook's "
              f"{ev['closed']:.2f} s, {ev['torch'] / ev['closed']:.2f}x; −ln p(x) differs by at most "
              f"{ev['max_abs_diff_neg_log_p']:.1e}")
    save_result("bench_update_speed", config={"rows": ROWS, "cases": CASES, "rounds": args.rounds,
                                              "steps": args.steps, "eval_rounds": args.eval_rounds,
                                              "eval_samples": 1000, "threads": 1,
                                              "load_average": os.getloadavg()},
                metrics=table, wall_time_s=time.perf_counter() - t0, device="cpu")


if __name__ == "__main__":
    main()
