"""The website in a real browser: build it, serve it on localhost, open every chapter page, the API
reference and the home page in headless Chromium, and check what a reader sees.

Per chapter: the title; plots that actually loaded (``naturalWidth > 0``); math typeset by
MathJax (no TeX errors, no raw ``$$``, ``\\(`` or ``\\[`` left in the text); the Open in Colab
badge and the notebook download; the footer's "next" link leads to the next chapter; no request
leaves localhost and none fails. A full-page screenshot of each page is saved under
``test-artifacts/screenshots/``.

The browser is Debian's ``chromium`` (``scripts/install-browser.sh``, run by ``make test``,
installs it with apt-get when missing), driven by Playwright's Python package; nothing is
downloaded from a browser vendor (``playwright install`` is never run).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

from sitebuild import ROOT, appendices, build_site, chapter_number, chapters

CHAPTERS = chapters()
APPENDICES = appendices()
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
TIMEOUT_MS = 60_000  # per wait; a page normally settles in a second or two


def _chromium() -> str:
    for candidate in (os.environ.get("BOOK_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail(
        "Chromium is missing: run scripts/install-browser.sh (apt-get install -y chromium), "
        "or set BOOK_CHROMIUM to a Chromium/Chrome executable"
    )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    site = build_site(tmp_path_factory.getbasetemp())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright import sync_api
    except ImportError:  # a dev dependency: fail, do not skip, so CI cannot pass without the browser test
        pytest.fail("Playwright is missing: pip install -e '.[dev]' (the Python package only; no 'playwright install')")
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=["--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"],
        )
        yield browser
        browser.close()


class Visit:
    """One browser tab that records every request, failed request and script error."""

    def __init__(self, browser, base_url: str, color_scheme: str = "light") -> None:
        self.base_url = base_url
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme=color_scheme)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.failures: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.failures.append(f"{r.url}: {r.failure}"))
        self.page.on("response", lambda r: r.status >= 400 and self.failures.append(f"{r.url}: HTTP {r.status}"))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))

    def open(self, path: str) -> None:
        self.page.goto(self.base_url + path, wait_until="load")
        self.wait_for_math()

    def wait_for_math(self) -> None:
        # docs/javascripts/mathjax-config.js sets data-book-math once MathJax has typeset the page.
        self.page.wait_for_selector("body[data-book-math]", state="attached")
        assert self.page.get_attribute("body", "data-book-math") == "typeset", "MathJax failed (see console)"

    def check_clean(self) -> None:
        outside = [u for u in self.requests if not u.startswith((self.base_url, "data:", "blob:", "about:"))]
        assert not outside, f"requests that leave the site: {outside[:10]}"
        assert not self.failures, f"failed requests: {self.failures[:10]}"
        assert not self.errors, f"script errors: {self.errors[:10]}"

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        assert path.stat().st_size > 10_000, f"screenshot {path} is suspiciously small"
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture()
def visit(browser, base_url):
    tab = Visit(browser, base_url)
    yield tab
    tab.close()


def _chapter_path(notebook: Path) -> str:
    return f"notebooks/{notebook.stem}/"


# What a reader sees as text, without code cells and text outputs (where "$" and "\(" are code).
_PROSE_TEXT = """() => {
  const body = document.querySelector("article") || document.body;
  const copy = body.cloneNode(true);
  copy.querySelectorAll("pre, code, .jp-InputArea, .jp-OutputArea-output pre, mjx-container, script, style")
      .forEach((e) => e.remove());
  return copy.textContent;
}"""

_RAW_MATH = re.compile(r"\$\$|\\\(|\\\[|\\begin\{")


def _check_math(page, expect_math: bool) -> int:
    rendered = page.locator("mjx-container").count()
    if expect_math:
        assert rendered > 0, "no MathJax output on the page"
    errors = page.locator("mjx-merror").all_inner_texts()
    assert not errors, f"TeX errors: {errors[:5]}"
    raw = _RAW_MATH.findall(page.evaluate(_PROSE_TEXT))
    assert not raw, f"raw TeX left in the text: {raw[:5]}"
    return rendered


@pytest.mark.parametrize("index", range(len(CHAPTERS)), ids=[nb.stem for nb in CHAPTERS])
def test_chapter_page_in_the_browser(visit, index):
    notebook = CHAPTERS[index]
    number = chapter_number(notebook)
    visit.open(_chapter_path(notebook))
    page = visit.page

    # Title: the page's <h1> and the window title.
    h1 = page.locator("article h1").first.inner_text().strip()
    assert re.match(rf"{number}\.\s+\S", h1), f"title {h1!r} should start with '{number}. '"
    assert h1.rstrip("¶").strip() in page.title()

    # Plots: every stored figure is decoded and has a size.
    plots = page.evaluate(
        """() => Array.from(document.querySelectorAll(".jp-OutputArea-output img"))
                   .map((img) => [img.complete, img.naturalWidth, img.naturalHeight])"""
    )
    assert plots, "no plot on the page"
    assert all(done and w > 0 and h > 0 for done, w, h in plots), f"plots that did not load: {plots}"

    _check_math(page, expect_math=True)

    # Open in Colab (a badge served by the site) and the .ipynb download.
    badge = page.locator(".book-notebook-links a.book-colab")
    assert badge.get_attribute("href").startswith("https://colab.research.google.com/github/")
    assert badge.get_attribute("href").endswith(f"/notebooks/{notebook.name}")
    assert page.evaluate("() => document.querySelector('.book-colab img').naturalWidth") > 0
    download = page.locator(".book-notebook-links a.book-download")
    response = page.request.get(visit.base_url + _chapter_path(notebook) + download.get_attribute("href"))
    assert response.ok and json.loads(response.body())["nbformat"] == 4

    # Code cells have copy buttons.
    assert page.locator("clipboard-copy").count() > 0

    visit.screenshot(notebook.stem)
    visit.check_clean()

    # The footer's "next" link leads to the next chapter (after the last: the first appendix, else the API reference).
    after_last = _chapter_path(APPENDICES[0]) if APPENDICES else "api/"
    following = _chapter_path(CHAPTERS[index + 1]) if index + 1 < len(CHAPTERS) else after_last
    with page.expect_navigation(wait_until="domcontentloaded"):
        page.locator("a.md-footer__link--next").click()
    assert page.url == visit.base_url + following, (
        f"'next' leads to {page.url}, not to {following} (is every chapter in mkdocs.yml's nav, in order?)"
    )
    next_h1 = page.locator("article h1").first.inner_text().strip()
    if index + 1 < len(CHAPTERS):
        assert next_h1.startswith(f"{chapter_number(CHAPTERS[index + 1])}."), next_h1
    elif APPENDICES:
        first_title = json.loads(APPENDICES[0].read_text())["cells"][0]["source"][0].removeprefix("# ").split(":")[0]
        assert next_h1.startswith(first_title.strip()), next_h1
    else:
        assert next_h1.startswith("API reference"), next_h1


def test_api_reference_in_the_browser(visit):
    visit.open("api/")
    page = visit.page
    assert page.locator("article h1").first.inner_text().strip().rstrip("¶").strip() == "API reference"
    assert "API reference" in page.title()
    assert page.locator("article h2").count() >= 10, "module sections are missing"
    _check_math(page, expect_math=False)
    visit.screenshot("api", full_page=False)  # the page is ~40 screens long: its top is enough
    visit.check_clean()

    # "Chapter N" in a docstring is a link that lands on chapter N.
    link = page.locator("article a", has_text=re.compile(r"^Chapter \d+$")).first
    number = int(link.inner_text().split()[1])
    with page.expect_navigation(wait_until="domcontentloaded"):
        link.click()
    assert re.search(r"/notebooks/\d+_[^/]+/$", page.url), page.url
    assert page.locator("article h1").first.inner_text().strip().startswith(f"{number}.")


def test_home_page_search_and_dark_mode(visit):
    visit.open("")
    page = visit.page
    assert page.locator("article h1").first.inner_text().strip().rstrip("¶").strip() == "Learning to Learn"
    picture = page.locator("article img").first
    assert picture.evaluate("(img) => img.complete && img.naturalWidth") > 0, "the README picture did not load"
    # The chapter table links to every chapter.
    hrefs = page.eval_on_selector_all("article table a", "(links) => links.map((a) => a.href)")
    for notebook in CHAPTERS:
        assert visit.base_url + _chapter_path(notebook) in hrefs, f"the chapter table lacks {notebook.stem}"

    # Search runs offline (a web worker over the built index).
    page.locator("label.md-search__icon, .md-search__input").first.click()
    page.locator("input.md-search__input").press_sequentially("MAML", delay=20)  # fill() sends no key events
    page.wait_for_selector(".md-search-result__item")
    assert page.locator(".md-search-result__item").count() > 0
    page.keyboard.press("Escape")

    # Light/dark toggle.
    assert page.get_attribute("body", "data-md-color-scheme") == "default"
    page.locator("form[data-md-component='palette'] label:visible").first.click()
    page.wait_for_function("() => document.body.getAttribute('data-md-color-scheme') === 'slate'")
    visit.screenshot("home-dark")
    visit.check_clean()
