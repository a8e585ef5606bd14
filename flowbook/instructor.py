"""Hand out chapters without their worked solutions.

Every exercise in a chapter has its worked solution in a markdown cell tagged ``solution`` (cell
metadata ``"tags": ["solution"]``, see CONTRIBUTING.md). This tool writes copies of notebooks with
those cells removed, so an instructor can give students the exercises and keep the answers::

    python -m flowbook.instructor strip chapters/*.ipynb --out handout/
    python -m flowbook.instructor strip chapters/03_*.ipynb --out handout/ --clear-outputs
    python -m flowbook.instructor count chapters/*.ipynb  # solution cells per notebook

``student-book`` copies the whole book into a folder as its *student edition* (solution cells
stripped, the instructor guide replaced by a note, no Colab links to the full notebooks), ready for
``jupyter-book build``; ``.ci/build_student_edition.sh`` does both and leaves the HTML in
``_build/student/html``::

    python -m flowbook.instructor student-book --out /tmp/student-book

Only the standard library is used, so it runs wherever Python does (also in Colab); ``student-book``
also reads the book's ``_config.yml`` with PyYAML, which jupyter-book brings. The notebooks are read
and written as plain JSON (nbformat 4), which keeps every other cell byte-for-byte equal.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

SOLUTION_TAG = "solution"


class NotebookError(ValueError):
    """A source that is not a usable notebook, or an ``--out`` that cannot take the copies; the message
    names the file and what to do (the command prints it as one line, exit status 2)."""


def is_solution(cell: dict[str, Any], tag: str = SOLUTION_TAG) -> bool:
    """True when the cell's ``metadata.tags`` contains ``tag``."""
    metadata = cell.get("metadata") if isinstance(cell, dict) else None
    tags = metadata.get("tags", []) if isinstance(metadata, dict) else []
    return isinstance(tags, list) and tag in tags


def count_solutions(nb: dict[str, Any], tag: str = SOLUTION_TAG) -> int:
    """How many cells of notebook ``nb`` (parsed JSON) are tagged ``tag``."""
    return sum(is_solution(cell, tag) for cell in nb.get("cells", []))


def strip_notebook(nb: dict[str, Any], *, clear_outputs: bool = False,
                   tag: str = SOLUTION_TAG) -> dict[str, Any]:
    """A copy of notebook ``nb`` without the cells tagged ``tag``.

    With ``clear_outputs`` code cells lose their outputs and execution counts too, so that students
    see empty cells and no results of the code they are meant to write or run themselves.
    """
    if not isinstance(nb.get("cells"), list):
        raise NotebookError("not a Jupyter notebook (nbformat 4): it has no 'cells' list")
    out = json.loads(json.dumps(nb))  # deep copy; notebooks are plain JSON
    out["cells"] = [cell for cell in out["cells"] if not is_solution(cell, tag)]
    if clear_outputs:
        for cell in out["cells"]:
            if isinstance(cell, dict) and cell.get("cell_type") == "code":
                cell["outputs"] = []
                cell["execution_count"] = None
        # Stored widget state belongs to outputs that no longer exist.
        if isinstance(out.get("metadata"), dict):
            out["metadata"].pop("widgets", None)
    return out


def read_notebook(path: Path) -> dict[str, Any]:
    """The notebook at ``path`` as parsed JSON; :class:`NotebookError` naming the file when it cannot be
    read, is not UTF-8 JSON, or is not an nbformat-4 notebook (an object with a list of cells, each an
    object, and object or absent metadata)."""
    try:
        nb = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NotebookError(f"cannot read notebook {path}: {err}. Pass .ipynb files (nbformat 4).") from None
    if not isinstance(nb, dict):
        raise NotebookError(f"{path} holds a JSON {type(nb).__name__}, not a notebook (a JSON object with "
                            "cells). Pass .ipynb files (nbformat 4).")
    if nb.get("nbformat") != 4:
        raise NotebookError(f"{path} is nbformat {nb.get('nbformat')!r}; only nbformat 4 is supported. "
                            "Upgrade it with `jupyter nbconvert --to notebook --inplace`.")
    cells = nb.get("cells")
    if not isinstance(cells, list) or not all(isinstance(cell, dict) for cell in cells) \
            or not isinstance(nb.get("metadata", {}), dict):
        raise NotebookError(f"{path} is not a valid nbformat-4 notebook (it needs a list of cells, each an "
                            "object, and object metadata); repair it in Jupyter and save it again.")
    return nb


