"""Command line: ``python -m flowbook train ...`` and ``python -m flowbook eval ...``.

Examples::

    # fast mode (2 CPU cores, minutes): the diagonal model and a 10-layer planar flow, trained together
    python -m flowbook train --rows planar:0,planar:10 --mode fast
    # the paper's protocol for one row, in ≤ 10-minute pieces: run the same command until it says done
    python -m flowbook train --flow planar --K 80 --mode full --max-minutes 9
    # evaluate a stored checkpoint again (e.g. with more importance samples)
    python -m flowbook eval --rows planar:0 --mode fast --eval-samples 5000 --eval-points 10000
    # the paper's evaluation (S = 5000, all test digits) of a committed Table 2 row, resumable
    python -m flowbook evaluate-weights mnist_stored_updates240k_planar_K80 --samples 5000 --max-minutes 60

Runs resume from their checkpoint in ``--ckpt-dir`` when one exists for the same configuration; a
damaged checkpoint, or one of another configuration, is refused (``--restart`` deletes it and starts over).
A finished run evaluates every row on the test set and writes ``<out>/mnist_<mode>_<row>.json``.

``--mode`` defaults to ``$FLOWBOOK_MODE`` (the chapters' variable), else ``fast``. Nothing stored is
replaced without ``--overwrite``: the same ``train`` command run again after it finished says it is done
and changes nothing, and ``eval`` only adds evaluations (:func:`flowbook.runner.finish`).

Every option is checked before any data loads: a value out of range ends the command at once with
one line naming the option and its valid range, and exit status 2 (argparse's status for bad usage).
A fault of the data or of the numbers (a damaged dataset file, a diverged loss) ends it with one line and
exit status 1 (:func:`flowbook.options.run_main`).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from . import flows
from .checkpoints import CheckpointError
from .options import (MAX_HIDDEN, MAX_K, OptionError, add_flow_option_argument, add_run_arguments, check_float,
                      check_int, check_run_options, config_from_args, flow_options_from_args, parse_checked, run_main,
                      weights_dir_for)

MNIST_TRAIN, MNIST_TEST = 50_000, 10_000  # binarized MNIST's training and test splits
#: The options that change a field of the mode's preset (:data:`flowbook.train.PRESETS`) when given.
CONFIG_OPTIONS = ("updates", "optimizer", "lr", "momentum", "beta_warmup", "seed", "hidden", "maxout_units",
                  "eval_points", "eval_samples", "label", "batch_size", "lr_final", "valid_every", "warmup",
                  "ema_decay", "fused")


def _config(args: argparse.Namespace):
    from .train import PRESETS, continuation, parse_rows

    flow, K = args.flow or "planar", args.K or 0
    rows = parse_rows(args.rows) if args.rows else ((flow, K),)
    stage = continuation(flow, K, args.continue_from) if args.continue_from else {}
    options = flow_options_from_args(args, [f for f, _ in rows])
    return config_from_args(PRESETS[args.mode], args, CONFIG_OPTIONS, rows=rows, flow_options=options, **stage)


def _check(args: argparse.Namespace) -> None:
    """Refuse out-of-range options before any data loads (:class:`flowbook.options.OptionError`)."""
    from .flows import SPECS
    from .models import DLGMConfig
    from .train import PRESETS, parse_rows

    train = args.command == "train"
    check_run_options(args, train=train, evaluate=not (train and args.no_eval))
    check_int("--batch-size", args.batch_size, 1, MNIST_TRAIN, " (the training set)")
    check_int("--eval-points", args.eval_points, 1, MNIST_TEST, " (the test set)")
    check_int("--valid-every", args.valid_every, 0, why=" (0: no validation)")
    check_float("--lr", args.lr, 0.0)
    check_float("--lr-final", args.lr_final, 0.0, lo_inclusive=True)
    check_float("--momentum", args.momentum, 0.0, lo_inclusive=True, hi=1.0, hi_inclusive=False)
    check_float("--beta-warmup", args.beta_warmup, 0.0)
    window = DLGMConfig.window
    if args.hidden is not None and (args.hidden < 1 or (args.maxout_units in (None, "pre_activations")
                                                         and args.hidden % window)):
        raise OptionError(f"--hidden must be a positive multiple of {window} (pre-activations, {window} "
                          f"per maxout unit; or give --maxout-units outputs), got {args.hidden}")
    check_int("--hidden", args.hidden, 1, MAX_HIDDEN, " (the paper's is 400)")
    check_int("--K", args.K, 0, MAX_K, " (the paper's longest flow is 80)")
    if args.rows is not None:
        try:
            rows = parse_rows(args.rows)
        except ValueError as err:
            raise OptionError(f"--rows: {err}") from None
        for flow, K in rows:
            if flow not in SPECS:
                raise OptionError(f"--rows: flow {flow!r} must be one of {', '.join(SPECS)}")
            check_int(f"--rows ({flow}:{K}): K", K, 0, MAX_K, " (the paper's longest flow is 80)")
        if args.flow is not None or args.K is not None:
            raise OptionError("--rows names every row; --flow and --K name a single one: give either --rows, "
                              "or --flow and --K")
        named = dataclasses.replace(PRESETS[args.mode], label=args.label or "")  # names depend on these only
        names = [named.result_name(flow, K) for flow, K in rows]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise OptionError(f"--rows {args.rows}: rows {', '.join(twice)} appear twice (every K = 0 row is "
                              "the same diagonal model); each row is trained and stored once")
    check_int("--warmup", args.warmup, 0, args.updates)
    check_float("--ema", args.ema_decay, 0.0, lo_inclusive=True, hi=1.0, hi_inclusive=False)
    if args.continue_from is not None:
        if args.mode != "stored" or args.rows:
            raise OptionError("--continue-from continues one stored row: give --mode stored, --flow and --K "
                              "(not --rows)")
        if not args.label or args.label == args.continue_from:
            raise OptionError("--continue-from needs a --label of its own for the stage it trains (e.g. "
                              "updates240k), so the row it starts from is kept")
    try:
        _config(args).model_configs()  # the model's own checks, for combinations the ones above miss
    except ValueError as err:
        raise OptionError(f"invalid options: {err}") from None
    if train:
        check_int("--ckpt-every", args.ckpt_every, 1)
        check_int("--stop-at", args.stop_at, 1)


#: Commands with their own module, handed the rest of the command line: name → (module, help).
DELEGATED = {"evaluate-weights": ("evalcli", "evaluate the committed weights of a stored Table 2 row again "
                                                "(e.g. S = 5000) and add it to its result"),
             "data": ("datacli", "prepare the data root: `data fetch` checks, downloads or builds MNIST and CIFAR-10"),
             "store": ("storecli", "the stored runs' results and weights: verify, fetch or regenerate the manifest")}


def main(argv: list[str] | None = None) -> int:
    """``python -m flowbook COMMAND ...``; returns the exit status (0 done, 1 a fault of the data or the
    numbers, 2 bad input or a refusal, 3 stopped after checkpointing: run it again), never a traceback for
    an error the user can act on (:func:`flowbook.options.run_main`)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in DELEGATED:
        import importlib

        module = importlib.import_module(f".{DELEGATED[argv[0]][0]}", __package__)
        return module.main(argv[1:])
    prog = "python -m flowbook" + (f" {argv[0]}" if argv[:1] and argv[0] in ("train", "eval") else "")
    return run_main(prog, lambda: _main(argv))


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowbook", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("train", "eval"):
        p = sub.add_parser(name, help=f"{name} DLGM rows on binarized MNIST (Table 2)")
        add_run_arguments(p, modes=("fast", "stored", "full"), ckpt_dir="data/checkpoints", train=name == "train")
        p.add_argument("--flow", choices=tuple(flows.SPECS), help="flow of the row (default: planar)")
        p.add_argument("--K", type=int, help="flow length (default 0: diagonal Gaussian)")
        p.add_argument("--rows", help="several rows trained together, e.g. planar:0,planar:10,nice:10 "
                                      "(instead of --flow and --K)")
        add_flow_option_argument(p)
        p.add_argument("--optimizer", choices=("rmsprop", "adam"))
        p.add_argument("--lr", type=float)
        p.add_argument("--lr-final", dest="lr_final", type=float, help="cosine decay of the rate to this value")
        p.add_argument("--valid-every", dest="valid_every", type=int,
                       help="updates between validation checks; the best-validation parameters are kept")
        p.add_argument("--momentum", type=float)
        p.add_argument("--beta-warmup", dest="beta_warmup", type=float)
        p.add_argument("--batch-size", dest="batch_size", type=int)
        p.add_argument("--hidden", type=int, help=f"maxout layer width (see --maxout-units; at most {MAX_HIDDEN})")
        p.add_argument("--maxout-units", dest="maxout_units", choices=("pre_activations", "outputs"),
                       help="what --hidden counts: pre-activations (default, 400 → 100 outputs) or outputs")
        p.add_argument("--continue-from", dest="continue_from", metavar="LABEL",
                       help="a stage: start from the committed weights of the stored row of this label "
                            "(e.g. updates120k) with β = 1, a fresh optimizer and --updates more updates")
        p.add_argument("--warmup", type=int, help="updates of linear warm-up of the rate (0: none)")
        p.add_argument("--ema", dest="ema_decay", type=float,
                       help="validate and keep an exponential moving average of the parameters (e.g. 0.999)")
        p.add_argument("--fused", action="store_true", default=None,
                       help="Adam's step in one fused kernel (the same arithmetic, faster on a CPU)")
        p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
        if name == "train":
            p.add_argument("--ckpt-every", dest="ckpt_every", type=int, default=1000)
            p.add_argument("--stop-at", dest="stop_at", type=int, help="checkpoint and stop at this update")
            p.add_argument("--compile", action="store_true", help="torch.compile the loss (for long GPU runs)")
            p.add_argument("--no-eval", dest="no_eval", action="store_true",
                           help="do not evaluate when training ends (run `eval` later)")
    for name, (_, help) in DELEGATED.items():  # listed in --help; main() hands them to their module
        sub.add_parser(name, help=help, add_help=False)
    args = parse_checked(parser, argv, _check)
    from .runner import (command_line, finish, load_finished_run, needs_evaluation, pick_device, stored_rows,
                         train_command)

    cfg = _config(args)
    weights_dir = weights_dir_for(args)
    add_evaluations = args.command == "eval"
    if args.command == "train":
        run = train_command(cfg, args, prog=parser.prog, evaluate=not args.no_eval, ckpt_every=args.ckpt_every,
                            stop_at=args.stop_at, progress=args.progress, compile=args.compile)
        if isinstance(run, int) or args.no_eval:
            return run if isinstance(run, int) else 0
    else:
        stored = stored_rows(cfg, args.out, weights_dir, args.overwrite)
        if all(record is not None and not needs_evaluation(record, cfg) for record in stored.values()):
            print(f"done: {', '.join(str(Path(args.out) / f'{name}.json') for name in stored)} already hold this "
                  f"evaluation ({cfg.eval_points} test points, S = {cfg.eval_samples}); nothing changed")
            return 0
        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            run = load_finished_run(cfg, args.ckpt_dir, pick_device(args.device))
        except CheckpointError as err:  # eval has no --restart: the hint points to the train command
            raise CheckpointError(str(err).replace("the same command with --restart",
                                                   "the train command with --restart")) from None
    t0 = time.perf_counter()
    metrics = finish(run, device=pick_device(args.device), out_dir=args.out, command=command_line(parser.prog, argv),
                     progress=args.progress, weights_dir=weights_dir, overwrite=args.overwrite,
                     add_evaluations=add_evaluations)
    for name, m in metrics.items():
        print(f"{name}: -ELBO {m['neg_elbo']:.2f}  -ln p(x) {m['neg_log_p']:.2f} (S={m['samples']}, "
              f"{m['points']} test points)  KL {m['kl']:.2f}")
    print(f"evaluated in {time.perf_counter() - t0:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
