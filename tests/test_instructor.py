"""Tests of the solution-stripping tool (flowbook/instructor.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowbook.instructor import count_solutions, strip_notebook

CHAPTERS = sorted((Path(__file__).resolve().parent.parent / "chapters").glob("[0-9][0-9]_*.ipynb"))


def make_notebook() -> dict:
    """A small nbformat-4 notebook: exercise, tagged solution, code with output, untagged markdown."""
    def md(text, tags=None):
        cell = {"cell_type": "markdown", "metadata": {}, "source": text}
        if tags is not None:
            cell["metadata"]["tags"] = tags
        return cell

    nb = {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                     "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}}},
        "cells": [
            md("# Title"),
            md("**Exercise 1.** Show that det(I + u w^T) = 1 + w^T u."),
            md("```{admonition} Solution\n:class: dropdown\nMatrix determinant lemma.\n```", ["solution"]),
            {"cell_type": "code", "execution_count": 3, "metadata": {"tags": ["hide-input"]},
             "source": "print(1 + 1)",
             "outputs": [{"output_type": "stream", "name": "stdout", "text": "2\n"}]},
            md("Solution-like words in an untagged cell stay: solution", ["hide-input", "other"]),
            md("Second solution", ["remove-cell", "solution"]),
        ],
    }
    for i, cell in enumerate(nb["cells"]):
        cell["id"] = f"cell-{i}"  # nbformat 4.5 requires cell ids
    return nb


def test_strip_removes_exactly_the_tagged_cells():
    nb = make_notebook()
    assert count_solutions(nb) == 2
    out = strip_notebook(nb)
    assert count_solutions(out) == 0
    assert len(out["cells"]) == 4
    assert [c["source"] for c in out["cells"]] == [nb["cells"][i]["source"] for i in (0, 1, 3, 4)]
    # outputs are kept unless asked for, and the input is not modified
    assert out["cells"][2]["outputs"][0]["text"] == "2\n"
    assert len(nb["cells"]) == 6


def test_strip_clear_outputs():
    out = strip_notebook(make_notebook(), clear_outputs=True)
    code = [c for c in out["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert "widgets" not in out["metadata"]


def test_strip_rejects_non_notebook():
    with pytest.raises(ValueError, match="not a Jupyter notebook"):
        strip_notebook({"foo": 1})


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowbook.instructor", *args],
                          capture_output=True, text=True)


def test_cli_writes_valid_stripped_copies(tmp_path):
    src = tmp_path / "src" / "99_demo.ipynb"
    src.parent.mkdir()
    src.write_text(json.dumps(make_notebook()))
    out_dir = tmp_path / "handout"
    proc = run_cli("strip", str(src), "--out", str(out_dir), "--clear-outputs")
    assert proc.returncode == 0, proc.stderr
    assert "removed 2 cell(s)" in proc.stdout
    written = json.loads((out_dir / "99_demo.ipynb").read_text())
    assert count_solutions(written) == 0 and len(written["cells"]) == 4
    assert written["cells"][2]["outputs"] == []
    # the source is untouched
    assert count_solutions(json.loads(src.read_text())) == 2
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.reads((out_dir / "99_demo.ipynb").read_text(), as_version=4))


def test_cli_refuses_to_overwrite_source(tmp_path):
    src = tmp_path / "nb.ipynb"
    src.write_text(json.dumps(make_notebook()))
    proc = run_cli("strip", str(src), "--out", str(tmp_path))
    assert proc.returncode != 0 and "refusing to overwrite" in proc.stderr
    assert count_solutions(json.loads(src.read_text())) == 2


def test_cli_reports_unreadable_input(tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text("not json")
    proc = run_cli("strip", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode != 0 and "cannot read notebook" in proc.stderr


@pytest.mark.skipif(not CHAPTERS, reason="no chapter notebooks yet")
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_real_chapter_has_solutions_and_strips_clean(chapter, tmp_path):
    nb = json.loads(chapter.read_text())
    assert count_solutions(nb) >= 3, f"{chapter.name}: CONTRIBUTING asks for >= 3 solution cells"
    proc = run_cli("strip", str(chapter), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    stripped = json.loads((tmp_path / chapter.name).read_text())
    assert count_solutions(stripped) == 0
    assert len(stripped["cells"]) == len(nb["cells"]) - count_solutions(nb)


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not CHAPTERS, reason="no chapter notebooks yet")
def test_student_book_has_no_solutions(tmp_path):
    """The copy that .ci/build_student_edition.sh builds: every chapter, none of its solution cells, no
    instructor guide, no Colab links to the full notebooks; the sources untouched (no book build here)."""
    yaml = pytest.importorskip("yaml")
    from flowbook.instructor import STUDENT_INSTRUCTOR_PAGE, student_book

    book = tmp_path / "book"
    stripped = student_book(ROOT, book)
    notebooks = sorted((book / "chapters").glob("*.ipynb"))
    assert [p.name for p in notebooks] == [p.name for p in CHAPTERS]
    assert {p for p, _ in stripped} >= set(notebooks)
    for path in notebooks:
        nb = json.loads(path.read_text())
        assert count_solutions(nb) == 0, path.name
        leftovers = [c for c in nb["cells"] if c["cell_type"] == "markdown"
                     and "{admonition} Solution" in "".join(c["source"])]
        assert not leftovers, f"{path.name}: a solution admonition in a cell without the 'solution' tag"
        original = json.loads((ROOT / "chapters" / path.name).read_text())
        assert count_solutions(original) >= 3
        assert len(nb["cells"]) == len(original["cells"]) - count_solutions(original)
    instructor = (book / "instructor.md").read_text()
    assert instructor == STUDENT_INSTRUCTOR_PAGE
    config = yaml.safe_load((book / "_config.yml").read_text())
    assert config["title"].endswith("(student edition)")
    assert not config["launch_buttons"].get("colab_url")
    assert (book / "_toc.yml").is_file() and not (book / "tests").exists() and not (book / ".git").exists()


def test_student_book_refuses_a_full_folder(tmp_path):
    from flowbook.instructor import NotebookError, student_book

    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(NotebookError, match="not empty"):
        student_book(ROOT, tmp_path)


def _sources(tmp_path: Path) -> Path:
    src = tmp_path / "src" / "nb.ipynb"
    src.parent.mkdir()
    src.write_text(json.dumps(make_notebook()))
    return src


def test_cli_never_writes_through_a_hardlink_of_a_source(tmp_path):
    """Issue 26, bug 14: a hardlink of the source inside --out would have been written through, so the
    instructor's notebook lost its solutions; a link under another name is replaced, not written through."""
    src = _sources(tmp_path)
    before = src.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    os.link(src, out / "nb.ipynb")
    proc = run_cli("strip", str(src), "--out", str(out))
    assert proc.returncode == 2 and "refusing to overwrite the source" in proc.stderr
    assert src.read_bytes() == before
    other = tmp_path / "src2" / "nb2.ipynb"
    other.parent.mkdir()
    other.write_text(json.dumps(make_notebook()))
    (out / "nb.ipynb").unlink()
    os.link(src, out / "nb2.ipynb")  # a hardlink of src, at the name of another source's copy
    assert run_cli("strip", str(other), "--out", str(out)).returncode == 0
    assert src.read_bytes() == before and count_solutions(json.loads((out / "nb2.ipynb").read_text())) == 0


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "cannot read notebook"),
    (b"[1, 2]", "holds a JSON list, not a notebook"),
    (json.dumps({"nbformat": 4, "metadata": None, "cells": []}).encode(), "not a valid nbformat-4 notebook"),
    (json.dumps({"nbformat": 4, "metadata": {}}).encode(), "not a valid nbformat-4 notebook"),
    (json.dumps({"nbformat": 4, "metadata": {}, "cells": [1]}).encode(), "not a valid nbformat-4 notebook"),
], ids=["binary", "json list", "metadata null", "no cells", "a cell not an object"])
def test_cli_refuses_what_is_not_a_notebook_in_one_line(tmp_path, content, message):
    """Issue 26, bug 14: each gave a traceback; now one line, exit status 2, nothing written."""
    bad = tmp_path / "bad.ipynb"
    bad.write_bytes(content)
    proc = run_cli("strip", str(bad), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and message in proc.stderr and str(bad) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    assert bad.read_bytes() == content


def test_cli_refuses_two_sources_with_one_name_and_an_out_that_is_a_file(tmp_path):
    """Issue 26, bug 14: two sources named alike would have left one copy; --out a file gave a traceback."""
    src = _sources(tmp_path)
    twin = tmp_path / "other" / "nb.ipynb"
    twin.parent.mkdir()
    twin.write_text(json.dumps(make_notebook()))
    proc = run_cli("strip", str(src), str(twin), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "have the same name" in proc.stderr and not (tmp_path / "out").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker, blocker / "below"):
        proc = run_cli("strip", str(src), "--out", str(out))
        assert proc.returncode == 2 and f"--out {out}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert blocker.read_text() == "x"
