"""Checkpoints of a training run, for every dataset: naming, atomic saves, resumption, leftovers.

A checkpoint holds the parameters, the optimizer state, the noise generator's state, the update count and
the training log of a run: of Algorithm 1 (:func:`flowbook.trainer.train`, MNIST and CIFAR-10) or of the 2-D
fits (:func:`flowbook.experiments2d.train`). It is named after its configuration
(:meth:`flowbook.runid.RunConfig.checkpoint_stem` and the digest). It is written atomically (a
per-process temporary, fsynced, then renamed), so a run killed at any moment (even with ``kill -9``)
leaves the previous checkpoint intact; temporaries of killed saves are removed at the next start. A
checkpoint that cannot be read, or whose stored config is not the command's, is refused with a
:class:`CheckpointError` that names the file and the fix.
"""
from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import asdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .results import require_writable_dir
from .runid import RunConfig, training_fields

__all__ = ["CheckpointError", "RESTART_HINT", "checkpoint_path", "legacy_checkpoint_path", "find_checkpoint",
           "prepare_ckpt_dir", "remove_dead_temporaries", "open_checkpoint", "load_checkpoint", "save_atomic",
           "first_line"]

#: What a refused checkpoint's message tells the user to do.
RESTART_HINT = "delete it, or run the same command with --restart (restart=True in train()) to start over"
#: The keys every checkpoint of :func:`flowbook.trainer.train` holds (``valid_log`` and ``best`` came later and
#: may be absent).
KEYS = ("config", "step", "model", "optim", "noise", "log", "log_acc", "log_acc_n", "train_seconds")


class CheckpointError(RuntimeError):
    """A checkpoint (or its directory) that a run cannot use; the message names the file and the fix."""


