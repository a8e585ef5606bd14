"""The command line of the 2-D experiment, a configuration of the runner (:mod:`flowbook.runner`):
``python -m flowbook.experiments2d --mode full`` trains every fit and writes ``data/results/energy2d_<mode>.json``
(or ``--name``) with provenance.

Every option is checked before any work: a value out of range ends the command with one line naming the
option and its range, and exit status 2. A stored result of another configuration under the same name is
refused (exit 2) unless ``--overwrite``. Training checkpoints to ``--ckpt-dir``; with ``--max-minutes`` it
stops after checkpointing with exit status 3, and the same command resumes and ends with the numbers of an
uninterrupted run. A checkpoint of another configuration is refused with its path and the fix
(``--restart``).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

from flowbook import energies, flows, runner
from flowbook.checkpoints import CheckpointError, open_checkpoint
from flowbook.experiments2d.model import FAST, FULL, FitConfig, fit_state, target_potential
from flowbook.experiments2d.training import CHECKPOINT_KEYS, Checkpointing, run_experiment
from flowbook.options import (MAX_K, MAX_SEED, OptionError, add_flow_option_argument, check_device, check_float,
                              check_int, check_label, check_writable_dir, flow_options_from_args, parse_checked)

__all__ = ["MAX_SAMPLES", "MAX_HIDDEN", "MAX_EVAL_SAMPLES", "main"]

#: Most samples per fit per update: the stored runs use 256 and 512; a million already holds every
#: fit's flow graph of a full run in tens of GB, so more is almost surely a typo.
MAX_SAMPLES = 1_000_000
#: Most hidden units of a NICE coupling (the stored runs use 1 and 64).
MAX_HIDDEN = 4096
#: Most samples of each fit's reported F and KL (the stored runs use 100 000; they go in chunks).
MAX_EVAL_SAMPLES = 100_000_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flowbook.experiments2d",
                                     description="Figure 3 of Rezende & Mohamed (2015), §6.1: the 2-D flow fits")
    parser.add_argument("--mode", choices=("fast", "full"), default="full")
    parser.add_argument("--updates", type=int, default=None, help="override the number of updates")
    parser.add_argument("--methods", nargs="*", default=None, choices=tuple(flows.variants()),
                        help="fit only these methods (e.g. to run planar/radial and NICE as two processes)")
    parser.add_argument("--Ks", type=int, nargs="*", default=None, help="override the flow lengths")
    parser.add_argument("--targets", nargs="*", default=None, choices=tuple(energies.POTENTIALS),
                        help="fit only these targets")
    parser.add_argument("--samples", type=int, default=None, help="override the samples per fit per update")
    parser.add_argument("--seed", type=int, default=None, help="override the seed (initialization and samples)")
    parser.add_argument("--nice-hidden", type=int, default=None, help="override the hidden units of NICE couplings")
    parser.add_argument("--eval-samples", dest="eval_samples", type=int, default=None,
                        help="override the samples of each fit's reported F and KL")
    add_flow_option_argument(parser)
    parser.add_argument("--checkpoints", type=int, nargs="*", default=[],
                        help="also evaluate the KL after these updates (convergence evidence)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the fits are overhead-bound)")
    # cpu, not auto: the fits are bound by Python overhead, and the stored numbers are the CPU's
    parser.add_argument("--device", default="cpu", help="cpu, auto (CUDA when present), cuda, cuda:1, ...")
    parser.add_argument("--name", default=None, help="result file name (default energy2d_<mode>)")
    parser.add_argument("--store-K", type=int, nargs="*", default=[2, 8, 32],
                        help="flow lengths whose fitted parameters are stored for the figures")
    parser.add_argument("--out", default="data/results", help="directory of the result JSON file")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a stored result of another configuration with the same name")
    parser.add_argument("--ckpt-dir", dest="ckpt_dir", default="data/checkpoints/energy2d")
    parser.add_argument("--ckpt-every", dest="ckpt_every", type=int, default=1000, help="updates between checkpoints")
    parser.add_argument("--max-minutes", dest="max_minutes", type=float,
                        help="checkpoint and stop (exit status 3) after this much training time; run again to resume")
    parser.add_argument("--restart", action="store_true",
                        help="delete this configuration's checkpoint (e.g. a damaged one) and start over")
    return parser


def _config(args: argparse.Namespace) -> FitConfig:
    """The mode's preset with the options given (``--updates`` shortens the annealing to at most half)."""
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
    if args.eval_samples is not None:
        config = replace(config, eval_samples=args.eval_samples)
    if args.flow_options:
        known = flows.variants()
        config = replace(config, flow_options=flow_options_from_args(args, [known[m][0] for m in config.methods]))
    return config


