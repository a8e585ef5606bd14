"""Open the built book in a real, headless Chromium and check what a reader sees.

    pytest .ci/browser_test.py          # after `jupyter-book build` with .ci/offline_config.py

For each chapter page (and the intro, notation, instructor, references and API reference pages) it
checks

- the title, and that MathJax typeset the math without errors (``<mjx-container>`` elements, no
  ``<mjx-merror>``), that no raw TeX is left in the text (``$$``, ``\\frac``, ``\\mathbf``, ... outside
  code), that every image loaded (``naturalWidth > 0``) and has alt text that describes it (not empty,
  not a file name or path), and that stored widgets rendered;
- that the browser console stays clean: every SEVERE entry (a JavaScript error, a failed request) fails;
- the solutions: every markdown cell tagged ``solution`` in the chapter's notebook renders *inside* a
  dropdown admonition (its first and last sentences are found in one), no admonition is empty, no
  code block is empty and no code block sits directly after a dropdown (a nested code fence that closed
  the dropdown early leaves exactly these traces);
- horizontal overflow: with every dropdown opened, no paragraph, list, table or formula reaches beyond
  the content column or scrolls inside it (display math that does not fit is cut by the theme), and no
  code block, code cell or printout is wider than its box (a line cut at the right edge);
- that no rendered table shows a raw ``NaN``/``nan``.

It saves screenshots in ``_build/screenshots/``. The page is served from ``python -m http.server
--bind 127.0.0.1``, and the browser runs without network: MathJax and the widget libraries must come
from _vendor/ (see .ci/vendor.sh and .ci/offline_config.py).

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; skips without them
unless ``CI`` is set (then missing tools are an error).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = Path(os.environ.get("FLOWBOOK_HTML", ROOT / "_build" / "html")).resolve()
SHOTS = Path(os.environ.get("FLOWBOOK_SCREENSHOTS", ROOT / "_build" / "screenshots")).resolve()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
except ImportError:  # pragma: no cover - reported by the skip/fail below
    webdriver = None

PAGES = (["intro.html", "notation.html", "instructor.html", "references.html"]
         + sorted(str(p.relative_to(HTML)) for p in (HTML / "chapters").glob("*.html"))
         + sorted(str(p.relative_to(HTML)) for p in (HTML / "api").glob("*.html"))
         if HTML.exists() else [])


def _missing() -> str | None:
    if not (HTML / "index.html").exists():
        return f"no built book in {HTML}"
    if webdriver is None:
        return "selenium is not installed (pip install selenium)"
    if not (CHROMIUM and CHROMEDRIVER):
        return "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
    return None


if _missing():
    if IN_CI:
        raise RuntimeError(f"browser test cannot run in CI: {_missing()}")
    pytest.skip(_missing(), allow_module_level=True)


def chapter_title(page: str) -> str | None:
    """The first level-1 heading of the chapter's notebook: what the page must show as its title."""
    if not page.startswith("chapters/"):
        return None
    nb = json.loads((ROOT / page).with_suffix(".ipynb").read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            source = "".join(cell["source"])
            match = re.search(r"^#\s+(.+?)\s*$", source, flags=re.M)
            if match:
                return match.group(1)
    return None


def solution_cells(page: str) -> list[str]:
    """Sources of the markdown cells tagged ``solution`` in the chapter's notebook."""
    if not page.startswith("chapters/"):
        return []
    nb = json.loads((ROOT / page).with_suffix(".ipynb").read_text())
    return ["".join(c["source"]) for c in nb["cells"]
            if c["cell_type"] == "markdown" and "solution" in c.get("metadata", {}).get("tags", [])]


# Runs of at least four plain words; math, code, links, roles and emphasis break a run, so that the
# phrase reads the same in the notebook and in the rendered text (Sphinx's smart quotes and MathJax's
# output never occur inside one).
_PHRASE = re.compile(r"[A-Za-z]+(?:,? [A-Za-z]+){3,}")
_MARKUP = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`|\{[^}]*\}|\[[^\]]*\]\([^)]*\)|[*_\"'’“”()\[\]]",
                     flags=re.S)


def solution_phrases(source: str) -> tuple[str, str] | None:
    """The first and last plain-word phrases of a solution cell's prose (fences, options and code
    blocks left out), or None when it has none."""
    prose, fence = [], None
    for line in source.splitlines():
        stripped = line.strip()
        opener = re.match(r"^(`{3,}|:{3,})", stripped)
        if fence is None and opener and not re.match(r"^(`{3,}|:{3,})\s*\{admonition\}", stripped):
            fence = opener.group(1)  # a code block inside the solution: skip to its end
            continue
        if fence is not None:
            if stripped.startswith(fence) and stripped.strip(fence[0]) == "":
                fence = None
            continue
        if opener or re.match(r"^:\w+:", stripped):
            continue  # the admonition's own fences and options
        prose.append(stripped if stripped else "\n")
    text = _MARKUP.sub("|", " ".join(prose))
    phrases = _PHRASE.findall(text)
    return (phrases[0], phrases[-1]) if phrases else None


