"""Open the built book in a real, headless Chromium and check what a reader sees.

    pytest .ci/browser_test.py          # after `jupyter-book build` with .ci/offline_config.py

For each chapter page (and the intro and notation pages) it checks the title, that MathJax typeset
the math without errors (``<mjx-container>`` elements, no ``<mjx-merror>``), that every image loaded
(``naturalWidth > 0``), that stored widgets rendered, and that the browser logged no failed request;
it saves screenshots in ``_build/screenshots/``. The page is served from
``python -m http.server --bind 127.0.0.1``, and the browser runs without network: MathJax and the
widget libraries must come from _vendor/ (see .ci/vendor.sh and .ci/offline_config.py).

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

PAGES = (["intro.html", "notation.html"]
         + sorted(str(p.relative_to(HTML)) for p in (HTML / "chapters").glob("*.html"))
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
    images: imgs.map(i => ({src: i.getAttribute('src'), w: i.naturalWidth, visible: i.offsetParent !== null})),
    widgetViews: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
    widgetsRendered: document.querySelectorAll('.widget-inline-hbox, .widget-box, .widget-output, .jupyter-widgets-output-area').length,
    widgetErrors: (document.body.innerText.match(/Error displaying widget/g) || []).length,
    firstFigureY: (() => { const f = article.querySelector('img[src*="_images/"]');
                           return f ? f.getBoundingClientRect().top + window.scrollY : null; })(),
  });
})().catch(e => done({error: String(e)}));
"""


# Console errors from the jupyter-book 1 stack itself, the same on every page and harmless:
KNOWN_NOISE = (
    "favicon",
    # sphinx-thebe's inline config is emitted twice by jupyter-book 1 (thebe is off in this book)
    "Identifier 'THEBE_JS_URL' has already been declared",
    # pydata-sphinx-theme logs this on a first visit, before a light/dark choice is stored
    "Got invalid theme mode",
    # the ipywidgets 8 HTML manager typesets widget labels with MathJax 2's MathJax.Hub.Queue, which
    # MathJax 3 lacks; the widget still renders (its label stays plain text)
    "reading 'Queue'",
)


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
    problems = []
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
    if info["widgetViews"] and not info["widgetsRendered"]:
        problems.append(f"{info['widgetViews']} stored widget views but none rendered")
    if info["widgetErrors"]:
        problems.append(f"{info['widgetErrors']} widgets show 'Error displaying widget'")
    failed = [entry["message"] for entry in browser.get_log("browser")
              if entry["level"] == "SEVERE" and not any(k in entry["message"] for k in KNOWN_NOISE)]
    if failed:
        problems.append(f"browser errors: {failed[:5]}")
    print(f"{page}: title={info['title']!r} math={info['math']} typeset={info['mjx']} "
          f"images={len(info['images'])} widgets={info['widgetViews']}")
    assert not problems, f"{page}:\n  " + "\n  ".join(problems)
