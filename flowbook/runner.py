"""The runner every experiment goes through: device choice, the command-line training step (checkpoints,
resumption, exit statuses), and the results (provenance, no silent overwrite; for the DLGMs also float16
weights and the test-set evaluation).

An experiment is a configuration of it (:class:`RunConfig`): a :class:`flowbook.train.TrainConfig`
(binarized MNIST, Table 2), its subclass :class:`flowbook.cifar.CifarConfig` (CIFAR-10 patches, Table 3)
or a :class:`flowbook.experiments2d.FitConfig` (the 2-D energies, Figure 3) says how its files are named
(:meth:`~flowbook.train.TrainConfig.result_name`, :meth:`~RunConfig.checkpoint_stem`) and which of a
stored result's fields trained it (:meth:`~RunConfig.trained_config`). A DLGM configuration also gives
the data it trains and is tested on and how a row is evaluated
(:meth:`~flowbook.train.TrainConfig.row_metrics`, the paper's §6.2 protocol); its training is Algorithm 1
in :func:`flowbook.train.train`, the 2-D fits' is :func:`flowbook.experiments2d.train`. Checkpoints are
:mod:`flowbook.checkpoints`; every result is written by :func:`write_result`.

Exit statuses of the commands: 0 done, 2 refused (bad option, damaged or foreign checkpoint, a stored
result of another configuration), 3 stopped by ``--max-minutes`` after checkpointing (run the same command
again to resume).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from .checkpoints import CheckpointError, find_checkpoint, first_line, load_checkpoint, training_fields
from .evaluation import save_point_values
from .results import describe_device, save_result

if TYPE_CHECKING:  # flowbook.train imports this module
    from .train import Run, TrainConfig

__all__ = ["RunConfig", "pick_device", "config_digest", "refuse_overwrite", "refuse_stored_results", "write_result",
           "command_line", "train_command", "load_finished_run", "finish"]


class RunConfig(Protocol):
    """What the runner needs of an experiment's configuration (a frozen dataclass whose fields are
    everything its result depends on)."""

    def digest(self) -> str:
        """:func:`config_digest` of the fields: a checkpoint or stored result belongs to this run only if
        its digest is this."""

    def checkpoint_stem(self) -> str:
        """The checkpoint's name before its digest, e.g. ``mnist_stored_planar80``."""

    @staticmethod
    def trained_config(result_config: dict) -> dict:
        """The fields of this configuration in a stored result's ``config`` (KeyError or TypeError when
        they are not there), to compare with :meth:`digest`."""


