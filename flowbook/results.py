"""Results with provenance: every reproduced number comes from a JSON file in ``data/results/``.

A result records the command, the git commit, the device, the date, the wall time and the full
configuration of the run that produced it, so a reader can trace a number in the book to a run.
The committed results are read through :mod:`flowbook.store`, so they are there and verified wherever
flowbook is installed (a clone's files, or downloads at their pinned commit, e.g. in Colab).
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import torch

from . import store
from .store import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "data" / "results"
REQUIRED = ("name", "command", "commit", "device", "date", "wall_time_s", "config", "metrics")


def git_commit() -> str:
    """The current commit (with ``+dirty`` if the tree has changes), or ``unknown`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def describe_device(device: torch.device | str) -> str:
    """A human-readable device name, e.g. ``cuda: NVIDIA H100 80GB HBM3`` or ``cpu: x86_64, 2 threads``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.machine()}, {torch.get_num_threads()} threads"


def _finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or ±inf float replaced by None (JSON null): Python's json writes them as
    ``NaN``/``Infinity``, which strict JSON readers (browsers, jq, most languages) reject."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def ensure_writable_dir(directory: Path | str) -> Path:
    """Create ``directory`` if missing and write and remove a probe file there; raises OSError if that
    fails, so that a long run can refuse at once instead of failing at its first save."""
    directory = Path(directory)
    probe = directory / f".write-test-{os.getpid()}-{uuid4().hex[:8]}"
    directory.mkdir(parents=True, exist_ok=True)
    probe.touch(exist_ok=False)
    probe.unlink()
    return directory


def require_writable_dir(directory: Path | str, error: type[Exception], what: str, fix: str) -> Path:
    """:func:`ensure_writable_dir`, its OSError raised again as ``error`` saying ``what`` failed, why, and
    the ``fix``."""
    try:
        return ensure_writable_dir(directory)
    except OSError as err:
        raise error(f"{what} ({err.strerror or err}); {fix}") from err


def save_result(name: str, *, config: dict[str, Any], metrics: dict[str, Any], wall_time_s: float,
                device: torch.device | str, command: str | None = None,
                directory: Path | str | None = None) -> Path:
    """Write ``<directory>/<name>.json`` with provenance and return its path.

    The file is strict JSON: a NaN or infinite number (e.g. a diverged metric) is written as null.
    Concurrent writers of the same name do not disturb each other: each writes its own temporary
    file and renames it into place, so the file holds one complete record (the last rename wins)."""
    directory = Path(directory) if directory is not None else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "command": command if command is not None else " ".join([Path(sys.executable).name] + sys.argv),
        "commit": git_commit(),
        "device": describe_device(device),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(float(wall_time_s), 3),
        "torch": torch.__version__,
        "config": config,
        "metrics": metrics,
    }
    return write_json_atomic(directory / f"{name}.json", record)


def write_json_atomic(path: Path, record: dict[str, Any], indent: int | None = 2) -> Path:
    """Write ``record`` as strict JSON (non-finite numbers as null) to ``path`` atomically (a reader never
    sees half a file); returns ``path``."""
    text = json.dumps(_finite_or_null(record), indent=indent, sort_keys=False, allow_nan=False) + "\n"
    # one temporary file per call (pid and a random tag), in the same directory so the rename is atomic
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid4().hex[:12]}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    return path


#: Lock files this process holds (:func:`name_lock`), so that a holder may take its own lock again:
#: ``flock`` locks belong to an open file, and a second open of the same file in one process would wait
#: for the first for ever.
_HELD: set[Path] = set()


@contextmanager
def name_lock(directory: Path | str, name: str) -> Iterator[Path]:
    """Hold the exclusive lock of the stored row ``name`` in ``directory`` (``<directory>/.<name>.lock``,
    created if missing and never deleted, since deleting a lock file lets two processes lock two files).

    Every writer of a row's result and weights holds it (:func:`flowbook.runner.finish` for the pair,
    :func:`add_evaluation`), so that a writer sees the row as the last one left it and its check ("is
    this my configuration's row?") is still true when it writes. Re-entrant within one process; waits for
    another process's lock. Yields the lock file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = (directory / f".{name}.lock").resolve()
    if lock in _HELD:
        yield lock
        return
    with open(lock, "a", encoding="utf-8") as f:  # "a": creates the file but never truncates a held one
        fcntl.flock(f, fcntl.LOCK_EX)
        _HELD.add(lock)
        try:
            yield lock
        finally:
            _HELD.discard(lock)
            fcntl.flock(f, fcntl.LOCK_UN)


def add_evaluation(path: Path | str, evaluation: dict[str, Any], *, device: torch.device | str,
                   command: str | None = None) -> bool:
    """Add a later evaluation of a stored run (e.g. with more importance samples) to its result file.

    The entry goes to the end of the record's ``evaluations`` list with its own provenance (command,
    commit, device, date). Evaluations are only ever appended: when an entry with the same ``samples``,
    ``points`` and ``seed`` is already there, nothing changes and False is returned (True: added). The
    record's own fields, which describe the run that trained the weights, are left as they are. The
    file is read and written under the row's :func:`name_lock`, so concurrent additions all arrive."""
    path = Path(path)
    entry = {"command": command if command is not None else " ".join([Path(sys.executable).name] + sys.argv),
             "commit": git_commit(), "device": describe_device(device),
             "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
             "torch": torch.__version__, **evaluation}
    with name_lock(path.parent, path.stem):
        record = load_result(path)
        if find_evaluation(record, entry) is not None:
            return False
        record["evaluations"] = [*record.get("evaluations", []), entry]
        write_json_atomic(path, record)
    return True


def find_evaluation(record: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The entry of ``record["evaluations"]`` with ``wanted``'s ``samples``, ``points`` and ``seed``, or None."""
    key = ("samples", "points", "seed")
    for entry in record.get("evaluations") or []:
        if isinstance(entry, dict) and all(entry.get(k) == wanted.get(k) for k in key):
            return entry
    return None


def evaluation(record: dict[str, Any], samples: int | None = None) -> dict[str, Any]:
    """The metrics of a stored run's evaluation on its whole test set: the one with ``samples`` importance
    samples, or the one with the most samples when ``samples`` is None.

    The training run's own evaluation is ``record["metrics"]``; later ones, added by :func:`add_evaluation`
    (e.g. the paper's S = 5000 for Table 2), are in ``record["evaluations"]``. Only evaluations on as many
    test points as the run's own count, so that a subset's number never stands in for the test set's."""
    points = record["metrics"]["points"]
    every = [record["metrics"], *record.get("evaluations", [])]
    found = [m for m in every if m.get("points") == points and samples in (None, m.get("samples"))]
    if not found:
        have = sorted(m.get("samples") for m in every if m.get("points") == points)
        name = record.get("name", "NAME")
        raise KeyError(f"{name} has no evaluation with S = {samples} on its {points} test points (it has "
                       f"S = {have}); add one with `python -m flowbook evaluate-weights {name} --samples {samples}`")
    return max(found, key=lambda m: m["samples"])


def load_result(path: Path | str) -> dict[str, Any]:
    """Read a result and check that its provenance fields are present.

    A stored result (``RESULTS_DIR / "bench_dlgm.json"``) that is not here, as outside a clone, is
    read from the store instead (:func:`flowbook.store.path`: downloaded once, checked by SHA-256)."""
    path = Path(path)
    rel = store.relpath_of(path)
    if rel in store.manifest() and not path.exists():
        path = store.path(rel)
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}); delete it and re-run the experiment") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it and re-run the experiment") from err
    if not isinstance(record, dict):
        kind = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string",
                list: "array"}.get(type(record), type(record).__name__)
        raise ValueError(f"{path} holds a JSON {kind}, not a result record (an object with "
                         f"{', '.join(REQUIRED)}); delete it and re-run the experiment")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"{path} lacks provenance fields {missing}; re-run the experiment to regenerate it")
    return record


def load_results(prefix: str = "", directory: Path | str | None = None) -> list[dict[str, Any]]:
    """All results whose file name starts with ``prefix``, sorted by name.

    Without ``directory``: the stored results the manifest lists (:mod:`flowbook.store`), each checked
    by SHA-256, so that a stray or copied file in ``data/results/`` never enters a table; with it, every
    ``<directory>/<prefix>*.json`` (e.g. the output folder of a run)."""
    if directory is None:
        return [load_result(store.path(rel)) for rel in store.listed(f"data/results/{prefix}")
                if rel.endswith(".json")]
    return [load_result(p) for p in sorted(Path(directory).glob(f"{prefix}*.json"))]
