"""Soundness checks of the built book (``_build/html``, or the folder named by ``FLOWBOOK_HTML``).

Run after ``jupyter-book build .`` (the README's first command, and a stage of ``.ci/run``). Without
a build the tests skip. They check what a reader would notice first and Sphinx does not: broken
internal links and missing images, math that MathJax cannot see, chapters missing from the table of
contents or without their Colab launch link, and error output stored in the notebooks. Two checks
read the notebooks themselves and run without a build: stored printouts and code lines fit the
text column.
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
# text column without being cut at its edge (issue 18).
OUTPUT_WIDTH = 88


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


# The first code cell of every chapter, kept word for word the same in all of them (CONTRIBUTING.md),
# so it is not wrapped.
SETUP_CELL = "# Setup:"


@pytest.mark.parametrize("stem", CHAPTERS)
def test_code_lines_fit_the_text_column(stem):
    """Code lines fit the same text column as the printouts (OUTPUT_WIDTH characters)."""
    notebook = json.loads((ROOT / "chapters" / f"{stem}.ipynb").read_text(encoding="utf-8"))
    sources = [(i, "".join(cell["source"])) for i, cell in enumerate(notebook["cells"])
               if cell["cell_type"] == "code"]
    long = [f"cell {i}, line {n}, {len(line)} characters: {line[:60]}..."
            for i, source in sources if not source.startswith(SETUP_CELL)
            for n, line in enumerate(source.splitlines(), 1) if len(line) > OUTPUT_WIDTH]
    assert not long, (f"code lines wider than {OUTPUT_WIDTH} characters: break the argument list, "
                      "split the string or move the comment above the line\n" + "\n".join(long))
