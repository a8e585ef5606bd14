"""Soundness checks of the built book (``_build/html``, or the folder named by ``FLOWBOOK_HTML``).

Run after ``jupyter-book build .`` (the README's first command, and a stage of ``.ci/run``). Without
a build the tests skip. They check what a reader would notice first and Sphinx does not: broken
internal links and missing images, math that MathJax cannot see, chapters missing from the table of
contents or without their Colab launch link, images whose alt text is a path, error output stored
in the notebooks, and words about how the book was made on the API pages. Most checks read the
sources and run without a build: stored printouts, code lines and the prose's code blocks fit the
text column, every figure has alt text, and no page a reader reads speaks of issues, offline machines
or the project's workflow.
"""
from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = Path(os.environ.get("FLOWBOOK_HTML", ROOT / "_build" / "html")).resolve()
CHAPTERS = sorted(p.stem for p in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
COLAB = "https://colab.research.google.com/github/flowbook/flowbook/blob/main/chapters/{}.ipynb"
# Pages that Sphinx generates and that hold no content of ours.
GENERATED = {"genindex.html", "search.html", "py-modindex.html"}

needs_build = pytest.mark.skipif(not (HTML / "index.html").exists(),
                                 reason=f"no built book in {HTML}; run `jupyter-book build .` first")
# Widest printout line (stream output, or a text/plain result the page shows) that fits the book's
# text column without being cut at its edge.
OUTPUT_WIDTH = 88
# Code blocks inside an admonition (the solutions' dropdowns) have its padding less: 80 characters.
ADMONITION_CODE_WIDTH = 80


class Page(HTMLParser):
    """The parts of one HTML page the checks need: links, ids, scripts, math and visible text."""

    SKIP_TEXT = {"script", "style", "pre", "code", "textarea"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []  # (tag, url)
        self.ids: set[str] = set()
        self.scripts: list[str] = []
        self.math = 0
        self.h1: list[str] = []
        self.text: list[str] = []
        self.classes: list[str] = []
        self._stack: list[tuple[str, bool]] = []  # (tag, text is skipped inside)
        self._in_h1 = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        cls = attrs.get("class") or ""
        self.classes.append(cls)
        if tag == "a" and attrs.get("href"):
            self.links.append(("a", attrs["href"]))
        elif tag == "img":
            self.links.append(("img", attrs.get("src") or ""))
        elif tag == "link" and attrs.get("href") and attrs.get("rel") in ("stylesheet", "preload"):
            self.links.append(("link", attrs["href"]))
        elif tag == "script" and attrs.get("src"):
            self.links.append(("script", attrs["src"]))
            self.scripts.append(attrs["src"])
        if "math" in cls.split():
            self.math += 1
        if tag == "h1":
            self._in_h1 = True
            self.h1.append("")
        if tag in ("br", "img", "meta", "link", "input", "hr", "source", "wbr", "col", "area"):
            return  # void elements have no end tag
        skipped = tag in self.SKIP_TEXT or "math" in cls.split() or bool(
            self._stack and self._stack[-1][1])
        self._stack.append((tag, skipped))

    def handle_endtag(self, tag):
        if tag == "h1":
            self._in_h1 = False
        # pop to the matching start tag (tolerates the odd unclosed element)
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break

    def handle_data(self, data):
        if self._in_h1 and self.h1:
            self.h1[-1] += data
        if not (self._stack and self._stack[-1][1]):
            self.text.append(data)


@lru_cache(maxsize=None)
def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def pages() -> list[Path]:
    if not HTML.exists():
        return []
    return sorted(p for p in HTML.rglob("*.html")
                  if "_static" not in p.relative_to(HTML).parts and p.name not in GENERATED)


def chapter_page(stem: str) -> Path:
    return HTML / "chapters" / f"{stem}.html"


def is_external(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.scheme or parts.netloc) or url.startswith(("mailto:", "data:", "javascript:"))


def resolve(page: Path, url: str) -> tuple[Path, str]:
    """The file a relative URL on ``page`` points to (``index.html`` for folders), and its fragment."""
    parts = urlsplit(url)
    target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
    if target.is_dir():
        target = target / "index.html"
    return target, unquote(parts.fragment)


@needs_build
def test_every_chapter_notebook_is_in_the_book():
    missing = [stem for stem in CHAPTERS if not chapter_page(stem).exists()]
    assert not missing, (f"chapters without a page in {HTML}: {missing}. Add them to _toc.yml under "
                         "'Chapters' and rebuild the book")


@needs_build
def test_every_module_has_an_api_page():
    """Each public module of the package has its page in the API reference, with its entries."""
    modules = sorted(p.stem for p in (ROOT / "flowbook").glob("*.py") if not p.stem.startswith("_"))
    missing = [m for m in modules if not (HTML / "api" / f"{m}.html").exists()]
    assert not missing, (f"modules without an API page in {HTML}/api: {missing}. Add api/NAME.md (an "
                         "automodule of flowbook.NAME, as the other pages) and list it in _toc.yml")
    empty = [m for m in modules if f'id="module-flowbook.{m}"' not in
             (HTML / "api" / f"{m}.html").read_text(encoding="utf-8")]
    assert not empty, f"API pages that document no module (automodule missing or failed): {empty}"


@needs_build
@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(HTML)))
def test_internal_links_and_images_resolve(page):
    broken = []
    for tag, url in parse(page).links:
        if tag == "img" and not url:
            broken.append("<img> without src")
            continue
        if is_external(url):
            continue
        target, fragment = resolve(page, url)
        if not target.is_file():
            broken.append(f"<{tag}> {url}: no file {target}")
        elif tag == "img" and target.stat().st_size == 0:
            broken.append(f"<img> {url}: empty file")
        elif tag == "a" and fragment and target.suffix == ".html" and fragment not in parse(target).ids:
            broken.append(f"<a> {url}: no id {fragment!r} in {target.name}")
    assert not broken, "\n".join(broken)


