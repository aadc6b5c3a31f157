"""Build the website once per test session (``tests/test_site.py`` and ``tests/test_browser.py``
share it): ``mkdocs build --strict`` into a temporary folder, as ``make book`` does into site/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_BUILT: dict[str, Path] = {}


def chapters() -> list[Path]:
    """The chapters that exist, in order: ``notebooks/NN_name.ipynb``."""
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def appendices() -> list[Path]:
    """The appendix notebooks, in order: ``notebooks/appendix_name.ipynb`` (after the chapters in the nav)."""
    return sorted((ROOT / "notebooks").glob("appendix_*.ipynb"))


def chapter_number(notebook: Path) -> int:
    match = re.match(r"(\d+)_", notebook.name)
    assert match, notebook.name
    return int(match.group(1))


def build_site(base: Path) -> Path:
    """The built site (built on the first call, under ``base``)."""
    if "site" not in _BUILT:
        out = base / "site"
        result = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        )
        assert result.returncode == 0, (
            f"mkdocs build --strict failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
        )
        _BUILT["site"] = out
    return _BUILT["site"]
