"""Command line: ``python -m flowbook train ...`` and ``python -m flowbook eval ...``.

Examples::

    # fast mode (2 CPU cores, minutes): the diagonal model and a 10-layer planar flow, trained together
    python -m flowbook train --rows planar:0,planar:10 --mode fast
    # the paper's protocol for one row, in ≤ 10-minute pieces: run the same command until it says done
    python -m flowbook train --flow planar --K 80 --mode full --max-minutes 9
    # evaluate a stored checkpoint again (e.g. with more importance samples)
    python -m flowbook eval --rows planar:0 --mode fast --samples 5000 --points 10000

Runs resume from their checkpoint in ``--ckpt-dir`` when one exists for the same configuration.
A finished run evaluates every row on the test set and writes ``<out>/mnist_<mode>_<row>.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time

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


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse out-of-range options before any data loads (argparse's exit status 2, one line each)."""
    def positive(name: str, value) -> None:
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {value}")
    for name in ("updates", "lr", "batch_size", "eval_points", "eval_samples", "beta_warmup", "lr_final"):
        positive(name, getattr(args, name))
    if args.command == "train":
        positive("ckpt_every", args.ckpt_every)
        positive("max_minutes", args.max_minutes)
    if args.valid_every is not None and args.valid_every < 0:
        parser.error(f"--valid-every must be ≥ 0 (0: no validation), got {args.valid_every}")
    if args.K < 0 or args.K > 1000:
        parser.error(f"--K must be in 0..1000, got {args.K}")
    if args.eval_points is not None and args.eval_points > 10_000:
        parser.error(f"--eval-points must be ≤ 10000 (the test set), got {args.eval_points}")
    if args.batch_size is not None and args.batch_size > 50_000:
        parser.error(f"--batch-size must be ≤ 50000 (the training set), got {args.batch_size}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu or auto")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
    args = parser.parse_args(argv)
    _check(args, parser)
    if args.threads:
        torch.set_num_threads(args.threads)
    from .train import build_model, checkpoint_path, finish, train, Run

    cfg = _config(args)
    device = _device(args.device)
    command = "python -m flowbook " + " ".join(shlex.quote(a) for a in argv)
    if args.command == "train":
        run = train(cfg, device=device, ckpt_dir=args.ckpt_dir, ckpt_every=args.ckpt_every,
                    max_minutes=args.max_minutes, stop_at=args.stop_at, progress=args.progress,
                    compile=args.compile)
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
        state = torch.load(path, map_location=device, weights_only=False)
        model = build_model(cfg).to(device)
        model.load_state_dict(state["model"])
        run = Run(cfg, model, state["step"], state["log"], state["train_seconds"],
                  valid_log=state.get("valid_log", []), best=state.get("best", []))
        if not run.finished:
            print(f"the checkpoint is at update {run.step}/{cfg.updates}; finish training first", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    weights_dir = args.weights_dir or ("data/weights" if cfg.mode == "stored" else None)
    metrics = finish(run, device=device, out_dir=args.out, command=command, progress=args.progress,
                     weights_dir=weights_dir, overwrite=args.overwrite)
    for name, m in metrics.items():
        print(f"{name}: -ELBO {m['neg_elbo']:.2f}  -ln p(x) {m['neg_log_p']:.2f} (S={m['samples']}, "
              f"{m['points']} test points)  KL {m['kl']:.2f}")
    print(f"evaluated in {time.perf_counter() - t0:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