# An alt text that is a file name or a path ("_images/ab12.png", "chapters/x.svg").
ALT_IS_PATH = re.compile(r"(^|/)[\w.-]+\.(png|jpe?g|svg|gif|webp)$|^[\w./-]*/[\w./-]*$", flags=re.IGNORECASE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(HTML)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "index.html", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError(f"http.server did not start on port {port}")
    yield base
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="flowbook-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,1600",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for drivers online
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


# Waits for MathJax's first typeset and for every image (lazy ones forced to load), then reports.
INSPECT = """
const done = arguments[arguments.length - 1];
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const imgs = Array.from(document.images);
  imgs.forEach(img => { img.loading = 'eager'; });
  await Promise.all(imgs.map(img => img.complete ? null : new Promise(r => {
      img.addEventListener('load', r); img.addEventListener('error', r); setTimeout(r, 15000); })));
  const article = document.querySelector('article') || document.body;
  const h1 = article.querySelector('h1');
  done({
    title: h1 ? h1.textContent.replace(/#\\s*$/, '').trim() : null,
    mathjax: !!window.MathJax,
    math: document.querySelectorAll('.math').length,
    mjx: document.querySelectorAll('mjx-container').length,
    mjxErrors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.textContent).slice(0, 5),
    images: imgs.map(i => ({src: i.getAttribute('src'), alt: i.getAttribute('alt'), w: i.naturalWidth,
                            visible: i.offsetParent !== null})),
    // TeX that MathJax did not typeset: the text outside math, code and scripts
    rawTex: (() => {
      const copy = article.cloneNode(true);
      copy.querySelectorAll('mjx-container, .math, pre, code, script, style, .cell_output')
          .forEach(e => e.remove());
      const text = copy.textContent;
      const found = text.match(/\\$\\$|\\\\(?:frac|mathbf|mathrm|boldsymbol|begin|end|sum|int|ln|left|right)\\b/g);
      return found ? Array.from(new Set(found)).slice(0, 5) : [];
    })(),
    widgetViews: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
    widgetsRendered: document.querySelectorAll('.widget-inline-hbox, .widget-box, .widget-output, .jupyter-widgets-output-area').length,
    widgetErrors: (document.body.innerText.match(/Error displaying widget/g) || []).length,
    firstFigureY: (() => { const f = article.querySelector('img[src*="_images/"]');
                           return f ? f.getBoundingClientRect().top + window.scrollY : null; })(),
  });
})().catch(e => done({error: String(e)}));
"""


# Run after the screenshots: opens every dropdown (solutions are read open too), then reports the
# admonitions, code blocks, tables and anything that overflows the content column.
LAYOUT = """
const done = arguments[arguments.length - 1];
(async () => {
  const article = document.querySelector('article.bd-article') || document.querySelector('article') || document.body;
  document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const norm = t => (t || '').replace(/\\s+/g, ' ').trim();
  const short = t => { t = norm(t); return t.length > 90 ? t.slice(0, 87) + '...' : t; };
  // Code cells (input and output) may scroll; everything else must fit the column.
  const inCode = el => !!el.closest('div.cell, div.highlight, pre, .output, .cell_output');
  const tex = el => {
    try {
      const items = MathJax.startup.document.getMathItemsWithin(el);
      if (items.length) return items[0].math;
    } catch (e) { /* MathJax missing: fall back to the text */ }
    return el.textContent;
  };

  // Admonitions: the body must hold something; a dropdown must not be followed by a code block.
  const admonitions = Array.from(article.querySelectorAll('div.admonition'));
  const emptyAdmonitions = admonitions.filter(a => {
    const body = Array.from(a.children).filter(c => !c.classList.contains('admonition-title'));
    return !body.some(c => norm(c.textContent) || c.querySelector('img, mjx-container, table'));
  }).map(a => short(a.textContent));
  const codeAfterDropdown = admonitions.filter(a => a.classList.contains('dropdown')).map(a => a.nextElementSibling)
      .filter(n => n && (n.matches('div[class*="highlight"], pre') || n.querySelector(':scope > div.highlight')))
      .map(n => short(n.textContent) || '(empty)');
  const emptyCode = Array.from(article.querySelectorAll('pre'))
      .filter(p => !norm(p.textContent) && !p.closest('.cell_output, .output')).length;
  const dropdownText = admonitions.filter(a => a.classList.contains('dropdown')).map(a => norm(a.textContent));

  // Horizontal overflow, measured on the open page against the article's content box.
  const box = article.getBoundingClientRect();
  const left = box.left + parseFloat(getComputedStyle(article).paddingLeft);
  const right = box.right - parseFloat(getComputedStyle(article).paddingRight);
  const overflow = [];
  const report = (kind, el, what, r, extra) => {
    overflow.push(`${kind} ${what}: ${Math.round(r.left - left)}..${Math.round(r.right - left)} px of a ` +
                  `${Math.round(right - left)} px column${extra || ''}`);
  };
  for (const el of article.querySelectorAll('p, li, dt, dd, blockquote, h1, h2, h3, h4, table')) {
    if (inCode(el)) continue;
    const r = el.getBoundingClientRect();
    if (!r.width) continue;
    const kind = el.tagName.toLowerCase();
    if (r.right > right + 2 || r.left < left - 2) { report(kind, el, `"${short(el.textContent)}"`, r); continue; }
    // a table wider than its scroll container is cut off, with a scrollbar at best
    const holder = kind === 'table' ? el.parentElement : el;
    if (holder.scrollWidth > holder.clientWidth + 2) {
      report(kind, el, `"${short(el.textContent)}"`, r, ` (scrolls: ${holder.scrollWidth} px in ${holder.clientWidth})`);
    }
  }
  // Code blocks, code cells and printouts: a line wider than its box is cut at the right edge (or
  // hidden behind a scrollbar), so none may be wider.
  for (const el of article.querySelectorAll('pre')) {
    const r = el.getBoundingClientRect();
    if (!r.width || el.closest('.toggle-hidden')) continue;
    if (el.scrollWidth > el.clientWidth + 2) {
      const line = (el.textContent.split('\\n').reduce((a, b) => (b.length > a.length ? b : a), ''));
      report('code', el, `"${short(line)}"`, r, ` (${el.scrollWidth} px of text in ${el.clientWidth})`);
    }
  }
  for (const el of article.querySelectorAll('mjx-container')) {
    if (inCode(el)) continue;
    const math = el.querySelector('mjx-math');
    if (!math) continue;
    const r = math.getBoundingClientRect();
    if (!r.width) continue;
    // The theme clips inline math at its span.math and scrolls display math inside its mjx-container:
    // the typeset formula must lie within that box and within the column.
    const clip = (el.getAttribute('display') === 'true' ? el : el.closest('.math') || el).getBoundingClientRect();
    const limitRight = Math.min(right, clip.right), limitLeft = Math.max(left, clip.left);
    if (r.right > limitRight + 2 || r.left < limitLeft - 2) {
      const kind = el.getAttribute('display') === 'true' ? 'display math' : 'inline math';
      report(kind, el, short(tex(el)), r, r.right > right + 2 ? '' : ` (cut at ${Math.round(clip.right - left)} px)`);
    }
  }

  // Tables must not show raw NaN: a missing value is written out ("n/a", "-") or explained.
  const nan = Array.from(new Set(Array.from(article.querySelectorAll('table td, table th'))
      .filter(c => /(^|[^A-Za-z])nan([^A-Za-z]|$)/i.test(c.textContent)).map(c => c.closest('tr'))))
      .map(row => short(row.textContent));

  done({emptyAdmonitions, codeAfterDropdown, emptyCode, dropdownText, overflow, nan});
})().catch(e => done({error: String(e)}));
"""


@pytest.mark.parametrize("page", PAGES)
def test_page_renders(page, server, browser):
    browser.get(server + page)
    info = browser.execute_async_script(INSPECT)
    assert "error" not in info, info.get("error")
    stem = page.replace("/", "__").removesuffix(".html")
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / f"{stem}.png"))
    if info["firstFigureY"] is not None:
        browser.execute_script("window.scrollTo(0, arguments[0] - 100);", info["firstFigureY"])
        time.sleep(0.3)
        browser.save_screenshot(str(SHOTS / f"{stem}__figure.png"))
    layout = browser.execute_async_script(LAYOUT)
    assert "error" not in layout, layout.get("error")
    problems = []

    def check(name: str, messages: list[str], limit: int = 8) -> None:
        if messages:
            more = f" (and {len(messages) - limit} more)" if len(messages) > limit else ""
            problems.append(f"{name}:\n    " + "\n    ".join(messages[:limit]) + more)

    expected = chapter_title(page)
    if expected is not None:
        # MyST renders inline markup in the heading; compare the words only
        clean = lambda s: re.sub(r"[`*_$\\{}]", "", s or "").strip()  # noqa: E731
        if clean(info["title"]) != clean(expected):
            problems.append(f"title {info['title']!r}, expected {expected!r}")
    if info["math"]:
        if not info["mathjax"]:
            problems.append("MathJax did not load (check the vendored mathjax_path)")
        elif info["mjx"] == 0:
            problems.append(f"{info['math']} math elements but nothing typeset (<mjx-container>)")
    if info["mjxErrors"]:
        problems.append(f"MathJax errors in formulas: {info['mjxErrors']}")
    broken = [img["src"] for img in info["images"] if img["w"] == 0 and img["visible"]]
    if broken:
        problems.append(f"images that did not load: {broken}")
    # alt text is what a screen reader reads: a path or file name says nothing about the figure
    unnamed = [f"{img['src']} (alt={img['alt']!r})" for img in info["images"]
               if "_images/" in (img["src"] or "") and (
                   not (img["alt"] or "").strip() or ALT_IS_PATH.search(img["alt"].strip()))]
    check("images whose alt text is missing or a path", unnamed)
    if info["rawTex"]:
        problems.append(f"raw TeX in the text (not typeset): {info['rawTex']}")
    if info["widgetViews"] and not info["widgetsRendered"]:
        problems.append(f"{info['widgetViews']} stored widget views but none rendered")
    if info["widgetErrors"]:
        problems.append(f"{info['widgetErrors']} widgets show 'Error displaying widget'")

    # Solutions: each solution cell of the notebook must render inside one dropdown.
    leaks = []
    solutions = solution_cells(page)
    dropdowns = " || ".join(layout["dropdownText"])
    for number, source in enumerate(solutions, 1):
        phrases = solution_phrases(source)
        missing = [p for p in (phrases or ()) if p not in dropdowns]
        if missing:
            leaks.append(f"solution cell {number}: {missing[-1]!r} is not inside a dropdown (a code fence "
                         "nested in the admonition's fence closes it early: use ```` or ::: outside)")
    if len(layout["dropdownText"]) < len(solutions):
        leaks.append(f"{len(solutions)} solution cells but {len(layout['dropdownText'])} dropdowns")
    leaks += [f"empty admonition: {t!r}" for t in layout["emptyAdmonitions"]]
    leaks += [f"code block directly after a dropdown: {t!r}" for t in layout["codeAfterDropdown"]]
    if layout["emptyCode"]:
        leaks.append(f"{layout['emptyCode']} empty code block(s) outside cell outputs")
    check("admonitions", leaks)
    check("overflow", layout["overflow"])
    check("NaN in tables", [f"row {row!r}" for row in layout["nan"]])
    # Every SEVERE console entry is an error a reader's browser shows: JavaScript errors and failed requests.
    check("console errors", [entry["message"] for entry in browser.get_log("browser")
                             if entry["level"] == "SEVERE"])
    print(f"{page}: title={info['title']!r} math={info['math']} typeset={info['mjx']} "
          f"images={len(info['images'])} widgets={info['widgetViews']} solutions={len(solutions)}")
    assert not problems, f"{page}:\n  " + "\n  ".join(problems)