def _check(args: argparse.Namespace) -> None:
    """Refuse out-of-range options before any work (:class:`flowbook.options.OptionError`)."""
    check_int("--updates", args.updates, 1)
    for K in args.Ks or ():
        check_int("--Ks", K, 1, MAX_K, " (the paper's longest 2-D flow is 32)")
    check_int("--samples", args.samples, 2, MAX_SAMPLES, " (two at least: the standard error needs them)")
    check_int("--seed", args.seed, 0, MAX_SEED)
    check_int("--nice-hidden", args.nice_hidden, 1, MAX_HIDDEN)
    check_int("--eval-samples", args.eval_samples, 2, MAX_EVAL_SAMPLES,
              " (two at least: the standard error needs them)")
    updates = args.updates or (FULL if args.mode == "full" else FAST).updates
    for t in args.checkpoints:
        check_int("--checkpoints", t, 1, updates - 1, " (updates before the last; the end is always evaluated)")
    for K in args.store_K:
        check_int("--store-K", K, 1, MAX_K)
    check_int("--threads", args.threads, 1)
    check_device("--device", args.device)
    check_label("--name", args.name)
    check_int("--ckpt-every", args.ckpt_every, 1)
    check_float("--max-minutes", args.max_minutes, 0.0)
    check_writable_dir("--ckpt-dir", args.ckpt_dir)
    check_writable_dir("--out", args.out)
    try:
        _config(args)
    except ValueError as err:
        raise OptionError(f"invalid options: {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m flowbook.experiments2d --mode full`` trains every fit and writes
    ``data/results/energy2d_<mode>.json`` (KL table, history summary and the fitted parameters of
    the K shown in the chapter's figures) with provenance. Returns the exit status: 0 done, 2 refused,
    3 stopped by ``--max-minutes`` after checkpointing (run the same command again to resume)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = parse_checked(parser, argv, _check)
    config = _config(args)
    name = args.name or f"energy2d_{args.mode}"
    device = runner.pick_device(args.device)
    error = f"{parser.prog}: error: "
    try:  # before training: a run never ends unable to write its result or with a foreign checkpoint
        runner.refuse_overwrite(Path(args.out) / f"{name}.json", config, args.overwrite, "--name")
        path, state = open_checkpoint(config, args.ckpt_dir, restart=args.restart, device=device,
                                      keys=CHECKPOINT_KEYS)
    except (FileExistsError, CheckpointError) as err:
        print(error + str(err), file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    record_every = max(config.updates // 100, 1)
    try:
        groups, rows, history = run_experiment(
            config, device, record_every, log=lambda s: print(s, flush=True), checkpoints=args.checkpoints,
            checkpointing=Checkpointing(path, every=args.ckpt_every, max_minutes=args.max_minutes), resume=state)
    except CheckpointError as err:
        print(error + str(err), file=sys.stderr)
        return 2
    if rows is None:
        print(f"stopped at update {history['updates_done']}/{config.updates}; checkpoint {path}; "
              "run the same command again to resume")
        return 3  # distinct from success, so a driver script knows to call again
    # the learning curve of each fit: F at β = 1 on the training samples, every record_every updates
    curves = {"step": history["step"], "F": {
        f"{t}/{m}/{K}": [round(rec[f], 4) for rec in history["F"][i]]
        for i, g in enumerate(groups) for f, (t, m, K) in enumerate(g.labels)}}
    # this process's time, plus the training time of the pieces before it
    wall = time.perf_counter() - start + (state["train_seconds"] if state is not None else 0.0)
    log_Z = {t: energies.log_normalizer(target_potential(t, config.confine_scale)) for t in config.targets}
    try:
        out = runner.write_result(
            name, config, out_dir=args.out, device=device, wall_time_s=wall, overwrite=args.overwrite,
            name_option="--name",
            command=runner.command_line(parser.prog, argv),
            # the fields at the top level, where FitConfig.trained_config and chapter 4 read them
            config={**asdict(config), "optimizer": f"Adam(lr {config.lr} decayed geometrically to {config.lr_final})",
                    "loss": "sum over fits of the annealed free energy (eq. 15), beta_t = min(1, 0.01 + t/warmup)"},
            metrics={"log_Z": log_Z, "rows": rows, "checkpoints": history["checkpoints"],
                     "train_seconds": history["train_seconds"], "curves": curves,
                     "fits": [fit_state(g, f) for g in groups for f, lab in enumerate(g.labels)
                              if lab[2] in args.store_K]})
    except FileExistsError as err:  # written by another process while this one trained
        print(error + str(err), file=sys.stderr)
        return 2
    for r in rows:
        print(f"{r['method']:>9} K={r['K']:>2} {r['target']}: KL = {r['KL']:.4f} ± {r['se']:.4f}")
    print(f"wrote {out}")
    return 0
