"""Command line: ``python -m flowbook train ...`` and ``python -m flowbook eval ...``.

Examples::

    # fast mode (2 CPU cores, minutes): the diagonal model and a 10-layer planar flow, trained together
    python -m flowbook train --rows planar:0,planar:10 --mode fast
    # the paper's protocol for one row, in ≤ 10-minute pieces: run the same command until it says done
    python -m flowbook train --flow planar --K 80 --mode full --max-minutes 9
    # evaluate a stored checkpoint again (e.g. with more importance samples)
    python -m flowbook eval --rows planar:0 --mode fast --eval-samples 5000 --eval-points 10000
    # the paper's evaluation (S = 5000, all test digits) of a committed Table 2 row, resumable
    python -m flowbook evaluate-weights mnist_stored_planar_K80 --samples 5000 --max-minutes 60

Runs resume from their checkpoint in ``--ckpt-dir`` when one exists for the same configuration; a
damaged checkpoint, or one of another configuration, is refused (``--restart`` deletes it and starts over).
A finished run evaluates every row on the test set and writes ``<out>/mnist_<mode>_<row>.json``.

Every option is checked before any data loads: a value out of range ends the command at once with
one line naming the option and its valid range, and exit status 2 (argparse's status for bad usage).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shlex
import sys
import time
from pathlib import Path

import torch

from .results import describe_device


def _config(args: argparse.Namespace):
    from .train import PRESETS, parse_rows

    base = PRESETS[args.mode]
    rows = parse_rows(args.rows) if args.rows else ((args.flow, args.K),)
    changes = {"rows": rows}
    for name in ("updates", "optimizer", "lr", "momentum", "beta_warmup", "seed", "hidden", "maxout_units",
                 "eval_points", "eval_samples", "label", "batch_size", "lr_final", "valid_every"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    return dataclasses.replace(base, **changes)


#: Longest flow the command line accepts: the paper's longest is K = 80; beyond 1000 layers a run is
#: almost surely a typo (and its per-layer loop would take hours per update on a CPU).
MAX_K = 1000
MNIST_TRAIN, MNIST_TEST = 50_000, 10_000  # binarized MNIST's training and test splits
MAX_SEED = 2**32 - 1


def usage_error(parser: argparse.ArgumentParser, message: str) -> None:
    """argparse's error exit (status 2) with only the one-line message, not the long usage text."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def check_int(parser: argparse.ArgumentParser, option: str, value: int | None, lo: int, hi: int | None = None,
              why: str = "") -> None:
    """Refuse an integer option outside lo..hi (hi None: no upper bound); None means not given."""
    if value is None:
        return
    if value < lo or (hi is not None and value > hi):
        valid = f"in {lo}..{hi}" if hi is not None else f"≥ {lo}"
        usage_error(parser, f"{option} must be {valid}{why}, got {value}")


def check_float(parser: argparse.ArgumentParser, option: str, value: float | None, lo: float, *,
                lo_inclusive: bool = False, hi: float | None = None, hi_inclusive: bool = True) -> None:
    """Refuse a float option that is NaN, infinite or outside its interval; None means not given."""
    if value is None:
        return
    ok = math.isfinite(value) and (value >= lo if lo_inclusive else value > lo)
    if hi is not None:
        ok = ok and (value <= hi if hi_inclusive else value < hi)
    if not ok:
        left = f"{'≥' if lo_inclusive else '>'} {lo:g}"
        right = f" and {'≤' if hi_inclusive else '<'} {hi:g}" if hi is not None else ""
        usage_error(parser, f"{option} must be a finite number {left}{right}, got {value}")