def write_notebook(nb: dict[str, Any], path: Path) -> None:
    """Write ``nb`` to ``path`` as a new file: a temporary beside it renamed into place, so that a link
    at ``path`` (a hardlink or symlink to a source, say) is replaced, never written through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # Same layout as Jupyter writes (indent 1, unicode kept), so diffs against the source stay small.
        tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _same_file(a: Path, b: Path) -> bool:
    # the same file under any name: the same path, a symlink or a hardlink
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def check_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` if missing and check that files can be written there; :class:`NotebookError`
    (naming it and the fix) when it is a file or not writable."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotebookError(f"--out {out_dir} is a file, not a directory; choose a directory for the copies")
    probe = out_dir / f".write-test-{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise NotebookError(f"--out {out_dir}: cannot write there ({err.strerror or err}); fix its permissions "
                            "or choose another directory") from None


def strip_files(sources: Iterable[Path], out_dir: Path, *, clear_outputs: bool = False,
                tag: str = SOLUTION_TAG) -> list[tuple[Path, int]]:
    """Strip each source into ``out_dir/<name>``; returns ``(written path, cells removed)`` pairs.

    Every source is read and checked before anything is written, so that a bad one writes nothing:
    :class:`NotebookError` when a source is not a notebook, two sources have the same file name (one
    copy would replace the other), a copy would be the source itself (same path, symlink or hardlink:
    the source would lose its solutions) or ``out_dir`` cannot be written. The sources are never
    modified: a file already at a copy's name is replaced, not written through."""
    out_dir = Path(out_dir)
    sources = [Path(src) for src in sources]
    seen: dict[str, Path] = {}
    for src in sources:
        if src.name in seen:
            raise NotebookError(f"{seen[src.name]} and {src} have the same name, so one copy in {out_dir} would "
                                "replace the other; strip them into different --out directories")
        seen[src.name] = src
        if _same_file(out_dir / src.name, src):
            raise NotebookError(f"refusing to overwrite the source {src}: choose another --out directory")
    notebooks = [(src, read_notebook(src)) for src in sources]
    check_out_dir(out_dir)
    written = []
    for src, nb in notebooks:
        stripped = strip_notebook(nb, clear_outputs=clear_outputs, tag=tag)
        dest = out_dir / src.name
        write_notebook(stripped, dest)
        written.append((dest, len(nb["cells"]) - len(stripped["cells"])))
    return written


#: What the book build does not need — top-level entries of the repository left out of the student
#: edition's copy (besides hidden ones and ``*.egg-info``). ``_vendor`` (offline MathJax and widget
#: libraries) is linked instead, for builds with .ci/offline_config.py's configuration.
NOT_BOOK = frozenset({"_build", "_vendor", "data", "node_modules", "handout", "flowbook", "tests",
                      "benchmarks", "__pycache__"})

#: The student edition's instructor page — same file name, so links and the table of contents still work.
STUDENT_INSTRUCTOR_PAGE = """# Instructor guide

This is the **student edition** of the book. The worked solutions of the exercises and the instructor
guide (teaching plan, expected answers and marking notes) are not part of it; your instructor has
them. Every exercise is at the end of its chapter, and the numerical checks in each chapter tell you
whether a derivation you reproduce in code is right.
"""