@needs_build
@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(HTML)))
def test_math_is_left_to_mathjax(page):
    parsed = parse(page)
    if parsed.math:
        assert any("mathjax" in src.lower() and src.rstrip("/").split("?")[0].endswith(".js")
                   for src in parsed.scripts), f"{parsed.math} math elements but no MathJax <script>"
    text = "".join(parsed.text)
    raw = [m.start() for m in re.finditer(r"\$\$", text)]
    assert not raw, ("raw '$$' left in the text (the formula was not parsed as math): "
                     + " | ".join(text[max(0, i - 40):i + 40].replace("\n", " ") for i in raw[:3]))
    unparsed = re.findall(r"\\begin\{(?:equation|align)\*?\}", text)
    assert not unparsed, f"unparsed LaTeX environments in the text: {unparsed[:3]}"


@needs_build
@pytest.mark.skipif(not CHAPTERS, reason="no chapter notebooks yet")
@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_page(stem):
    path = chapter_page(stem)
    if not path.exists():
        pytest.skip("missing from the book; reported by test_every_chapter_notebook_is_in_the_book")
    page = parse(path)
    hrefs = {url for tag, url in page.links if tag == "a"}
    assert COLAB.format(stem) in hrefs, f"no Colab launch link {COLAB.format(stem)}"
    # the theme repeats the title in a print-only header, so count distinct titles
    titles = {t.strip().rstrip("#").strip() for t in page.h1 if t.strip()}
    assert len(titles) == 1, f"a chapter needs exactly one title (# heading), found {sorted(titles)}"
    assert page.math > 0, "a chapter page without math"
    images = [url for tag, url in page.links if tag == "img" and "_images/" in url]
    assert images, "a chapter page without figures"
    classes = " ".join(page.classes).split()
    assert "traceback" not in classes, "a stored error traceback is shown in the chapter"
    assert "stderr" not in classes, ("stored stderr output (warnings, progress bars) is shown; "
                                     "CONTRIBUTING asks for clean outputs")


def printed_lines(output: dict) -> list[str]:
    """The text lines a chapter page shows for one stored output: a stream, or a text/plain result
    with no richer type beside it (a table's HTML, a figure or a widget is shown instead)."""
    if output["output_type"] == "stream":
        text = output["text"]
    elif output["output_type"] in ("execute_result", "display_data") and set(output["data"]) == {
            "text/plain"}:
        text = output["data"]["text/plain"]
    else:
        return []
    return "".join(text).splitlines()


