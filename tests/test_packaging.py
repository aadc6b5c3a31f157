"""The two ways of installing the book agree: pyproject.toml (pip) and environment.yml (conda)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """``"mkdocstrings[python]>=0.26"`` -> ``"mkdocstrings"`` (normalised as pip does)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"cannot parse requirement {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))


def _pip_section(environment: dict) -> list[str]:
    sections = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip: section"
    return [str(item).strip() for item in sections[0]]


def _conda_packages(environment: dict) -> list[str]:
    return [str(d) for d in environment["dependencies"] if not isinstance(d, dict)]


def test_environment_installs_the_dev_extra_or_the_same_packages(pyproject, environment):
    pip_items = _pip_section(environment)
    assert "pip" in {_name(p) for p in _conda_packages(environment)}, "conda must provide pip"
    if any(re.fullmatch(r"-e\s+\.(\[dev\])", item) for item in pip_items):
        assert "dev" in pyproject["project"]["optional-dependencies"]
        return
    # Otherwise environment.yml lists packages itself: the same names as pyproject's runtime,
    # book and dev dependencies (the package itself, "mlhelpers[book]", aside).
    project = pyproject["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in ("book", "dev"):
        wanted |= {_name(r) for r in project["optional-dependencies"][extra]}
    wanted.discard(_name(project["name"]))
    listed = {_name(item) for item in pip_items if not item.startswith("-")}
    listed |= {_name(p) for p in _conda_packages(environment)} - {"python", "pip"}
    assert listed == wanted


def test_environment_python_meets_requires_python(pyproject, environment):
    pythons = [p for p in _conda_packages(environment) if _name(p) == "python"]
    assert len(pythons) == 1
    version = re.search(r"(\d+)\.(\d+)", pythons[0])
    assert version, pythons[0]
    minimum = re.search(r">=\s*(\d+)\.(\d+)", pyproject["project"]["requires-python"])
    assert minimum, pyproject["project"]["requires-python"]
    as_tuple = lambda m: (int(m.group(1)), int(m.group(2)))  # noqa: E731
    assert as_tuple(version) >= as_tuple(minimum)


def test_torch_is_not_pinned_exactly(pyproject, environment):
    project = pyproject["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    requirements += [i for i in _pip_section(environment) if not i.startswith("-")]
    requirements += _conda_packages(environment)
    torches = [r for r in requirements if _name(r) in {"torch", "pytorch", "torchvision"}]
    assert any(_name(r) == "torch" for r in project["dependencies"]), "torch must be a dependency"
    for requirement in torches:
        assert "==" not in requirement and not re.search(r"(?<![<>=!~])=\d", requirement), (
            f"{requirement!r} pins an exact version; use a lower bound so any recent build works"
        )


def test_book_extra_carries_the_site_tools(pyproject):
    book = {_name(r) for r in pyproject["project"]["optional-dependencies"]["book"]}
    # mkdocs.yml needs these; django-static-mathjax ships the MathJax the site serves offline.
    assert {"mkdocs", "mkdocs-material", "mkdocs-jupyter", "mkdocstrings", "jupytext"} <= book
    assert "django-static-mathjax" in book


def test_dev_extra_carries_the_test_tools(pyproject):
    dev = {_name(r) for r in pyproject["project"]["optional-dependencies"]["dev"]}
    # make test: pytest + nbval for the notebooks, playwright to drive Debian's chromium in
    # tests/test_browser.py; "mlhelpers[book]" brings the site tools the browser test builds with.
    assert {"pytest", "nbval", "playwright"} <= dev
    assert any(r.replace(" ", "") == "mlhelpers[book]" for r in pyproject["project"]["optional-dependencies"]["dev"])
