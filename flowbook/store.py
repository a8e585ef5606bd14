"""The stored runs (``data/results/``, ``data/weights/``), reachable and verified wherever flowbook is installed.

The repository holds one copy of each stored file; the package (the wheel Colab installs) holds none.
It ships a manifest instead, ``flowbook/store_manifest.json``: for every tracked file under
``data/results/`` and ``data/weights/``, its size, its SHA-256 and the commit that last changed it, so
that the file can be fetched at that pinned revision and checked (the torch.hub / huggingface_hub way).
:func:`path` resolves a stored file:

- **inside a clone** (the package's parent folder holds ``.git``, e.g. an editable install) it is the
  local file, accepted only if its size and SHA-256 match the manifest; no network;
- **anywhere else** (Colab, a wheel in site-packages) it is downloaded once from
  ``{base}/{commit}/{relpath}`` into the cache ``{cache}/store/{commit}/{relpath}`` and checked.
  ``base`` is ``$FLOWBOOK_STORE_URL`` (a mirror, or a server of a clone, as ``.ci/colab_check`` uses),
  else :data:`DEFAULT_URL`; ``cache`` is ``$FLOWBOOK_CACHE``, else ``$XDG_CACHE_HOME/flowbook``, else
  ``~/.cache/flowbook`` (the compiled kernels' cache, :func:`flowbook.kernels.native.cache_dir`).

``FLOWBOOK_STORE_LOCAL=0`` makes a clone behave like an installation outside any clone (tests use it).
Only files listed in the manifest are stored runs: a stray or copied file in ``data/results/`` never
enters a table, and a changed one is refused with a message saying how to restore it.

Command line (:mod:`flowbook.storecli`)::

    python -m flowbook store verify          # every local stored file against the manifest
    python -m flowbook store fetch NAME ...  # a run: NAME.json and NAME.pt
    python -m flowbook store fetch --all     # every stored file, into the cache
    python -m flowbook store manifest        # regenerate it (data committed first)

Adding a stored run takes two commits: the data files first, then the manifest that
``store manifest`` writes (it records the data's commit, so it refuses uncommitted data files).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from uuid import uuid4

__all__ = ["REPO_ROOT", "STORED_DIRS", "MANIFEST", "DEFAULT_URL", "StoreError", "DownloadError", "manifest",
           "in_clone", "base_url", "cache_dir", "listed", "relpath_of", "restore_hint", "path", "fetch", "check_file",
           "build_manifest", "write_manifest", "verify", "names_to_relpaths"]

#: The clone's root when flowbook runs from a clone; site-packages when it is installed from a wheel.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: The folders (relative to the repository's root) whose tracked files the manifest lists.
STORED_DIRS = ("data/results", "data/weights")
#: The manifest, shipped in the package beside this module (package data of the wheel).
MANIFEST = Path(__file__).with_name("store_manifest.json")
MANIFEST_FORMAT = "flowbook-store-manifest-1"
#: The base URL of downloads outside a clone, as ``{DEFAULT_URL}/{commit}/{relpath}``.
DEFAULT_URL = "https://raw.githubusercontent.com/flowbook/flowbook"
_CHUNK = 1 << 20


class StoreError(ValueError):
    """A stored file that is missing, unlisted or not what the manifest says; the message names the
    file, what was expected and found, and how to restore it."""


class DownloadError(StoreError, OSError):
    """A stored file that could not be downloaded (network, server, or a server holding other bytes)."""


@functools.cache
def manifest() -> dict[str, dict]:
    """The shipped manifest: {relpath: {"size", "sha256", "commit"}}, e.g. key
    ``data/weights/mnist_stored_updates240k_planar_K80.pt``."""
    try:
        record = json.loads(MANIFEST.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise StoreError(f"the store manifest {MANIFEST} is missing or unreadable ({err}); reinstall "
                         "flowbook, or in a clone run `git checkout -- flowbook/store_manifest.json`") from err
    if not isinstance(record, dict) or record.get("format") != MANIFEST_FORMAT \
            or not isinstance(record.get("files"), dict):
        raise StoreError(f"{MANIFEST} is not a {MANIFEST_FORMAT} file; reinstall flowbook")
    return record["files"]


def in_clone() -> bool:
    """Whether stored files are read from the local clone (see the module docstring)."""
    return os.environ.get("FLOWBOOK_STORE_LOCAL", "1") != "0" and (REPO_ROOT / ".git").exists()


def base_url() -> str:
    """``$FLOWBOOK_STORE_URL`` without a trailing slash, else :data:`DEFAULT_URL`."""
    return (os.environ.get("FLOWBOOK_STORE_URL") or DEFAULT_URL).rstrip("/")


def cache_dir() -> Path:
    """The folder downloads go to: ``store/`` in flowbook's cache (``$FLOWBOOK_CACHE``, else
    ``$XDG_CACHE_HOME/flowbook``, else ``~/.cache/flowbook``)."""
    if os.environ.get("FLOWBOOK_CACHE"):
        return Path(os.environ["FLOWBOOK_CACHE"]) / "store"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flowbook" / "store"


def listed(prefix: str) -> list[str]:
    """The manifest's relpaths that start with ``prefix`` (e.g. ``data/results/mnist_stored_``), sorted."""
    return sorted(k for k in manifest() if k.startswith(prefix))


