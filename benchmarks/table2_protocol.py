"""Milliseconds per update of the stored protocol (Table 2) on the CPU, and how to use two cores.

One update = what ``python -m flowbook train --mode stored`` does per step (:data:`flowbook.train.STORED`):
a minibatch of 100 binary images, forward, backward, and an Adam step with the cosine-decayed rate, for
each row of Table 2 (the diagonal Gaussian, planar and NICE with K = 10, 20, 40, 80). Three ways to
spend the machine's two cores, measured in one run:

* ``1 thread``: one process, one torch thread;
* ``2 threads``: one process, two torch threads;
* ``2 x 1 thread``: two one-thread processes training the same row at the same time (the stored runs'
  setting, ``.ci/stored_runs.sh``); each reports its own ms per update.

The throughput ratio ``2 x 1 thread`` / ``2 threads`` is (2 / ms_parallel) / (1 / ms_2threads): above 1,
two one-thread processes finish a table sooner than one two-thread process. Prints the cases, the
baseline (2 threads) and the ratio, and writes ``data/results/bench_table2_protocol.json``. Take it on a
quiet machine (no training in the background): the load average is recorded.

    python benchmarks/table2_protocol.py [--steps 60] [--warmup 15]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from flowbook.models import DLGM
from flowbook.results import save_result
from flowbook.train import STORED, build_model, make_optimizer

ROWS = [("planar", 0)] + [(f, K) for f in ("planar", "nice") for K in (10, 20, 40, 80)]


def time_row(flow: str, K: int, steps: int, warmup: int) -> float:
    """Median ms of one stored-protocol update of row (flow, K) in this process."""
    cfg = dataclasses.replace(STORED, rows=((flow, K),))
    model: DLGM = build_model(cfg)  # type: ignore[assignment]
    opt = make_optimizer(cfg, model.parameters())
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(100, 784, generator=g) < 0.13).float()
    times = []
    for t in range(warmup + steps):
        start = time.perf_counter()
        eps = torch.randn(100, 40, generator=g)
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(t)
        loss = model.loss(x, eps, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        if t >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def _child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    flow, K = args.row.split(":")
    print(json.dumps({"ms": time_row(flow, int(K), args.steps, args.warmup)}))


def _in_process(row: tuple[str, int], threads: int, steps: int, warmup: int, copies: int = 1) -> list[float]:
    """Run ``copies`` fresh processes at once, each timing ``row`` with ``threads`` threads."""
    cmd = [sys.executable, __file__, "--child", "--row", f"{row[0]}:{row[1]}", "--threads", str(threads),
           "--steps", str(steps), "--warmup", str(warmup)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1])["ms"] for p in procs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--row")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if args.child:
        return _child(args)
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}; stored protocol: {STORED.optimizer}, batch {STORED.batch_size}, "
          f"{STORED.updates} updates per row; load average {load:.1f}")
    print(f"{'row':<12}{'1 thread':>10}{'2 threads':>11}{'2 x 1 thread':>14}{'throughput 2x1 / 2thr':>23}")
    out = []
    for row in ROWS:
        one = _in_process(row, 1, args.steps, args.warmup)[0]
        two = _in_process(row, 2, args.steps, args.warmup)[0]
        par = statistics.mean(_in_process(row, 1, args.steps, args.warmup, copies=2))
        ratio = 2 * two / par
        name = "diagonal" if row[1] == 0 else f"{row[0]} K={row[1]}"
        print(f"{name:<12}{one:>10.1f}{two:>11.1f}{par:>14.1f}{ratio:>22.2f}x", flush=True)
        out.append({"flow": row[0], "K": row[1], "ms_1thread": round(one, 2), "ms_2threads": round(two, 2),
                    "ms_2x1thread": round(par, 2), "throughput_ratio": round(ratio, 2)})
    # projected CPU time of the whole table at the stored protocol's update count
    per_table_2thr = sum(r["ms_2threads"] for r in out) * STORED.updates / 3.6e6
    per_table_par = sum(r["ms_2x1thread"] for r in out) * STORED.updates / 3.6e6 / 2
    print(f"whole table ({len(out)} rows x {STORED.updates} updates, training only): one 2-thread process "
          f"{per_table_2thr:.2f} h; two 1-thread processes {per_table_par:.2f} h "
          f"({per_table_2thr / per_table_par:.2f}x)")
    if not args.no_save:
        path = save_result("bench_table2_protocol",
                           config={"steps": args.steps, "warmup": args.warmup, "load_avg_1min": round(load, 1),
                                   "protocol": {k: v for k, v in dataclasses.asdict(STORED).items() if k != "rows"}},
                           metrics={"rows": out, "table_hours_2threads": round(per_table_2thr, 3),
                                    "table_hours_2x1thread": round(per_table_par, 3)},
                           wall_time_s=time.perf_counter() - t0, device="cpu")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
