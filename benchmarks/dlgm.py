"""Milliseconds per DLGM training update on the CPU: flowbook against a straightforward loop.

One update = minibatch of 100 binarized-MNIST-like images, forward, backward, RMSprop step, for the
model of ``flowbook.models`` (two maxout layers of 400 pre-activations → 100 outputs in the encoder and
decoder, 40 latents, amortized planar flow with K layers). Three implementations of the flow, in the
same process, interleaved step by step so that a busy machine slows them alike:

* ``baseline``: the straightforward per-layer loop — each layer constrains its own û, indexes its
  parameters as ``u[:, k]`` and lets autograd record everything;
* ``reference``: :func:`flowbook.flows.planar` (û for all layers at once, ``unbind``);
* ``flowbook``: what :class:`flowbook.models.DLGM` uses: ``flowbook.flows.planar_chain(impl="auto")``, an
  analytic backward for the chain, run by its compiled C kernel on a CPU (``flowbook.kernels.native``).

Also: the rows K = 0, 10, 20, 40, 80 trained together in one :class:`MultiDLGM` against the sum of
their separate updates. Prints a table with ratios and writes ``data/results/bench_dlgm.json``.

    python benchmarks/dlgm.py [--steps 40] [--warmup 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from flowbook import flows
from flowbook.kernels import native
from flowbook.models import DLGM, DLGMConfig, MultiDLGM
from flowbook.results import save_result


class LoopDLGM(DLGM):
    """The same model with the flow written as a textbook per-layer loop (the baseline)."""

    def flow(self, z, params):
        if not self.config.K:
            return z, z.new_zeros(z.shape[0])
        u, w, b = params
        log_det = z.new_zeros(z.shape[0])
        for k in range(self.config.K):
            u_k, w_k, b_k = u[:, k], w[:, k], b[:, k]
            wu = (w_k * u_k).sum(-1, keepdim=True)
            u_hat = u_k + (F.softplus(wu) - 1 - wu) * w_k / (w_k * w_k).sum(-1, keepdim=True)
            a = (z * w_k).sum(-1) + b_k
            z = z + u_hat * torch.tanh(a).unsqueeze(-1)
            psi_u = (1 - torch.tanh(a) ** 2) * (w_k * u_hat).sum(-1)
            log_det = log_det + torch.log((1 + psi_u).abs())
        return z, log_det


class ReferenceDLGM(DLGM):
    def flow(self, z, params):
        return flows.planar(z, *params) if self.config.K else (z, z.new_zeros(z.shape[0]))


def make_step(model, x, eps):
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-5, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        model.loss(x, eps, 0.5).sum().backward()
        opt.step()
    return step


def time_interleaved(steps: dict, n: int, warmup: int) -> dict[str, float]:
    """Median ms of each step function, measured round-robin so load changes hit them alike."""
    for f in steps.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in steps}
    for _ in range(n):
        for k, f in steps.items():
            t = time.perf_counter()
            f()
            times[k].append(1000 * (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--Ks", default="0,10,20,40,80")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(100, 784, generator=g) < 0.13).float()
    eps = torch.randn(100, 40, generator=g)
    Ks = [int(k) for k in args.Ks.split(",")]
    t0 = time.perf_counter()
    rows = []
    print(f"torch {torch.__version__}, {args.threads} threads; flowbook's planar chain: {flows.planar_impl()}; "
          f"{native.status('planar_chain', 'float32')}")
    print(f"{'K':>3} {'baseline ms':>12} {'reference ms':>13} {'flowbook ms':>12} {'baseline/flowbook':>18}")
    for K in Ks:
        c = DLGMConfig(flow="planar", K=K)
        ms = time_interleaved({"baseline": make_step(LoopDLGM(c), x, eps),
                               "reference": make_step(ReferenceDLGM(c), x, eps),
                               "flowbook": make_step(DLGM(c), x, eps)}, args.steps, args.warmup)
        rows.append({"K": K, **{f"{k}_ms": round(v, 2) for k, v in ms.items()},
                     "ratio": round(ms["baseline"] / ms["flowbook"], 2)})
        print(f"{K:>3} {ms['baseline']:>12.1f} {ms['reference']:>13.1f} {ms['flowbook']:>12.1f} "
              f"{ms['baseline'] / ms['flowbook']:>17.2f}x", flush=True)
    # all rows in one process: one MultiDLGM update against the sum of separate updates
    configs = [DLGMConfig(flow="planar", K=K) for K in Ks]
    singles = {f"K{c.K}": make_step(DLGM(c), x, eps) for c in configs}
    multi = make_step(MultiDLGM(configs), x, eps)
    ms = time_interleaved({"multi": multi, **singles}, max(10, args.steps // 2), args.warmup // 2)
    separate = sum(v for k, v in ms.items() if k != "multi")
    batched = {"rows": Ks, "batched_ms": round(ms["multi"], 2), "separate_sum_ms": round(separate, 2),
               "ratio": round(separate / ms["multi"], 2)}
    print(f"rows K={Ks} together: {ms['multi']:.1f} ms per update of all rows; "
          f"separately {separate:.1f} ms in total ({separate / ms['multi']:.2f}x)")
    k0 = next((r for r in rows if r["K"] == 0), None)
    k80 = next((r for r in rows if r["K"] == 80), None)
    if k0 and k80:
        print(f"K=80 / K=0: baseline {k80['baseline_ms'] / k0['baseline_ms']:.2f}, "
              f"flowbook {k80['flowbook_ms'] / k0['flowbook_ms']:.2f}")
    if not args.no_save:
        # the machine's load average says how far the absolute numbers are from a quiet machine's
        path = save_result("bench_dlgm", config={"threads": args.threads, "steps": args.steps, "warmup": args.warmup,
                                                 "load_avg_1min": round(os.getloadavg()[0], 1),
                                                 "batch": 100, "latent": 40, "maxout_units": "pre_activations",
                                                 "hidden": 400, "optimizer": "RMSprop",
                                                 "planar_impl": flows.planar_impl(),
                                                 "kernel": native.status("planar_chain", "float32")},
                           metrics={"per_K": rows, "batched_rows": batched},
                           wall_time_s=time.perf_counter() - t0, device="cpu")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
