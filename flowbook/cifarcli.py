"""The command line of CIFAR-10's experiment (:mod:`flowbook.cifar`, Table 3): ``python -m flowbook.cifar train
...`` trains the rows together, then evaluates them and writes their results (see :mod:`flowbook.cifar`)."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from . import cifar, runner
from .options import (MAX_K, OptionError, add_flow_option_argument, add_run_arguments, check_int, check_run_options,
                      config_from_args, flow_options_from_args, parse_checked, run_main, weights_dir_for)

__all__ = ["MAX_N_TRAIN", "MAX_EVAL_POINTS", "main"]


#: The most training patches ``--n-train`` accepts, ten million (7.7 GB as float32; the full protocol
#: trains on one million): beyond it a value is almost surely a typo.
MAX_N_TRAIN = 10_000_000
#: The most test patches ``--eval-points`` accepts, ten times the full test set of 10 000 patches.
MAX_EVAL_POINTS = 100_000


def _config(args: argparse.Namespace) -> cifar.CifarConfig:
    """The mode's preset with the options given: one planar row per ``--K``."""
    rows = tuple(("planar", int(k)) for k in args.K.split(","))
    return config_from_args(cifar.config_for(args.mode), args, ("updates", "n_train", "eval_points", "eval_samples",
                                                          "label", "seed", "logit_normal_variance"), rows=rows,
                            flow_options=flow_options_from_args(args, [f for f, _ in rows]))


def _check_args(args: argparse.Namespace) -> None:
    """Refuse out-of-range options before any data loads (:class:`flowbook.options.OptionError`)."""
    Ks = []
    for item in args.K.split(","):
        item = item.strip()
        if not re.fullmatch(r"\d+", item):
            raise OptionError(f"--K must be comma-separated flow lengths in 0..{MAX_K}, e.g. 0,2,5,10; "
                              f"got {args.K!r} ({item!r} is not a non-negative integer)")
        check_int("--K", int(item), 0, MAX_K, " (the paper's Table 3 uses 0, 2, 5, 10)")
        Ks.append(int(item))
    if len(set(Ks)) != len(Ks):
        raise OptionError(f"--K lists a flow length twice ({args.K!r}); each row's results are named by K")
    preset = cifar.config_for(args.mode)
    check_run_options(args, train=True, evaluate=True)
    check_int("--n-train", args.n_train, preset.batch_size, MAX_N_TRAIN,
              f" (at least one minibatch of {preset.batch_size})")
    check_int("--eval-points", args.eval_points, 1, MAX_EVAL_POINTS)
    try:
        _config(args).model_configs()  # the model's own checks (e.g. a flow option's value)
    except ValueError as err:
        raise OptionError(f"invalid options: {err}") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m flowbook.cifar train ...``: train the four rows of Table 3 together, then evaluate.
    Returns the exit status (:func:`flowbook.runner.train_command`'s; 1 for a fault of the data or the
    numbers, with one line, :func:`flowbook.options.run_main`)."""
    argv = sys.argv[1:] if argv is None else argv
    return run_main("python -m flowbook.cifar", lambda: _main(argv))


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowbook.cifar", description=main.__doc__)
    parser.add_argument("command", choices=("train",))
    add_run_arguments(parser, modes=cifar.PRESETS, ckpt_dir="data/checkpoints/cifar10")
    parser.add_argument("--K", default=",".join(map(str, cifar.KS)), help="flow lengths trained together, e.g. 0,2,5,10")
    parser.add_argument("--variance", dest="logit_normal_variance", choices=("per_dim", "amortized"),
                        help="logit-normal variance")
    parser.add_argument("--n-train", dest="n_train", type=int, help="training patches (drawn once)")
    add_flow_option_argument(parser)
    args = parse_checked(parser, argv, _check_args)
    cfg = _config(args)
    run = runner.train_command(cfg, args, prog=parser.prog, progress=False)
    if isinstance(run, int):
        return run
    metrics = cifar.finish(run, device=runner.pick_device(args.device), out_dir=args.out,
                     command=runner.command_line(parser.prog, argv), weights_dir=weights_dir_for(args),
                     overwrite=args.overwrite)
    print(_summary(metrics, f"done: {cfg.updates} updates in {run.train_seconds:.0f} s; results in {args.out}"))
    return 0


def _summary(metrics: dict[int, dict[str, Any]], last: str) -> str:
    """The command's report: one line per row (its bounds in nats per patch and bits per dimension), then ``last``."""
    rows = [f"K = {K:2d}: bound {m['neg_elbo']:.1f}, -ln p(x) {m['neg_log_p']:.1f} nats/patch "
            f"({m['bpd']:.3f} bits/dim; S = {m['samples']}, {m['points']} test patches)" for K, m in metrics.items()]
    return "\n".join([*rows, last])
