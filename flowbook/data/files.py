"""Files of the data root: where it is, and checks that every file is the one expected.

Every dataset file is checked before use (sha256, then shapes and dtypes; a hash is computed once per
process unless the file changes), and an unusable file raises :class:`DataFileError`, which names it
and says what to do. The npz caches share one layout (``x_train``, ``y_train``, ``x_test``, ``y_test``),
written byte for byte as ``get_datasets.sh`` writes it, so a cache built from torchvision's download has
the reference sha256.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["DataFileError", "data_root", "offline_hint", "GET_DATASETS", "file_sha256", "record_verified",
           "check_sha256", "check_arrays", "load_npz", "write_npz", "torchvision_root", "split_name", "ensure_npz",
           "load_split"]

GET_DATASETS = "get_datasets.sh"  # ../shared/datasets/get_datasets.sh, seen from the repository root
_VERIFIED_LIST = ".verified-sha256"  # written by get_datasets.sh: hashes of verified local builds


class DataFileError(RuntimeError):
    """A dataset file is missing, corrupt or has the wrong layout; the message says what to do."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The directory holding the datasets, created if needed.

    Order: the ``root`` argument, else the environment variable ``FLOWBOOK_DATA``, else
    ``<repo>/data/datasets`` when flowbook runs from a checkout (a ``pyproject.toml`` next to the
    package), else ``./data/datasets`` in the working directory (e.g. ``/content`` in Colab).
    :class:`DataFileError` when it is a file or cannot be created.
    """
    root_given = root is not None
    if root is None:
        root = os.environ.get("FLOWBOOK_DATA") or None
    from_env = not root_given and root is not None
    if root is None:
        repo = Path(__file__).resolve().parents[2]  # flowbook/data/files.py → the checkout
        base = repo if (repo / "pyproject.toml").is_file() else Path.cwd()
        root = base / "data" / "datasets"
    path = Path(root).expanduser()
    source = "the root argument" if root_given else ("FLOWBOOK_DATA" if from_env else "the default data root")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataFileError(f"{source} {path} is a file, not a directory; point it at a directory") from None
    except OSError as err:  # a parent that is a file, no permission, a read-only disk
        raise DataFileError(f"{source} {path} cannot be used as a directory ({err.strerror or err}); "
                            "point it at a directory you can write") from None
    return path


def offline_hint(root: Path) -> str:
    return (f"offline, build it from the repository root with `bash ../shared/datasets/{GET_DATASETS} {root}` "
            f"(see CONTRIBUTING.md); online, call again with download=True so torchvision downloads it")

# (path, size, mtime_ns) -> sha256, so a file is hashed once per process unless it changes.
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def _locally_verified(path: Path) -> set[str]:
    """Hashes that ``get_datasets.sh`` (or this module) recorded as verified builds of ``path`` here."""
    listing = path.parent / _VERIFIED_LIST
    if not listing.is_file():
        return set()
    out = set()
    for line in listing.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == path.name:
            out.add(parts[0])
    return out


def record_verified(path: Path) -> None:
    """Add ``path``'s hash to the verified list (same format as get_datasets.sh)."""
    listing = path.parent / _VERIFIED_LIST
    lines = listing.read_text().splitlines() if listing.is_file() else []
    lines = [ln for ln in lines if ln.split()[-1:] != [path.name]]
    lines.append(f"{file_sha256(path)}  {path.name}")
    tmp = listing.with_name(listing.name + f".tmp{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, listing)


def check_sha256(path: Path, expected: set[str], fix: str) -> None:
    got = file_sha256(path)
    if got not in expected:
        raise DataFileError(
            f"{path} is corrupt or not the expected build: sha256 {got}, expected "
            f"{' or '.join(sorted(expected))}. Delete {path} and {fix}.")


def check_arrays(path: Path, arrays: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
                  fix: str) -> None:
    for name, shape in shapes.items():
        if name not in arrays:
            raise DataFileError(f"{path} lacks the array {name!r}. Delete {path} and {fix}.")
        a = arrays[name]
        if a.dtype != np.uint8 or a.shape != shape:
            raise DataFileError(f"{path}: {name} is {a.dtype} {a.shape}, expected uint8 {shape}. "
                                f"Delete {path} and {fix}.")


def load_npz(path: Path, sha256: str, shapes: dict[str, tuple[int, ...]], fix: str) -> dict[str, np.ndarray]:
    """Load the arrays named in ``shapes`` from a verified npz (sha256 of the whole file first, then
    shapes and dtypes); the other arrays are not read."""
    check_sha256(path, {sha256} | _locally_verified(path), fix)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in shapes if name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:  # a locally "verified" file can still be bad
        raise DataFileError(f"{path} cannot be read ({err}). Delete {path} and {fix}.") from err
    check_arrays(path, arrays, shapes, fix)
    return arrays


def _npy_bytes(a: np.ndarray) -> bytes:
    """``.npy`` format 1.0 with numpy's header layout spelled out, so the bytes do not depend on the
    installed numpy version (the same layout as get_datasets.sh)."""
    a = np.ascontiguousarray(a)
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (a.dtype.str, tuple(a.shape))
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"  # pad: data starts 64-aligned
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + a.tobytes()


def write_npz(path: Path, arrays: Sequence[tuple[str, np.ndarray]]) -> None:
    """Write an uncompressed npz with fixed zip metadata (reproducible bytes), atomically: a
    concurrent reader sees either no file or the whole file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for name, a in arrays:
                info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type, info.create_system, info.external_attr = zipfile.ZIP_STORED, 3, 0o644 << 16
                z.writestr(info, _npy_bytes(a))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def torchvision_root(root: Path) -> Path:
    return root / "torchvision"


def split_name(split: str, allowed: Sequence[str]) -> str:
    if split not in allowed:
        raise ValueError(f"split must be one of {', '.join(map(repr, allowed))}, got {split!r}")
    return split


def ensure_npz(path: Path, download: bool, fetch: Callable[[], None], name: str, fix: str) -> None:
    """Make sure ``path`` exists: if it is missing, build it with ``fetch`` (a torchvision download),
    or raise an error that names the file and says what to do."""
    if path.is_file():
        return
    if not download:
        raise DataFileError(f"{path} is missing: {fix}.")
    try:
        fetch()
    except Exception as err:  # offline: torchvision raises RuntimeError / URLError
        raise DataFileError(f"{path} is missing and torchvision could not download {name} ({err}); "
                            f"{fix}.") from err


def load_split(root: Path, filename: str, name: str, sha256: str, shapes: dict, fetch: Callable[[], None],
                split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, int64 labels)`` of one split of an npz cache in the shared layout (x_/y_ train/test),
    fetching the file with ``fetch`` when it is missing and checking its sha256 and shapes."""
    split = split_name(split, ("train", "test"))
    path, fix = root / filename, offline_hint(root)
    ensure_npz(path, download, fetch, name, fix)
    arrays = load_npz(path, sha256, {k: shapes[k] for k in (f"x_{split}", f"y_{split}")}, fix)
    return torch.from_numpy(arrays[f"x_{split}"]), torch.from_numpy(arrays[f"y_{split}"]).long()