@pytest.mark.parametrize("stem", CHAPTERS)
def test_printouts_fit_the_text_column(stem):
    notebook = json.loads((ROOT / "chapters" / f"{stem}.ipynb").read_text(encoding="utf-8"))
    long = [f"cell {i}, {len(line)} characters: {line[:60]}..."
            for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code"
            for output in cell.get("outputs", []) for line in printed_lines(output)
            if len(line) > OUTPUT_WIDTH]
    assert not long, (f"printed lines wider than {OUTPUT_WIDTH} characters (cut at the column's "
                      "edge): wrap the labels or split the print, then re-execute\n"
                      + "\n".join(long))


@pytest.mark.parametrize("stem", CHAPTERS)
def test_code_lines_fit_the_text_column(stem):
    """Code lines fit the same text column as the printouts (OUTPUT_WIDTH characters), the first
    (setup) cell included: CONTRIBUTING.md keeps its text, wrapped to fit."""
    notebook = json.loads((ROOT / "chapters" / f"{stem}.ipynb").read_text(encoding="utf-8"))
    sources = [(i, "".join(cell["source"])) for i, cell in enumerate(notebook["cells"])
               if cell["cell_type"] == "code"]
    long = [f"cell {i}, line {n}, {len(line)} characters: {line[:60]}..."
            for i, source in sources
            for n, line in enumerate(source.splitlines(), 1) if len(line) > OUTPUT_WIDTH]
    assert not long, (f"code lines wider than {OUTPUT_WIDTH} characters: break the argument list, "
                      "split the string or move the comment above the line\n" + "\n".join(long))


def code_block_lines(markdown: str) -> list[tuple[str, bool]]:
    """The lines of the fenced code blocks in a MyST text, which the page shows unwrapped, each with
    whether it sits inside a directive (an admonition: a narrower box).

    A fence whose info string is a directive (```` ```{admonition} ````, ``:::{note}``) holds text,
    not code, and only the code blocks nested in it count; ``{code-block}`` and ``{code}`` are code.
    """
    lines, stack = [], []  # stack: open fences as (marker, is code)
    for line in markdown.splitlines():
        stripped = line.strip()
        if stack and stack[-1][1]:  # inside a code block: only its closing fence ends it
            marker = stack[-1][0]
            if stripped.startswith(marker) and not stripped.strip(marker[0]):
                stack.pop()
            else:
                lines.append((line, len(stack) > 1))
            continue
        opener = re.match(r"^(`{3,}|~{3,}|:{3,})\s*(\S*)", stripped)
        if not opener:
            continue
        marker, info = opener.groups()
        if stack and stripped.startswith(stack[-1][0]) and not stripped.strip(stack[-1][0][0]):
            stack.pop()  # closes the directive it belongs to
        elif info.startswith("{") and info not in ("{code-block}", "{code}", "{code-cell}"):
            stack.append((marker, False))
        elif marker[0] != ":":
            stack.append((marker, True))
    return lines


