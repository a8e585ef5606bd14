"""The command line of the stored runs (:mod:`flowbook.store`): ``python -m flowbook store
{verify,fetch,manifest}``."""
from __future__ import annotations

import argparse
import sys

from . import store

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m flowbook store {verify,fetch,manifest}`` (see :mod:`flowbook.store`)."""
    parser = argparse.ArgumentParser(prog="python -m flowbook store",
                                     description="the stored runs: verify, fetch, or regenerate the manifest")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("verify", help="check every local stored file against the manifest (exit 1 on a mismatch)")
    p = sub.add_parser("fetch", help="download stored files into the cache")
    p.add_argument("names", nargs="*", help="a run's name (its .json and .pt) or a file's relpath")
    p.add_argument("--all", action="store_true", help="every stored file")
    sub.add_parser("manifest", help=f"regenerate {store.MANIFEST.name} from the clone (commit the data first)")
    args = parser.parse_args(argv)
    try:
        if args.command == "manifest":
            files = store.build_manifest()
            print(f"{store.write_manifest(files)}: {len(files)} files")
        elif args.command == "verify":
            checked, problems, strays = store.verify()
            where = store.REPO_ROOT if store.in_clone() else store.cache_dir()
            for s in strays:
                print(f"not stored (no table reads it): {s}")
            for problem in problems:
                print(problem, file=sys.stderr)
            print(f"{checked - len(problems)} of {checked} stored files in {where} match the manifest "
                  f"({len(store.manifest())} listed); {len(problems)} problem(s)")
            return 1 if problems else 0
        else:
            if bool(args.names) == args.all:
                parser.error("give the names of stored runs or --all")
            rels = sorted(store.manifest()) if args.all else store.names_to_relpaths(args.names)
            for rel in rels:
                print(store.fetch(rel))
    except store.StoreError as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0