def relpath_of(file: str | Path) -> str | None:
    """``file``'s path relative to the repository's root, when it lies in a stored folder, else None."""
    try:
        rel = Path(file).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return None
    return rel if rel.startswith(tuple(d + "/" for d in STORED_DIRS)) else None


def restore_hint(relpath: str) -> str:
    """How to get the stored ``relpath`` back: from git inside a clone, else from the store."""
    name = Path(relpath).stem
    if in_clone():
        return (f"restore it with `git checkout -- {relpath}`; if you changed it on purpose, commit it and "
                f"run `python -m flowbook store manifest` (CONTRIBUTING: adding a stored result)")
    return (f"delete it and run `python -m flowbook store fetch {name}`, or set FLOWBOOK_STORE_URL to a "
            f"server that holds the repository's files")


@functools.lru_cache(maxsize=4096)
def _sha256(file: str, size: int, mtime_ns: int) -> str:
    # keyed by size and modification time: a file is hashed once per process unless it changes
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(file: str | Path, relpath: str) -> Path:
    """``file`` if its size and SHA-256 are the manifest's for ``relpath``; else :class:`StoreError`."""
    file = Path(file)
    entry = manifest()[relpath]
    try:
        st = file.stat()
    except OSError as err:
        raise StoreError(f"{file} cannot be read ({err}); {restore_hint(relpath)}") from err
    # the size first: a file of another size is not hashed
    sha = _sha256(str(file), st.st_size, st.st_mtime_ns) if st.st_size == entry["size"] else None
    if sha != entry["sha256"]:
        found = f"size {st.st_size}" + (f", sha256 {sha[:16]}…" if sha else "")
        raise StoreError(f"{file} is not the stored {relpath}: {found}, the manifest says size {entry['size']}, "
                         f"sha256 {entry['sha256'][:16]}… (commit {entry['commit'][:12]}); {restore_hint(relpath)}")
    return file


def _entry(relpath: str) -> dict:
    try:
        return manifest()[relpath]
    except KeyError:
        stored = ", ".join(d + "/" for d in STORED_DIRS)
        raise StoreError(f"{relpath} is not a stored file: the manifest ({MANIFEST.name}) lists the tracked "
                         f"files of {stored} only; see `python -m flowbook store verify`") from None


def path(relpath: str) -> Path:
    """The verified local path of the stored file ``relpath`` (e.g. ``data/results/bench_dlgm.json``):
    the clone's file inside a clone, else the cached download (fetched on first use)."""
    _entry(relpath)
    local = REPO_ROOT / relpath
    if in_clone() and local.exists():
        return check_file(local, relpath)
    return fetch(relpath)


