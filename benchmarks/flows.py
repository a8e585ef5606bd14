"""Milliseconds per training step of flowbook's flows against a plain per-layer ``nn.Module`` loop.

A step is forward + log-det + backward of ``loss = Σ z_K² − Σ log_det`` on one torch thread. Three
cases (the project's issue 2):

  (a) planar, K=32, dim 2, batch 1024, shared parameters (the 2-D fits of §6.1);
  (b) radial, K=32, dim 2, batch 1024, shared parameters;
  (c) amortized planar, K=80, dim 40, batch 100: per-example u, w, b of shape (batch, K, ·) as an
      encoder emits them (§4.2, the DLGM of §6.2); z and the parameters all require gradients.

Each case times the baseline (written here: one module per layer, each constraining its own
parameters and returning its own log-det term, looped in Python — what one writes first), flowbook's
readable reference (:func:`flowbook.flows.planar` / :func:`~flowbook.flows.radial`) and, for the
planar cases, the hand-differentiated :func:`flowbook.kernels.fused.planar_chain` (``flows.planar_chain``
with ``impl="fused"`` or ``"native"``): its PyTorch loop ("fused") and, for the per-example case (c),
its compiled C kernel ("compiled", what the DLGM uses on a CPU;
skipped with a note where no C compiler is found). The machines are shared and
noisy, so the implementations are measured in turn, round after round, and each reports the median
over rounds of the mean step time within a round (wall time, and the thread's CPU time, which
leaves out waiting for a core); the ratios come from the same run.

Run: ``.venv/bin/python benchmarks/flows.py`` (about a minute; ``--rounds 5`` for a quick look).
The output is also written to ``data/results/bench_flows.json`` with provenance.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowbook import flows
from flowbook.kernels import native
from flowbook.kernels.fused import planar_chain
from flowbook.results import save_result


# ----------------------------------------------------------------------------------------------
# baselines: a plain per-layer loop
# ----------------------------------------------------------------------------------------------
def _planar_layer(z: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """One planar layer with its own constraint (Appendix A) and log-det term (eq. 12)."""
    wu = (w * u).sum(-1, keepdim=True)
    u_hat = u + (F.softplus(wu) - 1.0 - wu) * w / (w * w).sum(-1, keepdim=True)
    a = (z * w).sum(-1) + b
    t = torch.tanh(a)
    z = z + u_hat * t.unsqueeze(-1)
    log_det = torch.log((1.0 + (1.0 - t * t) * (w * u_hat).sum(-1)).abs())
    return z, log_det


class PlanarLayer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.u = nn.Parameter(torch.randn(dim) / dim ** 0.5)
        self.w = nn.Parameter(torch.randn(dim) / dim ** 0.5)
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return _planar_layer(z, self.u, self.w, self.b)


class RadialLayer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.z0 = nn.Parameter(torch.randn(dim))
        self.alpha = nn.Parameter(torch.zeros(()))
        self.beta = nn.Parameter(torch.zeros(()))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        alpha = F.softplus(self.alpha)
        beta = -alpha + F.softplus(self.beta)
        diff = z - self.z0
        r = torch.linalg.vector_norm(diff, dim=-1)
        h = 1.0 / (alpha + r)
        z = z + (beta * h).unsqueeze(-1) * diff
        bh = beta * h
        log_det = (self.dim - 1) * torch.log1p(bh) + torch.log1p(bh - beta * h * h * r)
        return z, log_det


class Chain(nn.Module):
    """Layers applied in order, log-dets summed."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        total = 0.0
        for layer in self.layers:
            z, ld = layer(z)
            total = total + ld
        return z, total