def check_device(parser: argparse.ArgumentParser, option: str, name: str) -> None:
    """``auto``, ``cpu``, or an accelerator that is present here (``cuda``, ``cuda:1``, ``mps``)."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        usage_error(parser, f"{option} must be auto, cpu, cuda or cuda:N, got {name!r}")
        return
    if device.type == "cuda":
        if not torch.cuda.is_available():
            usage_error(parser, f"{option} {name}: CUDA is not available here; use {option} cpu or auto")
        elif device.index is not None and device.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            usage_error(parser, f"{option} {name}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            usage_error(parser, f"{option} {name}: MPS is not available here; use {option} cpu or auto")
    elif device.type != "cpu":
        usage_error(parser, f"{option} must be auto, cpu, cuda or cuda:N, got {name!r}")


def check_label(parser: argparse.ArgumentParser, option: str, label: str | None) -> None:
    """A label becomes part of file names: letters, digits, '.', '_', '-' and spaces only."""
    if label is not None and not re.fullmatch(r"[A-Za-z0-9._ -]+", label):
        usage_error(parser, f"{option} may hold only letters, digits, spaces, '.', '_' and '-' "
                            f"(it names files), got {label!r}")


def check_writable_dir(parser: argparse.ArgumentParser, option: str, directory: str | Path) -> None:
    """Create ``directory`` if missing and check that a file can be written there, so that a long run
    does not end with a result or checkpoint it cannot save."""
    from .results import ensure_writable_dir

    directory = Path(directory)
    try:
        ensure_writable_dir(directory)
    except OSError as err:
        usage_error(parser, f"{option} {directory}: cannot write there ({err.strerror or err}); "
                            "fix its permissions or choose another directory")


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse out-of-range options before any data loads (argparse's exit status 2, one line each)."""
    from .models import FLOW_TYPES, DLGMConfig
    from .train import parse_rows

    train = args.command == "train"
    check_int(parser, "--updates", args.updates, 1)
    check_int(parser, "--batch-size", args.batch_size, 1, MNIST_TRAIN, " (the training set)")
    check_int(parser, "--eval-points", args.eval_points, 1, MNIST_TEST, " (the test set)")
    check_int(parser, "--eval-samples", args.eval_samples, 1)
    check_int(parser, "--valid-every", args.valid_every, 0, why=" (0: no validation)")
    check_int(parser, "--seed", args.seed, 0, MAX_SEED)
    check_int(parser, "--threads", args.threads, 1)
    check_float(parser, "--lr", args.lr, 0.0)
    check_float(parser, "--lr-final", args.lr_final, 0.0, lo_inclusive=True)
    check_float(parser, "--momentum", args.momentum, 0.0, lo_inclusive=True, hi=1.0, hi_inclusive=False)
    check_float(parser, "--beta-warmup", args.beta_warmup, 0.0)
    window = DLGMConfig.window
    if args.hidden is not None and (args.hidden < 1 or (args.maxout_units in (None, "pre_activations")
                                                         and args.hidden % window)):
        usage_error(parser, f"--hidden must be a positive multiple of {window} (pre-activations, {window} "
                            f"per maxout unit; or give --maxout-units outputs), got {args.hidden}")
    check_int(parser, "--K", args.K, 0, MAX_K, " (the paper's longest flow is 80)")
    if args.rows is not None:
        try:
            rows = parse_rows(args.rows)
        except ValueError as err:
            usage_error(parser, f"--rows: {err}")
            return
        for flow, K in rows:
            if flow not in FLOW_TYPES:
                usage_error(parser, f"--rows: flow {flow!r} must be one of {', '.join(FLOW_TYPES)}")
            check_int(parser, f"--rows ({flow}:{K}): K", K, 0, MAX_K, " (the paper's longest flow is 80)")
    check_label(parser, "--label", args.label)
    try:
        _config(args).model_configs()  # the model's own checks, for combinations the ones above miss
    except ValueError as err:
        usage_error(parser, f"invalid options: {err}")
    check_device(parser, "--device", args.device)
    if train:
        check_int(parser, "--ckpt-every", args.ckpt_every, 1)
        check_int(parser, "--stop-at", args.stop_at, 1)
        check_float(parser, "--max-minutes", args.max_minutes, 0.0)
        check_writable_dir(parser, "--ckpt-dir", args.ckpt_dir)
    if not (train and args.no_eval):
        check_writable_dir(parser, "--out", args.out)
        weights_dir = _weights_dir(args)
        if weights_dir is not None:
            check_writable_dir(parser, "--weights-dir", weights_dir)


