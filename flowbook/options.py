"""Command-line options shared by every runner command (``python -m flowbook train``, ``python -m
flowbook.cifar train``, ``python -m flowbook evaluate-weights``): their arguments, their checks, and the
config they make.

Every option is checked before any data loads: a value out of range raises :class:`OptionError` with one
line naming the option and its valid range, which the commands print as argparse's usage error (exit
status 2), without a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch

from .flows import parse_options
from .results import require_writable_dir

__all__ = ["OptionError", "MAX_K", "MAX_SEED", "MAX_HIDDEN", "run_main", "default_mode",
           "check_int", "check_float", "check_device", "check_label", "check_data_root",
           "check_writable_dir", "add_run_arguments", "check_run_options", "parse_checked", "weights_dir_for",
           "config_from_args", "add_flow_option_argument", "flow_options_from_args"]

#: Longest flow the command line accepts. The paper's longest is K = 80; beyond 1000 layers a run is
#: almost surely a typo (and its per-layer loop would take hours per update on a CPU).
MAX_K = 1000
MAX_SEED = 2**32 - 1
#: The widest maxout layer the command line accepts, 25 times the paper's 400 (§6.2). A typo beyond it
#: (say 400000000) would otherwise ask torch for terabytes before anything else fails.
MAX_HIDDEN = 10_000

C = TypeVar("C")


class OptionError(ValueError):
    """An option value out of its range; the message is one line naming the option and the range."""


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a command's ``body`` and return its exit status; an error the user can act on ends it with one
    line on stderr, ``<prog>: error: <message>`` (the message names the option or file and the fix),
    instead of a traceback: status 2 for bad input (:class:`OptionError`, a stored file the command will
    not replace (FileExistsError), an unusable checkpoint (:class:`~flowbook.checkpoints.CheckpointError`)),
    1 for a fault of the data, the numbers or the disk (:class:`~flowbook.data.DataFileError`,
    FloatingPointError, OSError). Every command's ``main`` runs through it, so no command shows a
    traceback for these."""
    from .checkpoints import CheckpointError
    from .data import DataFileError

    try:
        return body()
    except (OptionError, FileExistsError, CheckpointError) as err:
        status, message = 2, str(err)
    except (DataFileError, FloatingPointError, OSError) as err:
        status, message = 1, str(err)
    # one line even when the message quotes a multi-line one (torchvision's download errors do)
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return status


def default_mode(modes: Iterable[str]) -> str:
    """``--mode``'s default: ``$FLOWBOOK_MODE``, the variable the chapters read
    (:func:`flowbook.notebook.get_mode`), when it is set, else ``fast``; a value that is not one of
    ``modes`` raises :class:`OptionError`."""
    modes = tuple(modes)
    mode = os.environ.get("FLOWBOOK_MODE", "").strip().lower() or "fast"
    if mode not in modes:
        raise OptionError(f"FLOWBOOK_MODE={mode!r} is not a mode of this command; set it to one of "
                          f"{', '.join(modes)}, or unset it")
    return mode


def check_int(option: str, value: int | None, lo: int, hi: int | None = None, why: str = "") -> None:
    """Refuse an integer option outside lo..hi (hi None: no upper bound); None means not given."""
    if value is None:
        return
    if value < lo or (hi is not None and value > hi):
        valid = f"in {lo}..{hi}" if hi is not None else f"≥ {lo}"
        raise OptionError(f"{option} must be {valid}{why}, got {value}")


def check_float(option: str, value: float | None, lo: float, *, lo_inclusive: bool = False,
                hi: float | None = None, hi_inclusive: bool = True) -> None:
    """Refuse a float option that is NaN, infinite or outside its interval; None means not given."""
    if value is None:
        return
    ok = math.isfinite(value) and (value >= lo if lo_inclusive else value > lo)
    if hi is not None:
        ok = ok and (value <= hi if hi_inclusive else value < hi)
    if not ok:
        left = f"{'≥' if lo_inclusive else '>'} {lo:g}"
        right = f" and {'≤' if hi_inclusive else '<'} {hi:g}" if hi is not None else ""
        raise OptionError(f"{option} must be a finite number {left}{right}, got {value}")


