"""The runner every experiment goes through: device choice, the command-line training step (checkpoints,
resumption, exit statuses), and the results (provenance, no silent overwrite; for the DLGMs also float16
weights and the test-set evaluation).

An experiment is a configuration of it (:class:`~flowbook.runid.RunConfig`): a subclass of the dataset-free
:class:`flowbook.trainer.TrainConfig`, :class:`flowbook.train.MnistConfig` (binarized MNIST, Table 2) or
:class:`flowbook.cifar.CifarConfig` (CIFAR-10 patches, Table 3), or a :class:`flowbook.experiments2d.FitConfig`
(the 2-D energies, Figure 3) says how its files are named
(:meth:`~flowbook.trainer.TrainConfig.result_name`, :meth:`~flowbook.runid.RunConfig.checkpoint_stem`) and which of a
stored result's fields trained it (:meth:`~flowbook.runid.RunConfig.trained_config`). A DLGM configuration also gives
the data it trains and is tested on and how a row is evaluated
(:meth:`~flowbook.trainer.TrainConfig.row_metrics`, the paper's §6.2 protocol); its training is Algorithm 1
in :func:`flowbook.trainer.train`, the 2-D fits' is :func:`flowbook.experiments2d.train`. Checkpoints are
:mod:`flowbook.checkpoints`; every result is written by :func:`write_result`.

Exit statuses of the commands: 0 done (or already done: nothing changed), 1 a fault of the data or the
numbers (a damaged dataset file, a diverged run), 2 refused (bad option, damaged or foreign checkpoint, a
stored result or weights of another run), 3 stopped by ``--max-minutes`` after checkpointing (run the same
command again to resume). Nothing stored is replaced without ``--overwrite`` (:func:`stored_rows`,
:func:`finish`).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import pretrained
from .checkpoints import CheckpointError, find_checkpoint, first_line, load_checkpoint
from .evaluation import points_file_name, save_point_values
from .results import add_evaluation, describe_device, name_lock, save_result
from .runid import RunConfig, config_digest

if TYPE_CHECKING:  # flowbook.trainer imports this module
    from .trainer import Run, TrainConfig

__all__ = ["pick_device", "refuse_overwrite", "stored_rows", "write_result",
           "command_line", "train_command", "needs_evaluation", "load_finished_run", "finish"]


def pick_device(name: str | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA when available, else the CPU; any other name as given (checked by
    :func:`flowbook.options.check_device` on the command line)."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def _this_configurations(path: Path, cfg: RunConfig) -> dict | None:
    """The stored result at ``path`` when :meth:`~flowbook.runid.RunConfig.trained_config` of it is ``cfg`` (a finished
    run of this configuration: only finished runs write results), else None (absent, unreadable, other)."""
    try:
        record = json.loads(path.read_text())
        stored = cfg.trained_config(record["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(stored, dict) and config_digest(stored) == cfg.digest() else None


def stored_rows(cfg: TrainConfig, out_dir: str | Path, weights_dir: str | Path | None,
                overwrite: bool) -> dict[str, dict | None]:
    """What is stored of every row of ``cfg``: {row name: its stored result when it is this
    configuration's finished run (with its weights, when ``weights_dir`` is given), else None: the row
    is new, or ``overwrite`` lets it be replaced}.

    Raises FileExistsError (without ``overwrite``) when writing a row would replace a file that is not
    this configuration's: a result of another configuration in ``out_dir``, or weights in ``weights_dir``
    beside which ``out_dir`` holds no result of this configuration (e.g. ``--out`` elsewhere and the
    committed ``data/weights``). Called before training and again under the rows' locks just before
    writing (:func:`finish`), so that of two runs writing one name the second is refused."""
    out: dict[str, dict | None] = {}
    for flow, K in cfg.rows:
        name = cfg.result_name(flow, K)
        out[name] = None
        if overwrite:
            continue
        result = Path(out_dir) / f"{name}.json"
        weights = Path(weights_dir) / f"{name}.pt" if weights_dir is not None else None
        refuse_overwrite(result, cfg, False)
        record = _this_configurations(result, cfg)
        if weights is not None and weights.exists() and record is None:
            raise FileExistsError(f"{weights} exists and {result} is not this configuration's result, so the "
                                  "weights belong to another run; give the run a --label or another "
                                  "--weights-dir, or pass --overwrite to replace them")
        if weights is not None and record is not None and not weights.exists():
            raise FileExistsError(f"{result} is this configuration's result but its weights {weights} are "
                                  "missing; pass --overwrite to evaluate again and write both")
        out[name] = record
    return out


def write_result(name: str, cfg: RunConfig, *, out_dir: str | Path, config: dict[str, Any], metrics: dict[str, Any],
                 device: str | torch.device, wall_time_s: float, command: str | None = None,
                 overwrite: bool = False, name_option: str = "--label") -> Path:
    """Write ``<out_dir>/<name>.json`` with provenance (:func:`flowbook.results.save_result`: command,
    commit, device, date, wall time, ``config``), unless it holds a result of another configuration
    (:func:`refuse_overwrite`, FileExistsError, suggesting ``name_option``); returns its path. The check
    and the write happen under the name's :func:`~flowbook.results.name_lock`. ``config`` must hold
    ``cfg``'s fields where :meth:`~flowbook.runid.RunConfig.trained_config` looks for them, so that the next run
    recognizes the file."""
    with name_lock(out_dir, name):
        refuse_overwrite(Path(out_dir) / f"{name}.json", cfg, overwrite, name_option)
        return save_result(name, config=config, metrics=metrics, device=device, command=command,
                           wall_time_s=wall_time_s, directory=out_dir)


def command_line(prog: str, argv: list[str]) -> str:
    """The command as a shell would take it, for a result's provenance."""
    return f"{prog} " + " ".join(shlex.quote(a) for a in argv)