def markdown_sources() -> list[tuple[str, str]]:
    """(where, MyST text) of every page written in markdown and of every chapter's markdown cells."""
    found = [(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
             for path in [ROOT / "intro.md", ROOT / "notation.md", ROOT / "instructor.md",
                          *sorted((ROOT / "api").glob("*.md"))] if path.exists()]
    for stem in CHAPTERS:
        notebook = json.loads((ROOT / "chapters" / f"{stem}.ipynb").read_text(encoding="utf-8"))
        found += [(f"{stem}, cell {i}", "".join(cell["source"]))
                  for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "markdown"]
    return found


def test_code_blocks_in_the_text_fit_the_text_column():
    """Commands and code shown in the prose (fenced blocks) fit the column as code cells do."""
    long = [f"{where}, {len(line)} characters{' (in an admonition)' if nested else ''}: "
            f"{line.strip()[:60]}..."
            for where, text in markdown_sources()
            for line, nested in code_block_lines(text)
            if len(line) > (ADMONITION_CODE_WIDTH if nested else OUTPUT_WIDTH)]
    assert not long, (f"lines of code blocks wider than {OUTPUT_WIDTH} characters, or "
                      f"{ADMONITION_CODE_WIDTH} inside an admonition (cut at the box's edge): break "
                      "the command with a backslash or move the comment above the line\n"
                      + "\n".join(long))


def test_code_block_lines_reads_code_not_directives():
    text = ("````{admonition} Solution\n:class: dropdown\nprose that is not code\n"
            "```python\nx = 1\n```\n````\n```{eval-rst}\n.. automodule:: m\n```\n"
            ":::{note}\ntext\n:::\n```bash\nls\n```\n")
    assert code_block_lines(text) == [("x = 1", True), ("ls", False)]


# Words about how the book was made (its issue tracker, the machines it was built on, the project's
# workflow) that a reader, who has none of these and is online, cannot make sense of. Each pattern is
# narrow enough not to hit ordinary prose ("an issue of convergence" is not flagged: only the
# tracker's phrasings are).
_WORKFLOW = [
    r"\b(?:the|this|that|an earlier|its) issue\b(?! of)",  # "the issue this chapter answers"
    r"\bissues? #?\d+",                                   # "issue 18"
    r"\b(?:this|these|our|the project['’]s|the book['’]s) (?:offline )?machines?\b",
    r"\b(?:this|the) project\b",
    r"\b(?:downloaded|reachable|fetched|installed|verified) here\b",
    r"\bno internet\b",
]
# The chapters, intro and notation have no reason to speak of working offline at all.
WORKFLOW_WORDS = re.compile("|".join(_WORKFLOW + [r"\boffline\b"]), flags=re.IGNORECASE)
# The API reference documents a command that also works without a network (`flowbook data`), so
# there only the build machines' offline state is flagged.
API_WORKFLOW_WORDS = re.compile("|".join(_WORKFLOW + [r"\bhere \(offline\)"]), flags=re.IGNORECASE)


def reader_texts() -> list[tuple[str, str]]:
    """(where, text) of what a reader sees in the chapters, the intro, notation and the API pages'
    sources: markdown, code (its comments show) and stored printouts."""
    found = [(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
             for path in [ROOT / "intro.md", ROOT / "notation.md", *sorted((ROOT / "api").glob("*.md"))]
             if path.exists()]
    for stem in CHAPTERS:
        notebook = json.loads((ROOT / "chapters" / f"{stem}.ipynb").read_text(encoding="utf-8"))
        for i, cell in enumerate(notebook["cells"]):
            found.append((f"{stem}, cell {i}", "".join(cell["source"])))
            found += [(f"{stem}, cell {i} output", "\n".join(printed_lines(output)))
                      for output in cell.get("outputs", [])]
    return found


def workflow_words(text: str, words: re.Pattern = WORKFLOW_WORDS) -> list[str]:
    return [text[max(0, m.start() - 40):m.end() + 40].replace("\n", " ")
            for m in words.finditer(text)]


def test_the_book_speaks_to_its_reader():
    """No sentence about issues, offline machines or the project's workflow in what a reader reads."""
    found = [f"{where}: ...{hit}..." for where, text in reader_texts() for hit in workflow_words(text)]
    assert not found, ("words about how the book was made, which a reader (online, with no issue "
                       "tracker) cannot follow: say what the reader needs instead\n" + "\n".join(found))


@pytest.mark.parametrize("text, flagged", [
    ("The issue this chapter answers set a goal.", True),
    ("The issue that set up this table gave it a budget.", True),
    ("cut at its edge (issue 18)", True),
    ("Larochelle–Murray files cannot be downloaded offline", True),
    ("the canonical file cannot be downloaded here", True),
    ("On the project's offline machines the root is built", True),
    ("train + evaluate on this machine: 31 s", True),
    ("An earlier trial of this project gained a nat", True),
    ("the issue of convergence is subtle", False),
    ("the book's CPU trained every row; the data root is downloaded once", False),
    ("here we run fast mode", False),
    ("its public names are all available here", False),
])
def test_workflow_words_are_the_ones_meant(text, flagged):
    assert bool(workflow_words(text)) is flagged


@pytest.mark.parametrize("text, flagged", [
    ("On the project's offline machines the root is built", True),
    ("the speed goal the issue sets for the whole update", True),
    ("trained on the project's 2-core CPU", True),
    ("checksum list; not re-verified here (offline)", True),
    ("an offline machine goes straight to the local build", False),
])
def test_api_workflow_words_are_the_ones_meant(text, flagged):
    assert bool(workflow_words(text, API_WORKFLOW_WORDS)) is flagged


@needs_build
def test_api_pages_speak_to_their_reader():
    """The API pages' text comes from the package's docstrings too: read it as built."""
    found = [f"{page.name}: ...{hit}..." for page in sorted((HTML / "api").glob("*.html"))
             for hit in workflow_words(" ".join("".join(parse(page).text).split()),
                                       API_WORKFLOW_WORDS)]
    assert not found, ("API pages with words about how the book was made (fix the docstring "
                       "they come from)\n" + "\n".join(found))


# Alternative text: the screen reader's version of a figure. A file name or path says nothing.
PATH_LIKE = re.compile(r"(^|/)[\w.-]+\.(png|jpe?g|svg|gif)$|^[\w./-]*/[\w./-]*$", flags=re.IGNORECASE)
MIN_ALT_WORDS = 6


def figure_cells(stem: str) -> list[tuple[int, dict]]:
    notebook = json.loads((ROOT / "chapters" / f"{stem}.ipynb").read_text(encoding="utf-8"))
    return [(i, cell) for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code"
            and any(key.startswith("image/") for output in cell.get("outputs", [])
                    for key in output.get("data", {}))]


@pytest.mark.parametrize("stem", CHAPTERS)
def test_every_figure_has_alt_text(stem):
    """Every cell that draws a figure describes it in its metadata (``mystnb: image: alt``), which
    myst-nb writes into the page's ``<img alt>``; so does every image in the markdown."""
    bad = []
    for i, cell in figure_cells(stem):
        alt = str(cell["metadata"].get("mystnb", {}).get("image", {}).get("alt", ""))
        if len(alt.split()) < MIN_ALT_WORDS or PATH_LIKE.search(alt.strip()):
            bad.append(f"cell {i}: alt text {alt!r}")
    notebook = json.loads((ROOT / "chapters" / f"{stem}.ipynb").read_text(encoding="utf-8"))
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "markdown":
            for alt, src in re.findall(r"!\[([^\]]*)\]\(([^)]*)\)", "".join(cell["source"])):
                if len(alt.split()) < MIN_ALT_WORDS:
                    bad.append(f"cell {i}: image {src} with alt text {alt!r}")
    assert not bad, (f"figures without a description of at least {MIN_ALT_WORDS} words: add cell "
                     "metadata {\"mystnb\": {\"image\": {\"alt\": \"what the figure shows\"}}}\n"
                     + "\n".join(bad))


@needs_build
@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(HTML)))
def test_images_have_alt_text_that_is_not_a_path(page):
    text = page.read_text(encoding="utf-8", errors="replace")
    bad = []
    for tag in re.findall(r"<img\b[^>]*>", text):
        alt = re.search(r'\balt="([^"]*)"', tag)
        src = re.search(r'\bsrc="([^"]*)"', tag)
        if "_images/" not in (src.group(1) if src else ""):
            continue  # the theme's logo and icons
        if alt is None or not alt.group(1).strip() or PATH_LIKE.search(alt.group(1).strip()):
            bad.append(f"{src.group(1) if src else '?'}: alt={alt.group(1) if alt else None!r}")
    assert not bad, "images whose alt text is missing or a path:\n" + "\n".join(bad)