def first_line(err: BaseException) -> str:
    """``Type: first line of the message``: enough to recognise a torch or pickle error in one line."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def checkpoint_path(cfg: RunConfig, ckpt_dir: str | Path) -> Path:
    """``<ckpt_dir>/<stem>_<digest>.pt``, e.g. ``mnist_stored_planar80_1e13cfaad81e.pt``.

    The stem (:meth:`~flowbook.runid.RunConfig.checkpoint_stem`) names the dataset and the run; the digest
    (:meth:`~flowbook.runid.RunConfig.digest`) makes every training configuration its own file."""
    return Path(ckpt_dir) / f"{cfg.checkpoint_stem()}_{cfg.digest()}.pt"


def legacy_checkpoint_path(cfg: RunConfig, ckpt_dir: str | Path) -> Path | None:
    """The name an earlier version gave the checkpoint of ``cfg``, for a configuration whose names changed
    (it has a ``legacy_checkpoint_stem()``, e.g. :meth:`flowbook.cifar.CifarConfig.legacy_checkpoint_stem`);
    None for the others."""
    legacy = getattr(cfg, "legacy_checkpoint_stem", None)
    return Path(ckpt_dir) / f"{legacy()}_{cfg.digest()}.pt" if legacy is not None else None


def find_checkpoint(cfg: RunConfig, ckpt_dir: str | Path) -> Path:
    """The checkpoint file of ``cfg``: :func:`checkpoint_path`, or its legacy name when only that exists.

    A run that began under the legacy name goes on in that file (it is read and saved in place, never
    renamed), so a process of the earlier version still writing it is not disturbed."""
    path, legacy = checkpoint_path(cfg, ckpt_dir), legacy_checkpoint_path(cfg, ckpt_dir)
    return legacy if legacy is not None and legacy.exists() and not path.exists() else path


def prepare_ckpt_dir(ckpt_dir: str | Path) -> Path:
    """Create ``ckpt_dir`` if missing and check that files can be written there, so that a run fails at
    once instead of after its first ``ckpt_every`` updates; returns it as a Path."""
    ckpt_dir = Path(ckpt_dir)
    return require_writable_dir(ckpt_dir, CheckpointError, f"checkpoint directory {ckpt_dir} is not writable",
                                "fix its permissions or choose another --ckpt-dir")


def _pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError as err:
        return err.errno != errno.ESRCH
    return True


def remove_dead_temporaries(ckpt_dir: Path) -> list[Path]:
    """Delete ``*.pt.tmp<pid>`` files left by saves whose process was killed (its pid is not alive);
    a save in progress (live pid) is left alone. Returns the deleted paths."""
    removed = []
    for tmp in ckpt_dir.glob("*.pt.tmp*"):
        match = re.fullmatch(r".*\.pt\.tmp(\d+)", tmp.name)
        if match and tmp.is_file() and not _pid_is_alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _train_fields(config: dict) -> dict:
    # the fields a checkpoint's run depends on (as in config_digest), JSON-normalized (tuples → lists)
    return json.loads(json.dumps(training_fields(config)))


def open_checkpoint(cfg: RunConfig, ckpt_dir: str | Path, *, restart: bool = False, device: str | torch.device = "cpu",
                    keys: Sequence[str] = KEYS) -> tuple[Path, dict[str, Any] | None]:
    """Where a run of ``cfg`` checkpoints, and the state to resume from (None: start at update 0).

    Called before any data loads, so that a bad directory or checkpoint fails at once: the directory is
    created and checked (:func:`prepare_ckpt_dir`), temporaries of killed saves are removed, and with
    ``restart`` the checkpoint (under either name) is deleted; an existing one is read by
    :func:`load_checkpoint`."""
    remove_dead_temporaries(prepare_ckpt_dir(ckpt_dir))
    if restart:
        for old in (checkpoint_path(cfg, ckpt_dir), legacy_checkpoint_path(cfg, ckpt_dir)):
            if old is not None:
                old.unlink(missing_ok=True)
    path = find_checkpoint(cfg, ckpt_dir)
    return path, load_checkpoint(path, cfg, device, keys) if path.exists() else None


def load_checkpoint(path: Path, cfg: RunConfig, device: str | torch.device = "cpu",
                    keys: Sequence[str] = KEYS) -> dict[str, Any]:
    """Read a checkpoint of ``cfg``; raise :class:`CheckpointError` naming the file when it cannot be
    read, lacks one of ``keys``, holds non-finite parameters (a diverged run), or was written by another
    training configuration (its ``config`` is compared field by field, not only through the digest in its
    name; evaluation settings may differ)."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # truncated, random or empty files fail in torch/pickle with many types
        raise CheckpointError(f"checkpoint {path} is damaged and cannot be read ({first_line(err)}); "
                              f"{RESTART_HINT}") from err
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is damaged or not a flowbook checkpoint (it lacks {missing}); "
                              f"{RESTART_HINT}")
    params = state["model"].values() if isinstance(state.get("model"), dict) else ()  # the 2-D fits: other keys
    if not all(bool(torch.isfinite(t).all()) for t in params if torch.is_tensor(t) and t.is_floating_point()):
        raise CheckpointError(f"checkpoint {path} holds NaN or infinite parameters (its run diverged before it "
                              f"was saved): {RESTART_HINT} (a lower --lr is a new configuration with its own "
                              "checkpoint)")
    stored, wanted = _train_fields(state["config"]), _train_fields(asdict(cfg))
    if stored != wanted:
        absent = "<absent>"
        diff = sorted(k for k in stored.keys() | wanted.keys() if stored.get(k, absent) != wanted.get(k, absent))
        changes = ", ".join(f"{k}: {stored.get(k, absent)!r} in the checkpoint, {wanted.get(k, absent)!r} now"
                            for k in diff)
        raise CheckpointError(f"checkpoint {path} belongs to another configuration ({changes}); move it away "
                              f"to keep it, or {RESTART_HINT}")
    return state


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` to a per-process temporary, fsync, rename: a kill during the save leaves the
    previous checkpoint intact. A failed write (e.g. a full disk) raises :class:`CheckpointError`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # on disk before the rename, so a crash never leaves a renamed but empty file
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise CheckpointError(f"could not write checkpoint {path} ({err.strerror or err}); any earlier "
                                  "checkpoint is intact: free disk space or fix the directory, then run again") from err
        raise