def train_command(cfg: TrainConfig, args: argparse.Namespace, *, prog: str, evaluate: bool = True,
                  **train_options: Any) -> Run | int:
    """A command line's training step: refuse now (not after hours of training; only when the run will
    ``evaluate``) a row whose result or weights belong to another run (:func:`stored_rows`), stop at
    once when every row is already this configuration's finished run, set ``--threads``, pick
    ``--device``, and train from ``--ckpt-dir`` (resuming; ``--restart``, ``--max-minutes``). Returns the
    finished :class:`~flowbook.trainer.Run`, or the exit status: 0 when every row was already done (nothing
    changed), 2 when something was refused (one line on stderr), 3 when the run stopped before its last
    update (checkpointed; run the command again)."""
    from .options import weights_dir_for
    from .trainer import train

    error = f"{prog} {args.command}: error: "
    if evaluate:
        weights_dir = weights_dir_for(args)
        try:
            stored = stored_rows(cfg, args.out, weights_dir, args.overwrite)
        except FileExistsError as err:
            print(error + str(err), file=sys.stderr)
            return 2
        if all(record is not None for record in stored.values()):
            files = [str(Path(args.out) / f"{name}.json") for name in stored]
            if weights_dir is not None:
                files += [str(Path(weights_dir) / f"{name}.pt") for name in stored]
            print(f"done: this configuration is trained and evaluated, in {', '.join(files)}; nothing changed "
                  "(`eval` evaluates it again, --overwrite trains it again)")
            return 0
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


def needs_evaluation(record: dict, cfg: TrainConfig) -> bool:
    """Whether a stored result of ``cfg`` lacks the evaluation ``cfg`` asks for (``eval_points`` test
    points, S = ``eval_samples``): False when the run's own evaluation or an added one has exactly these
    (done); True when they are at least the run's own. Fewer points or samples than the stored evaluation
    raise :class:`~flowbook.options.OptionError`: a stored evaluation is never replaced by a smaller one."""
    from .options import OptionError

    own = record.get("metrics") or {}
    every = [own, *(record.get("evaluations") or [])]
    if any(isinstance(e, dict) and (e.get("points"), e.get("samples")) == (cfg.eval_points, cfg.eval_samples)
           for e in every):
        return False
    points, samples = own.get("points", 0), own.get("samples", 0)
    if cfg.eval_points < points or cfg.eval_samples < samples:
        raise OptionError(f"{record.get('name')} is stored with an evaluation on {points} test points with "
                          f"S = {samples}; --eval-points {cfg.eval_points} --eval-samples {cfg.eval_samples} is "
                          "smaller and would not replace it: ask for at least as many (or --overwrite)")
    return True