def _weights_dir(args: argparse.Namespace) -> str | None:
    return args.weights_dir or ("data/weights" if args.mode == "stored" else None)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["data"]:  # python -m flowbook data fetch ... → flowbook/datacli.py
        from .datacli import main as data_main
        return data_main(argv[1:])
    if argv[:1] == ["evaluate-weights"]:  # S = 5000 for a stored row → flowbook/evaluation.py
        from .evaluation import main as evaluate_main
        return evaluate_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m flowbook", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "eval"):
        p = sub.add_parser(name, help=f"{name} DLGM rows on binarized MNIST (Table 2)")
        p.add_argument("--flow", default="planar", choices=("planar", "radial", "nice"))
        p.add_argument("--K", type=int, default=0, help="flow length (0: diagonal Gaussian)")
        p.add_argument("--rows", help="several rows trained together, e.g. planar:0,planar:10,nice:10")
        p.add_argument("--mode", default="fast", choices=("fast", "stored", "full"),
                       help="fast (minutes on a CPU), stored (the committed CPU rows), full (the paper's protocol)")
        p.add_argument("--updates", type=int)
        p.add_argument("--optimizer", choices=("rmsprop", "adam"))
        p.add_argument("--lr", type=float)
        p.add_argument("--lr-final", dest="lr_final", type=float, help="cosine decay of the rate to this value")
        p.add_argument("--valid-every", dest="valid_every", type=int,
                       help="updates between validation checks; the best-validation parameters are kept")
        p.add_argument("--momentum", type=float)
        p.add_argument("--beta-warmup", dest="beta_warmup", type=float)
        p.add_argument("--batch-size", dest="batch_size", type=int)
        p.add_argument("--seed", type=int)
        p.add_argument("--hidden", type=int, help="maxout layer width (see --maxout-units)")
        p.add_argument("--maxout-units", dest="maxout_units", choices=("pre_activations", "outputs"),
                       help="what --hidden counts: pre-activations (default, 400 → 100 outputs) or outputs")
        p.add_argument("--eval-points", dest="eval_points", type=int)
        p.add_argument("--eval-samples", dest="eval_samples", type=int)
        p.add_argument("--label", help="tag in the result names, e.g. 'dry-run'")
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
        p.add_argument("--threads", type=int, help="torch CPU threads")
        p.add_argument("--out", default="data/results", help="directory of the result JSON files")
        p.add_argument("--ckpt-dir", dest="ckpt_dir", default="data/checkpoints")
        p.add_argument("--weights-dir", dest="weights_dir",
                       help="save each row's float16 weights here (default in stored mode: data/weights)")
        p.add_argument("--overwrite", action="store_true",
                       help="replace a stored result of another configuration with the same name")
        p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
        if name == "train":
            p.add_argument("--ckpt-every", dest="ckpt_every", type=int, default=1000)
            p.add_argument("--max-minutes", dest="max_minutes", type=float,
                           help="checkpoint and stop after this much training time; run again to resume")
            p.add_argument("--stop-at", dest="stop_at", type=int, help="checkpoint and stop at this update")
            p.add_argument("--compile", action="store_true", help="torch.compile the loss (for long GPU runs)")
            p.add_argument("--no-eval", dest="no_eval", action="store_true",
                           help="do not evaluate when training ends (run `eval` later)")
            p.add_argument("--restart", action="store_true",
                           help="delete this configuration's checkpoint (e.g. a damaged one) and start over")
    args = parser.parse_args(argv)
    _check(args, parser)
    from .train import CheckpointError, build_model, checkpoint_path, finish, load_checkpoint, refuse_overwrite, \
        row_name, train, Run

    cfg = _config(args)
    error = f"{parser.prog} {args.command}: error: "
    if not (args.command == "train" and args.no_eval):
        # a stored result of another configuration is refused now, not after hours of training
        try:
            for flow, K in cfg.rows:
                refuse_overwrite(Path(args.out) / f"{row_name(cfg, flow, K)}.json", cfg, args.overwrite)
        except FileExistsError as err:
            print(error + str(err), file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    command = "python -m flowbook " + " ".join(shlex.quote(a) for a in argv)
    if args.command == "train":
        try:
            run = train(cfg, device=device, ckpt_dir=args.ckpt_dir, ckpt_every=args.ckpt_every,
                        max_minutes=args.max_minutes, stop_at=args.stop_at, progress=args.progress,
                        compile=args.compile, restart=args.restart)
        except CheckpointError as err:
            print(error + str(err), file=sys.stderr)
            return 2
        if not run.finished:
            print(f"stopped at update {run.step}/{cfg.updates}; checkpoint {checkpoint_path(cfg, args.ckpt_dir)}; "
                  "run the same command again to resume")
            return 3  # distinct from success, so a driver script knows to call again
        print(f"trained {len(cfg.rows)} row(s) for {cfg.updates} updates on {describe_device(device)} "
              f"({run.train_seconds:.0f} s)")
        if args.no_eval:
            return 0
    else:
        path = checkpoint_path(cfg, args.ckpt_dir)
        if not path.exists():
            print(f"no checkpoint {path}: train this configuration first (same options)", file=sys.stderr)
            return 2
        try:
            state = load_checkpoint(path, cfg, device)
        except CheckpointError as err:
            # eval has no --restart: the hint points to the train command
            print(error + str(err).replace("the same command with --restart", "the train command with --restart"),
                  file=sys.stderr)
            return 2
        model = build_model(cfg).to(device)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            print(error + f"checkpoint {path} does not fit this model ({str(err).strip().splitlines()[0]}); "
                          "delete it and train this configuration again", file=sys.stderr)
            return 2
        run = Run(cfg, model, state["step"], state["log"], state["train_seconds"],
                  valid_log=state.get("valid_log", []), best=state.get("best", []))
        if not run.finished:
            print(f"the checkpoint is at update {run.step}/{cfg.updates}; finish training first", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    weights_dir = _weights_dir(args)
    metrics = finish(run, device=device, out_dir=args.out, command=command, progress=args.progress,
                     weights_dir=weights_dir, overwrite=args.overwrite)
    for name, m in metrics.items():
        print(f"{name}: -ELBO {m['neg_elbo']:.2f}  -ln p(x) {m['neg_log_p']:.2f} (S={m['samples']}, "
              f"{m['points']} test points)  KL {m['kl']:.2f}")
    print(f"evaluated in {time.perf_counter() - t0:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
