"""The website builds strictly and every chapter page shows its stored plots."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_home_page_is_the_readme(site):
    html = (site / "index.html").read_text()
    assert "Learning to Learn" in html and "make test" in html


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_page_shows_title_and_plots(site, notebook):
    page = site / "notebooks" / notebook.stem / "index.html"
    assert page.exists(), f"no page for {notebook.name}"
    html = page.read_text()
    number = int(notebook.stem[:2])
    assert re.search(rf"<h1[^>]*>\s*{number}\.", html), f"{notebook.name}: no '<h1>{number}. ...' title"
    plots = re.findall(r'<img[^>]+src="data:image/png;base64,', html)
    assert plots, f"{notebook.name}: no stored plot; run the notebook in full and commit its outputs"
    assert "Traceback (most recent call last)" not in html, f"{notebook.name}: a stored output holds an error"


def test_api_reference_documents_the_learners(site):
    html = (site / "api" / "index.html").read_text()
    for name in ["EpisodicSampler", "ProtoNet", "meta_train", "load_omniglot"]:
        assert name in html, f"API reference lacks {name}"