def fetch(relpath: str) -> Path:
    """The cached copy of ``relpath``, downloaded at the manifest's commit unless a verified copy is
    already in the cache."""
    entry = _entry(relpath)
    target = cache_dir() / entry["commit"] / relpath
    if target.exists():
        try:
            return check_file(target, relpath)
        except StoreError:
            pass  # a damaged or partial copy in our own cache: download it again
    url = f"{base_url()}/{entry['commit']}/{relpath}"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid4().hex[:12]}.tmp")
    how = ((f"restore it with `git checkout -- {relpath}`, or " if in_clone() else "")
           + "check the network, or set FLOWBOOK_STORE_URL to a server that answers URL/COMMIT/PATH with the "
           "repository's file PATH at COMMIT, or work in a clone (git clone https://github.com/flowbook/flowbook)")
    try:
        digest, size = hashlib.sha256(), 0
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "xb") as out:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as err:
            raise DownloadError(f"could not download {relpath} from {url} ({err}); {how}") from err
        if (size, digest.hexdigest()) != (entry["size"], entry["sha256"]):
            raise DownloadError(f"{url} is not the stored {relpath}: size {size}, sha256 "
                                f"{digest.hexdigest()[:16]}…, the manifest says size {entry['size']}, sha256 "
                                f"{entry['sha256'][:16]}…; the server holds another version; {how}")
        os.replace(tmp, target)  # atomic: another process never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    return target


# --- the manifest, from the clone's git history -----------------------------------------------------------
def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or err
        raise StoreError(f"`git {' '.join(args)}` failed in {root} ({str(detail).strip()}); the manifest is "
                         "made in a clone of the repository with git installed") from err


def build_manifest(root: Path | str | None = None) -> dict[str, dict]:
    """{relpath: {size, sha256, commit}} for every tracked file of :data:`STORED_DIRS` in the clone
    ``root`` (default: :data:`REPO_ROOT`), ``commit`` being the last commit that changed the file. Refuses
    (:class:`StoreError`, naming them) data files with uncommitted changes: their commit would not hold
    these bytes."""
    root = Path(root) if root is not None else REPO_ROOT
    dirty = [line[3:] for line in _git(root, "status", "--porcelain", "--untracked-files=no", "--",
                                       *STORED_DIRS).splitlines()]
    if dirty:
        raise StoreError(f"uncommitted changes in {', '.join(dirty)}: commit the data files first, then run "
                         "`python -m flowbook store manifest` and commit the manifest")
    files = {}
    for rel in sorted(_git(root, "ls-files", "-z", "--", *STORED_DIRS).split("\0")):
        if not rel:
            continue
        st = (root / rel).stat()
        files[rel] = {"size": st.st_size, "sha256": _sha256(str(root / rel), st.st_size, st.st_mtime_ns),
                      "commit": _git(root, "log", "-1", "--format=%H", "--", rel).strip()}
    return files


def write_manifest(files: dict[str, dict], target: Path | str | None = None) -> Path:
    """Write ``files`` as the manifest (default: :data:`MANIFEST`), one file per line (small diffs),
    atomically."""
    target = Path(target) if target is not None else MANIFEST
    lines = [f"  {json.dumps(rel)}: {json.dumps(files[rel], sort_keys=True)}" for rel in sorted(files)]
    text = (f'{{\n "format": "{MANIFEST_FORMAT}",\n "files": {{\n' + ",\n".join(lines) + "\n }\n}\n")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    manifest.cache_clear()
    return target


def verify() -> tuple[int, list[str], list[str]]:
    """Check every stored file present here (the clone's files, else the cache's) against the manifest.

    Returns:
        The number of files checked, the problems (a changed or missing file, each with how to restore
        it) and the strays (files in the stored folders that the manifest does not list, which no table
        reads)."""
    checked, problems, strays = 0, [], []
    for rel, entry in manifest().items():
        file = REPO_ROOT / rel if in_clone() else cache_dir() / entry["commit"] / rel
        if not file.exists():
            if in_clone():
                problems.append(f"{rel} is missing; {restore_hint(rel)}")
            continue
        checked += 1
        try:
            check_file(file, rel)
        except StoreError as err:
            problems.append(str(err))
    if in_clone():
        for d in STORED_DIRS:
            strays += sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / d).glob("*")
                             if p.is_file() and p.relative_to(REPO_ROOT).as_posix() not in manifest())
    return checked, problems, strays


def names_to_relpaths(names: list[str]) -> list[str]:
    """The stored files of ``names``: a file's relpath, or a run's name (its .json and .pt); StoreError
    for a name that is neither."""
    out = []
    for name in names:
        found = [name] if name in manifest() else [r for r in manifest() if Path(r).stem == name]
        if not found:
            raise StoreError(f"{name!r} is neither a stored file nor the name of one (e.g. "
                             "mnist_stored_planar_K80 or data/results/bench_dlgm.json)")
        out += found
    return out