def load_finished_run(cfg: TrainConfig, ckpt_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """The finished run of ``cfg`` from its checkpoint, to evaluate it again; :class:`~flowbook.checkpoints.CheckpointError`
    (naming the file and the fix) when there is none, it is damaged or foreign, or training is not done."""
    from .trainer import Run, build_model

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
           overwrite: bool = False, add_evaluations: bool = False) -> dict[str, dict[str, Any]]:
    """Evaluate every row of a finished run on the test set and write one result JSON per row.

    Each row is evaluated with its best-validation parameters when the run validated
    (:meth:`flowbook.trainer.Run.final_rows`); with ``weights_dir``, rounded to float16 first
    (:func:`flowbook.pretrained.round_like_saved`) and saved there, so the result describes exactly the
    saved weights. ``x_test`` (default: the config's test set) is cut to ``eval_points``. Returns {row name:
    metrics}. A result's config holds the training and model configs, the data, the implementation the
    row's flow ran, and the training and validation logs.

    Nothing stored is replaced without ``overwrite``: a row whose result or weights belong to another run
    is refused (:func:`stored_rows`, FileExistsError) before anything is evaluated, and again under the
    rows' locks (:func:`flowbook.results.name_lock`) just before writing, so that of two runs writing one
    name the later one is refused. A row already stored by this configuration is not written again (its
    stored metrics are returned), except that with ``add_evaluations`` an evaluation it lacks
    (:func:`needs_evaluation`) is appended to its result (:func:`flowbook.results.add_evaluation`). Each
    row's weights and result are written as a pair: if writing fails, every file this call wrote is
    restored to what it was."""
    cfg = run.config
    names = [cfg.result_name(flow, K) for flow, K in cfg.rows]
    if weights_dir is not None and out_dir is None:
        raise ValueError("weights are saved only with their result: give out_dir with weights_dir")
    stored = stored_rows(cfg, out_dir, weights_dir, overwrite) if out_dir is not None else dict.fromkeys(names)
    x_test = (cfg.test_data() if x_test is None else x_test)[:cfg.eval_points]
    data = cfg.data_record()
    out, evaluated = _evaluate_rows(run, names, stored, x_test, rounded=weights_dir is not None, progress=progress,
                                    add_evaluations=add_evaluations)
    if out_dir is None or not evaluated:
        return out
    weights_of = dict.fromkeys(names) if weights_dir is None else {name: f"data/weights/{name}.pt" for name in names}
    with ExitStack() as locks:
        for name in sorted(names):  # one order for every process: two runs never wait for each other
            locks.enter_context(name_lock(out_dir, name))
        stored = stored_rows(cfg, out_dir, weights_dir, overwrite)  # what other processes wrote meanwhile
        written: list[tuple[Path, bytes | None]] = []
        try:
            for r, row, name, metrics, per_point in evaluated:
                twin = stored[name] is not None  # this configuration's row: stored before, or by a twin meanwhile
                if twin and not (add_evaluations and needs_evaluation(stored[name], cfg)):
                    continue
                files = _row_files(name, twin, out_dir, weights_dir, metrics if per_point is not None else None)
                written += [(path, path.read_bytes() if path.exists() else None) for path in files]
                if per_point is not None:
                    metrics["points_file"] = save_point_values(out_dir, name, metrics["samples"], 1234, **per_point)
                entry = {**metrics, "seed": 1234, "weights": weights_of[name], **data,
                         "torch_threads": torch.get_num_threads()}
                if twin:  # this configuration's row, stored already: only the evaluation is added
                    add_evaluation(Path(out_dir) / f"{name}.json", entry, device=device, command=command)
                    continue
                if weights_dir is not None:
                    pretrained.save(row, name, weights_dir)
                save_result(name, config=_result_config(run, r, row.config.to_dict(), data, device, weights_of[name]),
                            metrics=metrics, device=device, command=command, directory=out_dir,
                            wall_time_s=run.train_seconds + metrics["eval_seconds"])
        except BaseException:
            _restore(written)
            raise
    return out


