"""The command line of the 2-D experiment: ``python -m flowbook.experiments2d --mode full`` trains every fit
and writes ``data/results/energy2d_<mode>.json`` with provenance."""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, replace

import torch

from flowbook import energies
from flowbook.experiments2d.model import FAST, FULL, METHODS, fit_state, target_potential
from flowbook.experiments2d.training import run_experiment

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``python -m flowbook.experiments2d --mode full`` trains every fit and writes
    ``data/results/energy2d_<mode>.json`` (KL table, history summary and the fitted parameters of
    the K shown in the chapter's figures) with provenance."""
    from flowbook import results

    parser = argparse.ArgumentParser(description="Figure 3 of Rezende & Mohamed (2015), §6.1: the 2-D flow fits")
    parser.add_argument("--mode", choices=("fast", "full"), default="full")
    parser.add_argument("--updates", type=int, default=None, help="override the number of updates")
    parser.add_argument("--methods", nargs="*", default=None, choices=METHODS,
                        help="fit only these methods (e.g. to run planar/radial and NICE as two processes)")
    parser.add_argument("--Ks", type=int, nargs="*", default=None, help="override the flow lengths")
    parser.add_argument("--targets", nargs="*", default=None, choices=tuple(energies.POTENTIALS),
                        help="fit only these targets")
    parser.add_argument("--samples", type=int, default=None, help="override the samples per fit per update")
    parser.add_argument("--seed", type=int, default=None, help="override the seed (initialization and samples)")
    parser.add_argument("--nice-hidden", type=int, default=None, help="override the hidden units of NICE couplings")
    parser.add_argument("--checkpoints", type=int, nargs="*", default=[],
                        help="also evaluate the KL after these updates (convergence evidence)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the fits are overhead-bound)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default=None, help="result file name (default energy2d_<mode>)")
    parser.add_argument("--store-K", type=int, nargs="*", default=[2, 8, 32],
                        help="flow lengths whose fitted parameters are stored for the figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = FULL if args.mode == "full" else FAST
    if args.updates is not None:
        config = replace(config, updates=args.updates, warmup=min(config.warmup, args.updates // 2))
    if args.methods:
        config = replace(config, methods=tuple(args.methods))
    if args.Ks:
        config = replace(config, Ks=tuple(args.Ks))
    if args.targets:
        config = replace(config, targets=tuple(args.targets))
    if args.samples:
        config = replace(config, samples=args.samples)
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    if args.nice_hidden is not None:
        config = replace(config, nice_hidden=args.nice_hidden)
    start = time.perf_counter()
    record_every = max(config.updates // 100, 1)
    groups, rows, history = run_experiment(config, args.device, record_every, log=lambda s: print(s, flush=True),
                                           checkpoints=args.checkpoints)
    # the learning curve of each fit: F at β = 1 on the training samples, every record_every updates
    curves = {"step": history["step"], "F": {
        f"{t}/{m}/{K}": [round(rec[f], 4) for rec in history["F"][i]]
        for i, g in enumerate(groups) for f, (t, m, K) in enumerate(g.labels)}}
    wall = time.perf_counter() - start
    log_Z = {t: energies.log_normalizer(target_potential(t, config.confine_scale)) for t in config.targets}
    path = results.save_result(
        args.name or f"energy2d_{args.mode}",
        config={**asdict(config), "optimizer": f"Adam(lr {config.lr} decayed geometrically to {config.lr_final})",
                "loss": "sum over fits of the annealed free energy (eq. 15), beta_t = min(1, 0.01 + t/warmup)"},
        metrics={"log_Z": log_Z, "rows": rows, "checkpoints": history["checkpoints"],
                 "train_seconds": history["train_seconds"], "curves": curves,
                 "fits": [fit_state(g, f) for g in groups for f, lab in enumerate(g.labels) if lab[2] in args.store_K]},
        wall_time_s=wall, device=args.device)
    for r in rows:
        print(f"{r['method']:>9} K={r['K']:>2} {r['target']}: KL = {r['KL']:.4f} ± {r['se']:.4f}")
    print(f"wrote {path}")
