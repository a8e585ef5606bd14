"""Hand out chapters without their worked solutions.

Every exercise in a chapter has its worked solution in a markdown cell tagged ``solution`` (cell
metadata ``"tags": ["solution"]``, see CONTRIBUTING.md). This tool writes copies of notebooks with
those cells removed, so an instructor can give students the exercises and keep the answers::

    python -m flowbook.instructor strip chapters/*.ipynb --out handout/
    python -m flowbook.instructor strip chapters/03_flow_elbo.ipynb --out handout/ --clear-outputs
    python -m flowbook.instructor count chapters/*.ipynb     # solution cells per notebook

Only the standard library is used, so it runs wherever Python does (also in Colab). The notebooks
are read and written as plain JSON (nbformat 4), which keeps every other cell byte-for-byte equal.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable

SOLUTION_TAG = "solution"


def is_solution(cell: dict[str, Any], tag: str = SOLUTION_TAG) -> bool:
    """True when the cell's ``metadata.tags`` contains ``tag``."""
    tags = cell.get("metadata", {}).get("tags", [])
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
        raise ValueError("not a Jupyter notebook (nbformat 4): it has no 'cells' list")
    out = json.loads(json.dumps(nb))  # deep copy; notebooks are plain JSON
    out["cells"] = [cell for cell in out["cells"] if not is_solution(cell, tag)]
    if clear_outputs:
        for cell in out["cells"]:
            if cell.get("cell_type") == "code":
                cell["outputs"] = []
                cell["execution_count"] = None
        # Stored widget state belongs to outputs that no longer exist.
        out.get("metadata", {}).pop("widgets", None)
    return out


def read_notebook(path: Path) -> dict[str, Any]:
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"cannot read notebook {path}: {err}. Pass .ipynb files (nbformat 4).") from err
    if nb.get("nbformat") != 4:
        raise SystemExit(f"{path} is nbformat {nb.get('nbformat')!r}; only nbformat 4 is supported. "
                         "Upgrade it with `jupyter nbconvert --to notebook --inplace`.")
    return nb


def write_notebook(nb: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same layout as Jupyter writes (indent 1, unicode kept), so diffs against the source stay small.
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def strip_files(sources: Iterable[Path], out_dir: Path, *, clear_outputs: bool = False,
                tag: str = SOLUTION_TAG) -> list[tuple[Path, int]]:
    """Strip each source into ``out_dir/<name>``; returns ``(written path, cells removed)`` pairs."""
    out_dir = Path(out_dir)
    written = []
    for src in sources:
        src = Path(src)
        dest = out_dir / src.name
        if dest.resolve() == src.resolve():
            raise SystemExit(f"refusing to overwrite the source {src}: choose another --out directory")
        nb = read_notebook(src)
        stripped = strip_notebook(nb, clear_outputs=clear_outputs, tag=tag)
        write_notebook(stripped, dest)
        written.append((dest, len(nb["cells"]) - len(stripped["cells"])))
    return written


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
    count = sub.add_parser("count", help="print the number of solution cells in each notebook")
    count.add_argument("sources", nargs="+", type=Path, metavar="SRC")
    count.add_argument("--tag", default=SOLUTION_TAG)
    args = parser.parse_args(argv)

    if args.command == "strip":
        for dest, removed in strip_files(args.sources, args.out, clear_outputs=args.clear_outputs,
                                         tag=args.tag):
            print(f"{dest}: removed {removed} cell(s) tagged {args.tag!r}")
    else:
        for src in args.sources:
            print(f"{src}: {count_solutions(read_notebook(src), args.tag)} cell(s) tagged {args.tag!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