def _row_files(name: str, twin: bool, out_dir: str | Path, weights_dir: str | Path | None,
               points_of: dict[str, Any] | None) -> list[Path]:
    """The files :func:`finish` writes for row ``name``: its result and weights (not for a ``twin``, a row
    already stored, which only gains an evaluation) and, given the metrics ``points_of``, the file of each
    test point's values beside the result (seed: evaluate's)."""
    files = [] if twin else [Path(out_dir) / f"{name}.json"]
    if weights_dir is not None and not twin:
        files.append(Path(weights_dir) / f"{name}.pt")
    if points_of is not None:
        files.append(Path(out_dir) / points_file_name(name, points_of["samples"], points_of["points"], 1234))
    return files


def _evaluate_rows(run: Run, names: list[str], stored: dict[str, dict | None], x_test: Tensor, *, rounded: bool,
                   progress: bool | None, add_evaluations: bool) -> tuple[dict[str, dict[str, Any]], list[tuple]]:
    """:func:`finish`'s evaluations: {name: metrics} of every row (a stored row's own, unless it needs an
    evaluation added), and (r, row, name, metrics, per-point values) of each row evaluated here; with
    ``rounded``, a row is rounded to its saved float16 weights first."""
    cfg = run.config
    out, evaluated = {}, []
    for r, (row, name) in enumerate(zip(run.final_rows(), names)):
        if stored[name] is not None and not (add_evaluations and needs_evaluation(stored[name], cfg)):
            out[name] = stored[name]["metrics"]
            continue
        best = run.best[r] if r < len(run.best) else None
        if rounded:
            pretrained.round_like_saved(row)
        t0 = time.perf_counter()
        metrics = cfg.row_metrics(row, x_test, progress=progress)
        metrics["eval_seconds"] = round(time.perf_counter() - t0, 3)
        per_point = metrics.pop("per_point", None)  # written with the result, by finish
        metrics["final_train_free_energy"] = run.log[-1]["free_energy"][r] if run.log else None
        if best is not None:
            metrics["best_valid_free_energy"] = best["free_energy"]
        out[name] = metrics
        evaluated.append((r, row, name, metrics, per_point))
    return out, evaluated


def _restore(written: list[tuple[Path, bytes | None]]) -> None:
    """Put back what each path held before (None: it did not exist), last write first."""
    for path, before in reversed(written):
        if before is None:
            path.unlink(missing_ok=True)
        else:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.restore")
            tmp.write_bytes(before)
            os.replace(tmp, path)


def _result_config(run: Run, r: int, model: dict, data: dict, device: str | torch.device,
                   weights: str | None) -> dict[str, Any]:
    """The ``config`` of row r's result: what trained it, on what, with which code, and its logs."""
    from .models import DLGMConfig
    from .trainer import stage_chain

    cfg = run.config
    best = run.best[r] if r < len(run.best) else None
    row = DLGMConfig(**model)
    # what ran this row's flow (a diagonal row has none); planar rows keep the key they always had
    impl = row.flow_spec().implementation(device, cfg.dtype) if row.K else "none (diagonal Gaussian: no flow)"
    return {"train": asdict(cfg), "model": model, **data, "flow_impl": impl,
            **({"planar_impl": impl} if row.K and row.flow == "planar" else {}),
            "updates_done": run.step, "rows_trained_together": len(cfg.rows),
            "train_seconds": round(run.train_seconds, 3),
            "evaluated_at_update": best["step"] if best is not None else run.step,
            "weights": weights, "torch_threads": torch.get_num_threads(),
            **({"chain": stage_chain(cfg)} if getattr(cfg, "init_from", "") else {}),
            "log": [{"step": e["step"], "beta": e["beta"], "free_energy": e["free_energy"][r]} for e in run.log],
            "valid_log": [{"step": e["step"], "free_energy": e["free_energy"][r]} for e in run.valid_log]}
