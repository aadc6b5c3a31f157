"""The website builds strictly; every chapter page shows its stored plots, an Open in Colab badge
and a download link; the API reference links helpers to their chapters; and no page loads
anything from another host (the book reads offline).

``tests/test_browser.py`` then opens the same build in a real browser.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sitebuild import ROOT, appendices, build_site, chapter_number, chapters

CHAPTERS = chapters()
APPENDICES = appendices()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return build_site(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def hooks():
    spec = importlib.util.spec_from_file_location("book_hooks", ROOT / "scripts" / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _chapter_page(site: Path, notebook: Path) -> Path:
    return site / "notebooks" / notebook.stem / "index.html"


def test_home_page_is_the_readme(site):
    html_text = (site / "index.html").read_text()
    assert "Learning to Learn" in html_text and "make test" in html_text
    # README's picture (docs/assets/...) is part of the site, linked relative to the home page.
    pictures = re.findall(r'<img[^>]+src="(assets/[^"]+)"', html_text)
    assert pictures, "the home page shows no picture from docs/assets/"
    for src in pictures:
        assert (site / src).is_file(), f"home page picture {src} is not in the site"


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_page_shows_title_and_plots(site, notebook):
    page = _chapter_page(site, notebook)
    assert page.exists(), f"no page for {notebook.name}"
    html_text = page.read_text()
    number = chapter_number(notebook)
    assert re.search(rf"<h1[^>]*>\s*{number}\.", html_text), f"{notebook.name}: no '<h1>{number}. ...' title"
    plots = re.findall(r'<img[^>]+src="data:image/png;base64,', html_text)
    assert plots, f"{notebook.name}: no stored plot; run the notebook in full and commit its outputs"
    assert "Traceback (most recent call last)" not in html_text, f"{notebook.name}: a stored output holds an error"


def _readme_repository() -> str:
    found = set(re.findall(r"mlhelpers @ git\+(https://github\.com/[\w.-]+/[\w.-]+)", (ROOT / "README.md").read_text()))
    assert len(found) == 1, found
    return found.pop().removesuffix(".git")


@pytest.mark.parametrize("notebook", APPENDICES, ids=lambda p: p.stem)
def test_appendix_page_shows_title_after_the_chapters(site, notebook):
    page = _chapter_page(site, notebook)
    assert page.exists(), f"no page for {notebook.name}"
    html_text = page.read_text()
    title = json.loads(notebook.read_text())["cells"][0]["source"][0].removeprefix("# ").split(":")[0].strip()
    assert re.search(rf"<h1[^>]*>\s*{re.escape(title)}", html_text), f"{notebook.name}: no '<h1>{title}...' title"
    assert "Traceback (most recent call last)" not in html_text, f"{notebook.name}: a stored output holds an error"
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(nav.index(f"notebooks/{notebook.name}") > nav.index(f"notebooks/{c.name}") for c in CHAPTERS), (
        f"{notebook.name} should come after the chapters in the nav"
    )


@pytest.mark.parametrize("notebook", CHAPTERS + APPENDICES, ids=lambda p: p.stem)
def test_chapter_page_has_colab_badge_and_download(site, notebook):
    page = _chapter_page(site, notebook)
    html_text = page.read_text()
    owner_repo = _readme_repository().removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{notebook.name}"
    bar = re.search(r'<p class="book-notebook-links">(.*?)</p>', html_text, re.S)
    assert bar, f"{notebook.name}: no Colab/download bar under the title"
    hrefs = [html.unescape(h) for h in re.findall(r'href="([^"]+)"', bar.group(1))]
    assert colab in hrefs, f"{notebook.name}: no link to {colab} in {hrefs}"
    badge = re.search(r'<img[^>]+src="([^"]+)"', bar.group(1))
    assert badge and (page.parent / badge.group(1)).resolve().is_file(), "the Colab badge is not served by the site"
    download = [h for h in hrefs if h.endswith(".ipynb") and "://" not in h]
    assert download, f"{notebook.name}: no download link"
    stored = json.loads((page.parent / download[0]).read_text())
    assert stored == json.loads(notebook.read_text()), "the download is not the chapter's notebook"
    # The title comes first, then the bar.
    assert html_text.index("</h1>") < bar.start()


def _module_sections(api_html: str) -> dict[str, str]:
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'<h2 id="(mlhelpers[\w.]*)"', api_html)]
    ends = [start for start, _ in starts[1:]] + [len(api_html)]
    return {name: api_html[start:end] for (start, name), end in zip(starts, ends)}


def test_api_reference_documents_the_learners(site):
    api = (site / "api" / "index.html").read_text()
    for name in ["EpisodicSampler", "ProtoNet", "meta_train", "load_omniglot"]:
        assert name in api, f"API reference lacks {name}"


def test_api_reference_links_each_module_to_its_chapter(site):
    api_page = site / "api" / "index.html"
    api = api_page.read_text()
    sections = _module_sections(api)
    assert len(sections) >= 10, sorted(sections)
    existing = {chapter_number(nb): nb for nb in CHAPTERS}
    for module, section in sections.items():
        text = html.unescape(re.sub(r"<[^>]+>", "", section))
        assert re.search(r"\bChapters?\s+\d", text), f"{module}'s docstrings name no chapter"
    links = re.findall(r'<a href="([^"]+)">(?:Chapter )?(\d+)</a>', api)
    linked = {int(n) for _, n in links}
    mentioned = {int(n) for n in re.findall(r"\bChapter\s+(\d+)", html.unescape(re.sub(r"<[^>]+>", "", api)))}
    named = mentioned & set(existing)
    assert named <= linked, f"chapters named but not linked: {sorted(named - linked)}"
    assert linked <= set(existing), f"links to chapters that do not exist: {sorted(linked - set(existing))}"
    for href, number in links:
        target = (api_page.parent / href / "index.html").resolve()
        assert target == _chapter_page(site, existing[int(number)]).resolve(), (href, number)


# --- Nothing from another host -------------------------------------------------------------------

# Elements and attributes through which a page loads something.
_LOADING_ATTRIBUTES = {
    "script": ["src"],
    "link": ["href"],
    "img": ["src", "srcset"],
    "source": ["src", "srcset"],
    "iframe": ["src"],
    "video": ["src", "poster"],
    "audio": ["src"],
    "embed": ["src"],
    "object": ["data"],
    "input": ["src"],
}
_EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.I)  # https://x, http://x, //x
_CSS_EXTERNAL = re.compile(r"""(?:url\(\s*["']?|@import\s+["'])\s*(?:https?:)?//""", re.I)
_JS_EXTERNAL = re.compile(r"""(?:\bimport\s*\(|importScripts\s*\(|\bfetch\s*\(|\.src\s*=)\s*["'`](?:https?:)?//""")


class _ExternalReferences(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        rel = (attributes.get("rel") or "").lower().split()
        if tag == "link" and set(rel) & {"canonical", "alternate", "author", "license"}:
            return  # not loaded by the browser
        for name in _LOADING_ATTRIBUTES.get(tag, []):
            for url in re.split(r",\s*", attributes.get(name) or ""):
                if _EXTERNAL.match(url):
                    self.found.append(f"<{tag} {name}={url.split()[0]!r}>")
        if _CSS_EXTERNAL.search(attributes.get("style") or ""):
            self.found.append(f"<{tag} style=...> loads {_CSS_EXTERNAL.search(attributes['style']).group(0)}")
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "style" and _CSS_EXTERNAL.search(data):
            self.found.append(f"<style> loads {_CSS_EXTERNAL.search(data).group(0)}...")
        if self._in == "script" and _JS_EXTERNAL.search(data):
            match = _JS_EXTERNAL.search(data)
            self.found.append(f"<script> loads {data[match.start() : match.end() + 60]!r}")


def external_references(html_text: str) -> list[str]:
    parser = _ExternalReferences()
    parser.feed(html_text)
    return parser.found


def test_external_reference_detector_catches_cdn_loads():
    assert external_references('<script src="https://cdn.example/x.js"></script>')
    assert external_references('<link rel="stylesheet" href="//fonts.example/css">')
    assert external_references('<img src="http://example.org/a.png">')
    assert external_references('<style>@import url("https://fonts.googleapis.com/css");</style>')
    assert external_references('<script type="module">await import("https://cdnjs.x/m.mjs")</script>')
    assert external_references('<img srcset="a.png 1x, https://x.org/b.png 2x">')
    clean = (
        '<script src="../assets/x.js"></script><a href="https://colab.research.google.com/x">C</a>'
        '<img src="data:image/png;base64,AAAA"><link rel="canonical" href="https://book.example/">'
        "<p>see https://example.org</p>"
    )
    assert external_references(clean) == []


def test_site_loads_nothing_from_another_host(site):
    problems = []
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= len(CHAPTERS) + 2
    for page in pages:
        problems += [f"{page.relative_to(site)}: {p}" for p in external_references(page.read_text())]
    for css in sorted(site.rglob("*.css")):
        for match in _CSS_EXTERNAL.finditer(css.read_text(errors="replace")):
            problems.append(f"{css.relative_to(site)}: {match.group(0)}")
    assert not problems, "the site loads from other hosts:\n" + "\n".join(problems[:30])


def test_mathjax_is_served_by_the_site(site):
    page = _chapter_page(site, CHAPTERS[0]).read_text() if CHAPTERS else (site / "api" / "index.html").read_text()
    scripts = re.findall(r'<script[^>]+src="([^"]*)"', page)
    assert any(s.endswith("assets/mathjax/tex-mml-chtml.js") for s in scripts), scripts
    assert (site / "assets" / "mathjax" / "tex-mml-chtml.js").stat().st_size > 100_000
    fonts = list((site / "assets" / "mathjax" / "output" / "chtml" / "fonts").rglob("*.woff"))
    assert fonts, "MathJax's fonts are not in the site"
    assert "" not in scripts, "an empty <script src> is left in the page"
    assert 'type="text/x-mathjax-config"' not in page, "mkdocs-jupyter's MathJax 2 config is left in the page"


# --- The hook's pieces ---------------------------------------------------------------------------


def test_hook_links_chapter_mentions_only_in_text(hooks):
    urls = {1: "../notebooks/01_a/", 3: "../notebooks/03_c/"}
    out = hooks.link_chapter_mentions(
        "<p>Chapter 1 and Chapter 9; Chapters 1-3.</p><code>Chapter 1</code>"
        '<a href="x">Chapter 3</a><h2>Chapter 1</h2>',
        urls,
    )
    assert out.count('<a href="../notebooks/01_a/">Chapter 1</a>') == 1
    assert "Chapter 9" in out and "notebooks/09" not in out  # no page yet: plain text
    assert 'Chapters <a href="../notebooks/01_a/">1</a>-<a href="../notebooks/03_c/">3</a>' in out
    assert "<code>Chapter 1</code>" in out and '<a href="x">Chapter 3</a>' in out and "<h2>Chapter 1</h2>" in out


def test_hook_reads_the_repository_from_the_readme(hooks):
    readme = '%pip install -q "mlhelpers @ git+https://github.com/owner/book"\n'
    assert hooks.repository_url(readme) == "https://github.com/owner/book"
    assert (
        hooks.colab_url("https://github.com/owner/book", "notebooks/01_x.ipynb")
        == "https://colab.research.google.com/github/owner/book/blob/main/notebooks/01_x.ipynb"
    )
    with pytest.raises(Exception, match="once"):
        hooks.repository_url(readme + readme.replace("owner", "other"))
    assert hooks.repository_url((ROOT / "README.md").read_text()) == _readme_repository()


def test_hook_strips_mkdocs_jupyter_cdn_scripts(hooks):
    page = (
        '<script src=""></script><script type="text/x-mathjax-config">MathJax.Hub.Config({})</script>'
        '<script type="module">const m = await import("https://cdnjs.x/mermaid.esm.min.mjs");</script>'
        '<script>keep()</script><script type="module">other()</script>'
    )
    out = hooks.strip_notebook_junk(page)
    assert out == '<script>keep()</script><script type="module">other()</script>'
