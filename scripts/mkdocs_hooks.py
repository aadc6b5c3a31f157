"""MkDocs hooks for the book's website (listed under ``hooks:`` in mkdocs.yml).

They bring into the build what lives outside ``docs/``, without copies or symlinks in the
repository:

- ``README.md`` becomes the home page ``index.md``: links into ``docs/`` are made relative to
  the site root; links to other repository files are turned into plain text (the site holds
  only the pages, the notebooks and the API reference).
- ``notebooks/*.ipynb`` become ``notebooks/*.ipynb`` pages, rendered by mkdocs-jupyter from
  their stored outputs.
- MathJax 3 (``es5/`` from the ``django-static-mathjax`` wheel, a ``book`` extra) is served by
  the site itself under ``assets/mathjax/``, so formulas render offline.
- Every notebook page gets an "Open in Colab" badge and a download link for its ``.ipynb``,
  made from the one repository address README.md defines (its Colab install line).
- What mkdocs-jupyter adds to each notebook page and the site does not use is removed: its
  MathJax 2 configuration and empty MathJax ``<script src="">`` (the site loads MathJax 3 itself)
  and its Mermaid loader, which imports Mermaid from a CDN. The book loads nothing from another
  host (``tests/test_site.py`` checks the built HTML, ``tests/test_browser.py`` the requests).
- On the API reference, "Chapter N" in a docstring links to chapter N's page (when it exists).

``mkdocs serve`` also watches README.md and notebooks/.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.book")

MATHJAX_DEST = "assets/mathjax"
# Bundles and folders of MathJax's es5/ that the site needs: the combined TeX+MathML->CHTML
# component, its fonts, and what it loads on demand (TeX extensions such as boldsymbol, the
# menu, accessibility and speech).
MATHJAX_PARTS = ("tex-mml-chtml.js", "input", "output/chtml", "ui", "a11y", "sre", "adaptors")

_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)([^)]*)\)")

# The repository address: README.md's Colab install line (the one place it is written).
_INSTALL_URL = re.compile(r"mlhelpers @ git\+(https://github\.com/[\w.-]+/[\w.-]+?)(?:\.git)?[\"'\s]")
BRANCH = "main"
COLAB_BADGE = "assets/colab-badge.svg"  # in docs/: served by the site, not by Colab
CHAPTER_LINK_PAGES = {"api.md"}

# What mkdocs-jupyter writes into each notebook page that the site must not keep (see above).
_NOTEBOOK_JUNK = [
    re.compile(r"<script\s+src=\"\"\s*>\s*</script>"),  # MathJax with no URL configured
    re.compile(r"(?:<!--\s*MathJax configuration\s*-->\s*)?<script type=\"text/x-mathjax-config\">.*?</script>", re.S),
    re.compile(r"<script type=\"module\">(?:(?!</script>).)*?mermaid(?:(?!</script>).)*</script>", re.S),
]
_CHAPTER_MENTION = re.compile(r"\b(Chapters?)(\s+)(\d+)((?:\s*(?:-|\u2013|&ndash;|,|and|or|to)\s*\d+)*)")
_NO_LINKS_INSIDE = {"a", "code", "pre", "script", "style", "h1", "h2", "h3", "h4", "h5", "h6"}


def _root(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent


def readme_as_home_page(readme: str, root: Path) -> str:
    """Rewrite README.md's relative links for the site: ``docs/x.md`` -> ``x.md``; notebooks
    stay; links to other repository files (not part of the site) become their text."""

    def fix(match: re.Match[str]) -> str:
        bang, text, target, rest = match.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
            return match.group(0)  # absolute URL, anchor, or site-absolute path
        path, _, anchor = target.partition("#")
        if path.startswith("docs/"):
            new = path[len("docs/") :]
        elif path.startswith("notebooks/") and path.endswith(".ipynb"):
            new = path
        else:
            return text if not bang else ""
        return f"{bang}[{text}]({new}{'#' + anchor if anchor else ''}{rest})"

    return _LINK.sub(fix, readme)


def repository_url(readme: str) -> str:
    """The GitHub address in README.md's Colab install line (``mlhelpers @ git+https://...``)."""
    found = set(_INSTALL_URL.findall(readme))
    if len(found) != 1:
        raise PluginError(
            f"README.md should name the repository once, in its Colab install line "
            f"('mlhelpers @ git+https://github.com/OWNER/REPO'); found {sorted(found) or 'none'}"
        )
    return found.pop()