def test_setup_cell_is_the_one_in_contributing():
    """Every chapter opens with CONTRIBUTING.md's setup cell, word for word apart from the seed."""
    contributing = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(  # Setup:.*?)\n  ```", contributing, flags=re.S)
    assert block, "CONTRIBUTING.md lost its setup-cell block (```python ... # Setup: ...)"
    expected = "\n".join(line[2:] for line in block.group(1).splitlines())
    seed = re.compile(r"setup\(seed=\d+\)")
    differ = []
    for stem in CHAPTERS:
        notebook = json.loads((ROOT / "chapters" / f"{stem}.ipynb").read_text(encoding="utf-8"))
        first = next("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
        if seed.sub("setup(seed=0)", first.strip()) != seed.sub("setup(seed=0)", expected.strip()):
            differ.append(stem)
    assert not differ, f"chapters whose first code cell is not CONTRIBUTING.md's setup cell: {differ}"


# The student edition (.ci/build_student_edition.sh), built next to the full book.
STUDENT = Path(os.environ.get("FLOWBOOK_STUDENT_HTML", ROOT / "_build" / "student" / "html")).resolve()
needs_student_build = pytest.mark.skipif(
    not (STUDENT / "index.html").exists(),
    reason=f"no student edition in {STUDENT}; run `bash .ci/build_student_edition.sh` first")


def student_pages() -> list[Path]:
    if not STUDENT.exists():
        return []
    # _modules: the package's source code as pages (viewcode), which quotes the edition's own texts
    return sorted(p for p in STUDENT.rglob("*.html")
                  if not {"_static", "_modules"} & set(p.relative_to(STUDENT).parts)
                  and p.name not in GENERATED)


@needs_student_build
def test_student_edition_says_what_it_is():
    """Its intro promises no Colab button and no instructor guide, and its navigation does not
    name a guide that is not there."""
    intro = " ".join("".join(parse(STUDENT / "intro.html").text).split())
    for phrase in ("rocket icon", "teaching plan", "gives learning goals"):
        assert phrase not in intro, f"the student edition's intro still says {phrase!r}"
    assert "student edition" in intro, "the student edition's intro does not say which edition it is"
    note = parse(STUDENT / "instructor.html")
    assert any("About this student edition" in h for h in note.h1), note.h1
    named = [str(p.relative_to(STUDENT)) for p in student_pages()
             if "Instructor guide" in p.read_text(encoding="utf-8", errors="replace")]
    assert not named, f"pages whose navigation or text names an 'Instructor guide': {named}"


@needs_student_build
@pytest.mark.parametrize("page", student_pages(), ids=lambda p: str(p.relative_to(STUDENT)))
def test_student_edition_leads_to_no_solutions(page):
    """No worked solution on the page, no Colab button and no link to the repository (which has
    them)."""
    text = page.read_text(encoding="utf-8", errors="replace")
    assert 'admonition-title">Solution<' not in text, "a worked solution in the student edition"
    hrefs = [url for tag, url in parse(page).links if tag == "a"]
    leaks = [url for url in hrefs if "colab.research.google.com" in url
             or url.rstrip("/").startswith("https://github.com/flowbook/flowbook")]
    assert not leaks, f"links to the full notebooks or the repository: {leaks}"


@needs_student_build
def test_student_edition_downloads_have_no_solutions():
    """The .ipynb files the download button offers are the stripped notebooks."""
    downloads = sorted(STUDENT.rglob("*.ipynb"))
    assert downloads, f"no .ipynb downloads in {STUDENT} (the page's download button needs them)"
    tagged = [str(p.relative_to(STUDENT)) for p in downloads
              for cell in json.loads(p.read_text(encoding="utf-8"))["cells"]
              if "solution" in cell.get("metadata", {}).get("tags", [])]
    assert not tagged, f"downloadable notebooks with solution cells: {sorted(set(tagged))}"


def test_instructor_run_times_are_generated_from_the_stored_results():
    """The guide's run-time table is what `.ci/time_chapters` makes of the stored results and the
    measured fast-mode times, so a new or changed result file cannot leave it stale."""
    import importlib.util
    from importlib.machinery import SourceFileLoader

    # a script without the .py suffix: load it through an explicit loader
    loader = SourceFileLoader("time_chapters", str(ROOT / ".ci" / "time_chapters"))
    times_tool = importlib.util.module_from_spec(importlib.util.spec_from_loader("time_chapters", loader))
    loader.exec_module(times_tool)
    measured = json.loads((ROOT / ".ci" / "chapter_times.json").read_text(encoding="utf-8"))
    expected = times_tool.table(measured)
    assert (ROOT / "_instructor_times.md").read_text(encoding="utf-8") == expected, (
        "_instructor_times.md is not the table of the stored results in data/results/: run "
        "`.venv/bin/python .ci/time_chapters --no-run --write` (or time the chapters you changed: "
        "`.venv/bin/python .ci/time_chapters chapters/NN_name.ipynb --write`)")