def pick_device(name: str | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA when available, else the CPU; any other name as given (checked by
    :func:`flowbook.options.check_device` on the command line)."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def config_digest(config: dict) -> str:
    """:meth:`flowbook.train.TrainConfig.digest` of a config stored as a dict (e.g. in a result's provenance):
    the first 12 hex digits of the sha256 of the JSON of its :func:`~flowbook.checkpoints.training_fields`."""
    return hashlib.sha256(json.dumps(training_fields(config), sort_keys=True).encode()).hexdigest()[:12]


def refuse_overwrite(path: Path, cfg: RunConfig, overwrite: bool, name_option: str = "--label") -> None:
    """Raise FileExistsError if ``path`` holds a result of another training configuration (unless
    ``overwrite``): a run never silently replaces a stored result it did not produce. The message
    suggests ``name_option``, the command's option that names its results."""
    if overwrite or not path.exists():
        return
    try:
        stored = cfg.trained_config(json.loads(path.read_text())["config"])
    except (ValueError, KeyError, TypeError):
        stored = None
    if not isinstance(stored, dict) or config_digest(stored) != cfg.digest():
        raise FileExistsError(f"{path} holds a result of another configuration; give the run a {name_option}, "
                              "or pass --overwrite to replace it")


def refuse_stored_results(cfg: TrainConfig, out_dir: str | Path, overwrite: bool) -> list[Path]:
    """:func:`refuse_overwrite` for the result file of every row of ``cfg``; returns their paths."""
    paths = [Path(out_dir) / f"{cfg.result_name(flow, K)}.json" for flow, K in cfg.rows]
    for path in paths:
        refuse_overwrite(path, cfg, overwrite)
    return paths


def write_result(name: str, cfg: RunConfig, *, out_dir: str | Path, config: dict[str, Any], metrics: dict[str, Any],
                 device: str | torch.device, wall_time_s: float, command: str | None = None,
                 overwrite: bool = False, name_option: str = "--label") -> Path:
    """Write ``<out_dir>/<name>.json`` with provenance (:func:`flowbook.results.save_result`: command,
    commit, device, date, wall time, ``config``), unless it holds a result of another configuration
    (:func:`refuse_overwrite`, FileExistsError, suggesting ``name_option``); returns its path. ``config``
    must hold ``cfg``'s fields where :meth:`~RunConfig.trained_config` looks for them, so that the next run
    recognizes the file."""
    refuse_overwrite(Path(out_dir) / f"{name}.json", cfg, overwrite, name_option)
    return save_result(name, config=config, metrics=metrics, device=device, command=command,
                       wall_time_s=wall_time_s, directory=out_dir)


def command_line(prog: str, argv: list[str]) -> str:
    """The command as a shell would take it, for a result's provenance."""
    return f"{prog} " + " ".join(shlex.quote(a) for a in argv)


def train_command(cfg: TrainConfig, args: argparse.Namespace, *, prog: str, evaluate: bool = True,
                  **train_options: Any) -> Run | int:
    """A command line's training step: refuse a stored result of another configuration now (not after
    hours of training; only when the run will ``evaluate``), set ``--threads``, pick ``--device``, and
    train from ``--ckpt-dir`` (resuming; ``--restart``, ``--max-minutes``). Returns the finished
    :class:`~flowbook.train.Run`, or the exit status: 2 when something was refused (one line on
    stderr), 3 when the run stopped before its last update (checkpointed; run the command again)."""
    from .train import train

    error = f"{prog} {args.command}: error: "
    try:
        if evaluate:
            refuse_stored_results(cfg, args.out, args.overwrite)
    except FileExistsError as err:
        print(error + str(err), file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    try:
        run = train(cfg, device=device, ckpt_dir=args.ckpt_dir, max_minutes=args.max_minutes,
                    restart=args.restart, **train_options)
    except CheckpointError as err:
        print(error + str(err), file=sys.stderr)
        return 2
    if not run.finished:
        print(f"stopped at update {run.step}/{cfg.updates}; checkpoint {find_checkpoint(cfg, args.ckpt_dir)}; "
              "run the same command again to resume")
        return 3  # distinct from success, so a driver script knows to call again
    print(f"trained {len(cfg.rows)} row(s) for {cfg.updates} updates on {describe_device(device)} "
          f"({run.train_seconds:.0f} s)")
    return run


def load_finished_run(cfg: TrainConfig, ckpt_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """The finished run of ``cfg`` from its checkpoint, to evaluate it again; :class:`~flowbook.checkpoints.CheckpointError`
    (naming the file and the fix) when there is none, it is damaged or foreign, or training is not done."""
    from .train import Run, build_model

    path = find_checkpoint(cfg, ckpt_dir)
    if not path.exists():
        raise CheckpointError(f"no checkpoint {path}: train this configuration first (same options)")
    state = load_checkpoint(path, cfg, device)
    model = build_model(cfg).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit this model ({first_line(err)}); "
                              "delete it and train this configuration again") from err
    run = Run(cfg, model, state["step"], state["log"], state["train_seconds"],
              valid_log=state.get("valid_log", []), best=state.get("best", []))
    if not run.finished:
        raise CheckpointError(f"the checkpoint is at update {run.step}/{cfg.updates}; finish training first")
    return run


def finish(run: Run, *, device: str | torch.device, out_dir: str | Path | None, command: str | None = None,
           x_test: Tensor | None = None, progress: bool | None = None, weights_dir: str | Path | None = None,
           overwrite: bool = False) -> dict[str, dict[str, Any]]:
    """Evaluate every row of a finished run on the test set and write one result JSON per row.

    Each row is evaluated with its best-validation parameters when the run validated
    (:meth:`flowbook.train.Run.final_rows`). With ``weights_dir``, the row's parameters are rounded to
    float16 and saved there first (:mod:`flowbook.pretrained`), so the result describes exactly the saved
    weights. ``x_test`` defaults to the config's test set; its first ``eval_points`` are used. Returns
    {row name: metrics}. A result's config holds the training config, the row's model config, the data
    used, the planar implementation, and the training and validation logs; a stored result of another
    configuration is refused (:func:`refuse_overwrite`) before anything is evaluated."""
    from . import pretrained

    cfg = run.config
    names = [cfg.result_name(flow, K) for flow, K in cfg.rows]
    if out_dir is not None:
        refuse_stored_results(cfg, out_dir, overwrite)
    if x_test is None:
        x_test = cfg.test_data()
    x_test = x_test[:cfg.eval_points]
    data = cfg.data_record()
    out = {}
    for r, (row, name) in enumerate(zip(run.final_rows(), names)):
        best = run.best[r] if r < len(run.best) else None
        if weights_dir is not None:
            pretrained.round_like_saved(row)
            pretrained.save(row, name, weights_dir)
        t0 = time.perf_counter()
        metrics = cfg.row_metrics(row, x_test, progress=progress)
        metrics["eval_seconds"] = round(time.perf_counter() - t0, 3)
        per_point = metrics.pop("per_point", None)
        if per_point is not None and out_dir is not None:
            metrics["points_file"] = save_point_values(out_dir, name, metrics["samples"], 1234, **per_point)
        metrics["final_train_free_energy"] = run.log[-1]["free_energy"][r] if run.log else None
        if best is not None:
            metrics["best_valid_free_energy"] = best["free_energy"]
        if out_dir is not None:
            write_result(name, cfg, out_dir=out_dir, metrics=metrics, device=device, command=command,
                         config=_result_config(run, r, row.config.to_dict(), data, device,
                                               f"data/weights/{name}.pt" if weights_dir is not None else None),
                         wall_time_s=run.train_seconds + metrics["eval_seconds"], overwrite=overwrite)
        out[name] = metrics
    return out


def _result_config(run: Run, r: int, model: dict, data: dict, device: str | torch.device,
                   weights: str | None) -> dict[str, Any]:
    """The ``config`` of row r's result: what trained it, on what, with which code, and its logs."""
    from .flows import planar_impl
    from .train import stage_chain

    cfg = run.config
    best = run.best[r] if r < len(run.best) else None
    return {"train": asdict(cfg), "model": model, **data,
            "planar_impl": planar_impl(device, cfg.dtype),
            "updates_done": run.step, "rows_trained_together": len(cfg.rows),
            "train_seconds": round(run.train_seconds, 3),
            "evaluated_at_update": best["step"] if best is not None else run.step,
            "weights": weights, "torch_threads": torch.get_num_threads(),
            **({"chain": stage_chain(cfg)} if getattr(cfg, "init_from", "") else {}),
            "log": [{"step": e["step"], "beta": e["beta"], "free_energy": e["free_energy"][r]} for e in run.log],
            "valid_log": [{"step": e["step"], "free_energy": e["free_energy"][r]} for e in run.valid_log]}