def colab_url(repo_url: str, notebook_path: str, branch: str = BRANCH) -> str:
    """``https://github.com/o/r`` + ``notebooks/x.ipynb`` -> the Colab address of that notebook."""
    owner_repo = repo_url.removeprefix("https://github.com/").strip("/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/{notebook_path}"


# Material Design's "download" icon, inline (no icon font to fetch).
_DOWNLOAD_ICON = (
    '<svg aria-hidden="true" viewBox="0 0 24 24" width="18" height="18">'
    '<path fill="currentColor" d="M5 20h14v-2H5zM19 9h-4V3H9v6H5l7 7z"/></svg>'
)


def notebook_links(colab: str, badge_src: str, ipynb_name: str) -> str:
    """The bar under a chapter's title: Open in Colab, and download the .ipynb."""
    return (
        '<p class="book-notebook-links">'
        f'<a class="book-colab" href="{html.escape(colab)}" title="Run this chapter in Google Colab">'
        f'<img src="{html.escape(badge_src)}" alt="Open in Colab" width="117" height="20"></a> '
        f'<a class="book-download" href="{html.escape(ipynb_name)}" download '
        'title="This chapter as a Jupyter notebook, with the outputs of a full run">'
        f"{_DOWNLOAD_ICON}Download the notebook (.ipynb)</a>"
        "</p>"
    )


def strip_notebook_junk(content: str) -> str:
    for pattern in _NOTEBOOK_JUNK:
        content = pattern.sub("", content)
    return content


def link_chapter_mentions(content: str, chapter_urls: dict[int, str]) -> str:
    """Turn "Chapter 3" (and each number of "Chapters 3-5") in text into links to the chapters
    that exist; text inside links, code, headings and scripts is left alone."""

    def link(number: str) -> str:
        url = chapter_urls.get(int(number))
        return f'<a href="{html.escape(url)}">{number}</a>' if url else number

    def mention(match: re.Match[str]) -> str:
        word, space, first, rest = match.groups()
        if not rest:
            url = chapter_urls.get(int(first))
            return f'<a href="{html.escape(url)}">{word}{space}{first}</a>' if url else match.group(0)
        return word + space + re.sub(r"\d+", lambda m: link(m.group(0)), first + rest)

    out: list[str] = []
    open_tags: list[str] = []
    for piece in re.split(r"(<[^>]*>)", content):
        tag = re.match(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)", piece)
        if tag:
            closing, name = tag.group(1), tag.group(2).lower()
            if name in _NO_LINKS_INSIDE:
                if not closing:
                    open_tags.append(name)
                elif name in open_tags:
                    del open_tags[len(open_tags) - 1 - open_tags[::-1].index(name)]
            out.append(piece)
        elif piece.startswith("<") or open_tags:
            out.append(piece)
        else:
            out.append(_CHAPTER_MENTION.sub(mention, piece))
    return "".join(out)


def _chapter_files(files: Files) -> dict[int, File]:
    chapters = {}
    for file in files.documentation_pages():
        match = re.fullmatch(r"notebooks/(\d+)_[^/]+\.ipynb", file.src_uri)
        if match:
            chapters[int(match.group(1))] = file
    return chapters


def _mathjax_es5() -> Path:
    try:
        import mathjax  # the django-static-mathjax wheel: mathjax/static/mathjax/es5/...
    except ImportError as error:
        raise PluginError(
            "MathJax is missing: install the book's tools with pip install -e '.[book]' "
            "(the django-static-mathjax wheel ships MathJax 3)"
        ) from error
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").is_file():
        raise PluginError(f"no tex-mml-chtml.js under {es5}: unexpected django-static-mathjax layout")
    return es5


@event_priority(100)  # before mkdocs-jupyter's on_files, so it picks up the notebooks
def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = _root(config)

    # Home page from README.md (a docs/index.md, if someone adds one, wins).
    if files.get_file_from_path("index.md") is None:
        readme = (root / "README.md").read_text(encoding="utf-8")
        files.append(
            File.generated(config, "index.md", content=readme_as_home_page(readme, root))
        )

    # The chapters. A plain File whose source folder is the repository root (not
    # File.generated): mkdocs-jupyter's wrapper finds the source through src_dir.
    for notebook in sorted((root / "notebooks").glob("*.ipynb")):
        files.append(
            File(
                f"notebooks/{notebook.name}",
                src_dir=str(root),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )

    # MathJax, served by the site.
    es5 = _mathjax_es5()
    for part in MATHJAX_PARTS:
        source = es5 / part
        paths = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        for path in paths:
            uri = f"{MATHJAX_DEST}/{path.relative_to(es5).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_content(content: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    src = page.file.src_uri
    if re.fullmatch(r"notebooks/[^/]+\.ipynb", src):
        content = strip_notebook_junk(content)
        root = _root(config)
        repo = repository_url((root / "README.md").read_text(encoding="utf-8"))
        badge = files.get_file_from_path(COLAB_BADGE)
        if badge is None:
            raise PluginError(f"docs/{COLAB_BADGE} is missing")
        bar = notebook_links(colab_url(repo, src), badge.url_relative_to(page.file), Path(src).name)
        content, found = re.subn(r"</h1>", lambda m: m.group(0) + bar, content, count=1)
        if not found:
            raise PluginError(f"{src}: no <h1> title to put the Colab badge under")
    elif src in CHAPTER_LINK_PAGES:
        urls = {n: f.url_relative_to(page.file) for n, f in _chapter_files(files).items()}
        content = link_chapter_mentions(content, urls)
    return content


def on_serve(server, config: MkDocsConfig, builder):
    root = _root(config)
    server.watch(str(root / "README.md"))
    if (root / "notebooks").is_dir():
        server.watch(str(root / "notebooks"))
    return server
