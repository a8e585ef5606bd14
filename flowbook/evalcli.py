"""``python -m flowbook evaluate-weights``: the command line of :func:`flowbook.evaluation.evaluate_resumable`,
which evaluates a stored Table 2 row's committed weights again (e.g. with the paper's S = 5000, §6.2) and
adds the evaluation to its result. It belongs to the command-line layer, above the evaluation it runs, so
that :mod:`flowbook.evaluation` imports nothing of the runner, the options or the stored results.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import data as fdata
from . import pretrained, results
from .evaluation import evaluate_resumable, save_point_values
from .options import (MAX_SEED, OptionError, check_data_root, check_device, check_float, check_int, check_writable_dir,
                      run_main)
from .results import add_evaluation, find_evaluation, load_result, name_lock
from .runner import command_line, pick_device

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m flowbook evaluate-weights NAME --samples 5000``: evaluate the committed weights
    ``data/weights/NAME.pt`` of a stored Table 2 row on the whole test set and add the evaluation to
    ``data/results/NAME.json`` (:func:`flowbook.results.add_evaluation`). Resumable: with
    ``--max-minutes`` it stops after that long, saving its progress, and exits 3; run it again to continue.
    An evaluation the result already holds (same samples, points and seed) is not run again (exit 0)."""
    argv = sys.argv[2:] if argv is None else argv
    return run_main("python -m flowbook evaluate-weights", lambda: _main(argv))


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowbook evaluate-weights",
                                     description=main.__doc__.split("\n")[0].strip("`: "))
    parser.add_argument("name", help="a stored MNIST row, e.g. mnist_stored_updates240k_planar_K80")
    parser.add_argument("--samples", type=int, default=5000, help="importance samples S (the paper: 5000)")
    parser.add_argument("--points", type=int, default=10_000, help="test digits, from the first (all: 10000)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--max-minutes", dest="max_minutes", type=float)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    parser.add_argument("--state-dir", dest="state_dir", default="data/checkpoints",
                        help="where the progress of an unfinished evaluation is kept")
    args = parser.parse_args(argv)
    weights = pretrained.WEIGHTS_DIR / f"{args.name}.pt"
    result = results.RESULTS_DIR / f"{args.name}.json"  # read when run, so that a test can point it elsewhere
    check_int("--samples", args.samples, 1)
    check_int("--points", args.points, 1, 10_000, " (the test set)")
    check_int("--seed", args.seed, 0, MAX_SEED)
    check_int("--threads", args.threads, 1)
    check_float("--max-minutes", args.max_minutes, 0.0)
    if not args.name.startswith("mnist_"):
        raise OptionError(f"NAME must be a stored MNIST row (mnist_...), got {args.name!r}")
    for path in (weights, result):
        if not path.is_file():
            raise OptionError(f"no file {path}: NAME must name a stored row with weights and result "
                              f"(see {pretrained.WEIGHTS_DIR})")
    check_device("--device", args.device)
    check_data_root()
    # before the evaluation, not after it: a result that cannot be saved loses hours of work
    check_writable_dir("--state-dir", args.state_dir)
    check_writable_dir(f"the results directory of {args.name}", result.parent)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    try:
        record = load_result(result)
        model = pretrained.load_file(weights, device=device)
    except ValueError as err:
        raise OptionError(str(err)) from None
    if find_evaluation(record, {"samples": args.samples, "points": args.points, "seed": args.seed}) is not None:
        print(f"done: {result} already holds this evaluation (S = {args.samples}, {args.points} test points, "
              f"seed {args.seed}); nothing changed")
        return 0
    state = Path(args.state_dir) / f"{args.name}_eval_S{args.samples}_n{args.points}_seed{args.seed}.pt"
    x = fdata.binarized_mnist("test")[:args.points]
    try:
        metrics = evaluate_resumable(model, x, args.samples, state, seed=args.seed, max_minutes=args.max_minutes)
    except ValueError as err:
        raise OptionError(str(err)) from None
    if metrics is None:
        print(f"{args.name}: stopped after {args.max_minutes} min; progress in {state}; run the same command "
              "again to continue")
        return 3
    command = command_line(parser.prog, argv)
    per_point = metrics.pop("per_point")
    with name_lock(result.parent, args.name):  # a twin run that added this entry meanwhile keeps its points file
        added = find_evaluation(load_result(result), {"samples": args.samples, "points": args.points,
                                                      "seed": args.seed}) is None
        if added:
            metrics["points_file"] = save_point_values(results.RESULTS_DIR, args.name, args.samples, args.seed,
                                                       **per_point)
            add_evaluation(result, {**metrics, "seed": args.seed, "batch": 100,
                                    "weights": f"data/weights/{args.name}.pt",
                                    "binarization": fdata.binarized_mnist_source(),
                                    "torch_threads": torch.get_num_threads()},
                           device=device, command=command)
    state.unlink(missing_ok=True)
    where = f"added to {result}" if added else f"{result} already held this evaluation (added meanwhile); unchanged"
    print(f"{args.name}: -ELBO {metrics['neg_elbo']:.2f}  -ln p(x) {metrics['neg_log_p']:.2f} ± "
          f"{metrics['neg_log_p_sem']:.2f} (S={args.samples}, {metrics['points']} test points)  "
          f"KL {metrics['kl']:.2f}; {metrics['eval_seconds']:.0f} s; {where}")
    return 0