def check_device(option: str, name: str) -> None:
    """``auto``, ``cpu``, or an accelerator that is present here (``cuda``, ``cuda:1``, ``mps``)."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise OptionError(f"{option} must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"{option} {name}: CUDA is not available here; use {option} cpu or auto")
        n = torch.cuda.device_count()
        if device.index is not None and device.index >= n:
            raise OptionError(f"{option} {name}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise OptionError(f"{option} {name}: MPS is not available here; use {option} cpu or auto")
    elif device.type != "cpu":
        raise OptionError(f"{option} must be auto, cpu, cuda or cuda:N, got {name!r}")


def check_label(option: str, label: str | None) -> None:
    """A label becomes part of file names: letters, digits, '.', '_', '-' and spaces only."""
    if label is not None and not re.fullmatch(r"[A-Za-z0-9._ -]+", label):
        raise OptionError(f"{option} may hold only letters, digits, spaces, '.', '_' and '-' "
                          f"(it names files), got {label!r}")


def check_data_root() -> None:
    """Refuse a data root (``$FLOWBOOK_DATA``, :func:`flowbook.data.data_root`) that is a file or cannot
    be created, before any work is done: bad input, not a fault of the data."""
    from .data import DataFileError, data_root

    try:
        data_root()
    except DataFileError as err:
        raise OptionError(str(err)) from None


def check_writable_dir(option: str, directory: str | Path) -> None:
    """Create ``directory`` if missing and check that a file can be written there, so that a long run
    does not end with a result or checkpoint it cannot save."""
    directory = Path(directory)
    require_writable_dir(directory, OptionError, f"{option} {directory}: cannot write there",
                         "fix its permissions or choose another directory")


def add_run_arguments(parser: argparse.ArgumentParser, *, modes: Iterable[str], ckpt_dir: str,
                      train: bool = True) -> None:
    """The options every training command has: mode, schedule, evaluation, label, device, directories,
    ``--overwrite``; with ``train``, also ``--max-minutes`` and ``--restart``."""
    parser.add_argument("--mode", default=default_mode(modes), choices=tuple(modes),
                        help="fast (minutes on a CPU), stored (the committed CPU rows), full (the paper's "
                             "protocol); default: $FLOWBOOK_MODE, else fast")
    parser.add_argument("--updates", type=int)
    parser.add_argument("--seed", type=int, help="seed of the initialization, minibatches and noise")
    parser.add_argument("--eval-points", dest="eval_points", type=int, help="test points evaluated")
    parser.add_argument("--eval-samples", dest="eval_samples", type=int, help="S of the importance-sampled ln p(x)")
    parser.add_argument("--label", help="tag in the result names, e.g. 'dry-run'")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--out", default="data/results", help="directory of the result JSON files")
    parser.add_argument("--ckpt-dir", dest="ckpt_dir", default=ckpt_dir)
    parser.add_argument("--weights-dir", dest="weights_dir",
                        help="save each row's float16 weights here (default in stored mode: data/weights)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a stored result of another configuration with the same name")
    if train:
        parser.add_argument("--max-minutes", dest="max_minutes", type=float,
                            help="checkpoint and stop after this much training time; run again to resume")
        parser.add_argument("--restart", action="store_true",
                            help="delete this configuration's checkpoint (e.g. a damaged one) and start over")


def weights_dir_for(args: argparse.Namespace) -> str | None:
    """``--weights-dir``, by default ``data/weights`` in stored mode (the committed rows) and none else."""
    return args.weights_dir or ("data/weights" if args.mode == "stored" else None)


def check_run_options(args: argparse.Namespace, *, train: bool, evaluate: bool) -> None:
    """The checks of :func:`add_run_arguments`'s options (not ``--eval-points``, whose range is the
    dataset's); ``train``: the run trains, ``evaluate``: it writes results."""
    check_int("--updates", args.updates, 1)
    check_int("--eval-samples", args.eval_samples, 1)
    check_int("--seed", args.seed, 0, MAX_SEED)
    check_int("--threads", args.threads, 1)
    check_label("--label", args.label)
    check_device("--device", args.device)
    check_data_root()
    if train:
        check_float("--max-minutes", args.max_minutes, 0.0)
        check_writable_dir("--ckpt-dir", args.ckpt_dir)
    if evaluate:
        check_writable_dir("--out", args.out)
        weights_dir = weights_dir_for(args)
        if weights_dir is not None:
            check_writable_dir("--weights-dir", weights_dir)


def parse_checked(parser: argparse.ArgumentParser, argv: list[str],
                  check: Callable[[argparse.Namespace], Any]) -> argparse.Namespace:
    """Parse ``argv`` and run ``check`` on it; an :class:`OptionError` ends the command the way argparse
    ends bad usage (exit status 2) with only its one line, not the long usage text."""
    args = parser.parse_args(argv)
    try:
        check(args)
    except OptionError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return args


def config_from_args(preset: C, args: argparse.Namespace, names: Iterable[str], **changes: Any) -> C:
    """``preset`` with ``changes`` and every option of ``names`` that was given (None: not given)."""
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return dataclasses.replace(preset, **{**given, **changes})  # type: ignore[type-var]


def add_flow_option_argument(parser: argparse.ArgumentParser) -> None:
    """``--flow-option KEY=VALUE``, repeatable: an option of the run's flow types
    (:func:`flowbook.flows.options_of`, e.g. ``hidden=64`` for NICE), one generic way for every type."""
    parser.add_argument("--flow-option", dest="flow_options", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the flow type, repeatable (e.g. hidden=64 for NICE); an unknown "
                             "one is refused with the flow's options")


def flow_options_from_args(args: argparse.Namespace, flow_types: Iterable[str]) -> tuple[tuple[str, Any], ...]:
    """``--flow-option``'s items for a run of ``flow_types``, each value read as its option's type
    (:func:`flowbook.flows.parse_options`); raises :class:`OptionError` naming what was wrong."""
    try:
        return parse_options(list(flow_types), args.flow_options)
    except ValueError as err:
        raise OptionError(f"--flow-option: {err}") from None