def student_book(root: str | os.PathLike, dest: str | os.PathLike, *, config: str | os.PathLike | None = None,
                 tag: str = SOLUTION_TAG) -> list[tuple[Path, int]]:
    """Copy the book at ``root`` into the new folder ``dest`` as its student edition.

    Every notebook loses its cells tagged ``tag`` (outputs kept), ``instructor.md`` becomes
    :data:`STUDENT_INSTRUCTOR_PAGE`, and ``_config.yml`` (read from ``config``, default the book's own)
    gets " (student edition)" after its title and no Colab launch links, which would open the full
    notebooks. Returns ``(notebook, cells removed)`` pairs. The sources are not modified.
    """
    import yaml  # jupyter-book's dependency; only this function needs it

    root, dest = Path(root).resolve(), Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise NotebookError(f"{dest} is not empty: choose a new folder for the student edition")
    dest.mkdir(parents=True, exist_ok=True)
    for entry in sorted(root.iterdir()):
        if entry.name in NOT_BOOK or entry.name.startswith(".") or entry.name.endswith(".egg-info"):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dest / entry.name,
                            ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "*.pyc"))
        else:
            shutil.copy2(entry, dest / entry.name)
    stripped = []
    for path in sorted(dest.rglob("*.ipynb")):
        nb = read_notebook(path)
        out = strip_notebook(nb, tag=tag)
        write_notebook(out, path)
        stripped.append((path, len(nb["cells"]) - len(out["cells"])))
    if (root / "_vendor").is_dir():
        (dest / "_vendor").symlink_to(root / "_vendor", target_is_directory=True)
    if (dest / "instructor.md").exists():
        (dest / "instructor.md").write_text(STUDENT_INSTRUCTOR_PAGE, encoding="utf-8")

    cfg = yaml.safe_load(Path(config or root / "_config.yml").read_text(encoding="utf-8")) or {}
    cfg["title"] = f"{cfg.get('title', 'flowbook')} (student edition)"
    launch = cfg.get("launch_buttons") or {}
    launch.pop("colab_url", None)
    cfg["launch_buttons"] = launch
    (dest / "_config.yml").write_text(
        "# Student edition, written by `python -m flowbook.instructor student-book`; do not edit.\n"
        + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return stripped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowbook.instructor",
                                     description="Hand out flowbook chapters without their solutions.")
    sub = parser.add_subparsers(dest="command", required=True)
    strip = sub.add_parser("strip", help="write copies of notebooks without the cells tagged 'solution'")
    strip.add_argument("sources", nargs="+", type=Path, metavar="SRC", help="notebooks (.ipynb)")
    strip.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the copies")
    strip.add_argument("--clear-outputs", action="store_true",
                       help="also remove the outputs of code cells")
    strip.add_argument("--tag", default=SOLUTION_TAG, help="cell tag to remove (default: %(default)s)")
    book = sub.add_parser("student-book", help="copy the book without solutions into a new folder, "
                                               "ready for `jupyter-book build`")
    book.add_argument("--out", required=True, type=Path, metavar="DIR", help="new (or empty) folder")
    book.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                      help="the book's root (default: this checkout)")
    book.add_argument("--config", type=Path, help="configuration to start from (default: ROOT/_config.yml)")
    book.add_argument("--tag", default=SOLUTION_TAG)
    count = sub.add_parser("count", help="print the number of solution cells in each notebook")
    count.add_argument("sources", nargs="+", type=Path, metavar="SRC")
    count.add_argument("--tag", default=SOLUTION_TAG)
    args = parser.parse_args(argv)
    # one line instead of a traceback: 2 for bad input, 1 for a fault of the disk
    try:
        return _run(args)
    except NotebookError as err:
        status, message = 2, str(err)
    except OSError as err:
        status, message = 1, str(err)
    print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
    return status


def _run(args: argparse.Namespace) -> int:
    if args.command == "strip":
        for dest, removed in strip_files(args.sources, args.out, clear_outputs=args.clear_outputs,
                                         tag=args.tag):
            print(f"{dest}: removed {removed} cell(s) tagged {args.tag!r}")
    elif args.command == "student-book":
        stripped = student_book(args.root, args.out, config=args.config, tag=args.tag)
        removed = sum(n for _, n in stripped)
        print(f"{args.out}: student edition of {args.root} ({len(stripped)} notebooks, {removed} cell(s) "
              f"tagged {args.tag!r} removed)")
    else:
        for src in args.sources:
            print(f"{src}: {count_solutions(read_notebook(src), args.tag)} cell(s) tagged {args.tag!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