class AmortizedPlanarLayer(nn.Module):
    """A planar layer whose parameters are inputs (one set per example), as in a DLGM's encoder head."""

    def forward(self, z: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return _planar_layer(z, u, w, b)


def amortized_baseline(layers: list[nn.Module], z: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    total = 0.0
    # unbind, not u[:, k]: indexing inside the loop would make the backward O(K²) (see PERF.md)
    for layer, u_k, w_k, b_k in zip(layers, u.unbind(1), w.unbind(1), b.unbind(1)):
        z, ld = layer(z, u_k, w_k, b_k)
        total = total + ld
    return z, total


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
def make_step(forward: Callable[[], tuple[Tensor, Tensor]], leaves: list[Tensor]) -> Callable[[], None]:
    def step() -> None:
        z, log_det = forward()
        (z.square().sum() - log_det.sum()).backward()
        for p in leaves:
            p.grad = None
    return step


def compare(steps: dict[str, Callable[[], None]], rounds: int, per_round: int,
            warmup: int) -> dict[str, tuple[float, float]]:
    """(wall, cpu) ms per step for each implementation: medians over rounds of the mean within a round.

    The implementations take turns within each round, so slow phases of a shared machine hit them
    alike. The thread's CPU time is reported beside the wall time: it leaves out the time the
    process waits for a core, which dominates wall time when other jobs load the machine.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(per_round):
                step()
            wall[name].append((time.perf_counter() - t0) / per_round * 1e3)
            cpu[name].append((time.thread_time() - c0) / per_round * 1e3)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in steps}


def case_planar(batch: int = 1024, dim: int = 2, K: int = 32) -> dict[str, Callable[[], None]]:
    z = torch.randn(batch, dim)
    base = Chain([PlanarLayer(dim) for _ in range(K)])
    ref = flows.Planar(dim, K, impl="autograd")
    fused = flows.Planar(dim, K, impl="auto")
    fused.load_state_dict(ref.state_dict())
    return {"baseline": make_step(lambda: base(z), list(base.parameters())),
            "flowbook reference": make_step(lambda: ref(z), list(ref.parameters())),
            "flowbook fused": make_step(lambda: fused(z), list(fused.parameters()))}


def case_radial(batch: int = 1024, dim: int = 2, K: int = 32) -> dict[str, Callable[[], None]]:
    z = torch.randn(batch, dim)
    base = Chain([RadialLayer(dim) for _ in range(K)])
    ref = flows.Radial(dim, K)
    return {"baseline": make_step(lambda: base(z), list(base.parameters())),
            "flowbook reference": make_step(lambda: ref(z), list(ref.parameters()))}


def case_amortized(batch: int = 100, dim: int = 40, K: int = 80) -> dict[str, Callable[[], None]]:
    z = torch.randn(batch, dim, requires_grad=True)
    u = (torch.randn(batch, K, dim) / dim ** 0.5).requires_grad_()
    w = (torch.randn(batch, K, dim) / dim ** 0.5).requires_grad_()
    b = torch.zeros(batch, K, requires_grad=True)
    layers = [AmortizedPlanarLayer() for _ in range(K)]
    leaves = [z, u, w, b]
    steps = {"baseline": make_step(lambda: amortized_baseline(layers, z, u, w, b), leaves),
             "flowbook reference": make_step(lambda: flows.planar(z, u, w, b), leaves),
             "flowbook fused": make_step(lambda: planar_chain(z, u, w, b, compiled=False), leaves)}
    if native.load("planar_chain", "float32") is not None:
        steps["flowbook compiled"] = make_step(lambda: planar_chain(z, u, w, b, compiled=True), leaves)
    return steps


CASES = {
    "(a) planar, K=32, dim 2, batch 1024": case_planar,
    "(b) radial, K=32, dim 2, batch 1024": case_radial,
    "(c) amortized planar, K=80, dim 40, batch 100": case_amortized,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds of interleaved measurement")
    parser.add_argument("--per-round", type=int, default=5, help="steps per implementation per round")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per implementation")
    parser.add_argument("--no-save", action="store_true", help="do not write data/results/bench_flows.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(native.status("planar_chain", "float32"))
    started = time.perf_counter()
    metrics: dict[str, dict[str, float]] = {}
    print(f"ms per step (forward + log-det + backward), 1 thread, median of {args.rounds} rounds; "
          "speed-up = baseline / this, wall time (CPU time)")
    for case, build in CASES.items():
        ms = compare(build(), args.rounds, args.per_round, args.warmup)
        base_wall, base_cpu = ms["baseline"]
        print(case)
        row: dict[str, float] = {}
        for name, (t_wall, t_cpu) in ms.items():
            key = name.replace("flowbook ", "")
            line = f"    {name:20s} {t_wall:8.2f} ms ({t_cpu:6.2f} ms CPU)"
            row[f"{key}_ms"], row[f"{key}_cpu_ms"] = round(t_wall, 3), round(t_cpu, 3)
            if name != "baseline":
                line += f"   speed-up {base_wall / t_wall:5.2f}x ({base_cpu / t_cpu:5.2f}x)"
                row[f"{key}_speedup"] = round(base_wall / t_wall, 3)
                row[f"{key}_cpu_speedup"] = round(base_cpu / t_cpu, 3)
            print(line)
        metrics[case] = row
    if not args.no_save:
        path = save_result("bench_flows", config={"rounds": args.rounds, "per_round": args.per_round,
                                                  "warmup": args.warmup, "threads": 1,
                                                  "kernel": native.status("planar_chain", "float32")},
                           metrics=metrics, wall_time_s=time.perf_counter() - started, device="cpu")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
