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

``mkdocs serve`` also watches README.md and notebooks/.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.book")

MATHJAX_DEST = "assets/mathjax"
# Bundles and folders of MathJax's es5/ that the site needs: the combined TeX+MathML->CHTML
# component, its fonts, and what it loads on demand (TeX extensions such as boldsymbol, the
# menu, accessibility and speech).
MATHJAX_PARTS = ("tex-mml-chtml.js", "input", "output/chtml", "ui", "a11y", "sre", "adaptors")

_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)([^)]*)\)")


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


def on_serve(server, config: MkDocsConfig, builder):
    root = _root(config)
    server.watch(str(root / "README.md"))
    if (root / "notebooks").is_dir():
        server.watch(str(root / "notebooks"))
    return server
