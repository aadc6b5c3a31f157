"""Each chapter is a jupytext pair: ``NN_name.ipynb`` (with the outputs of a full run) and
``NN_name.py`` (py:percent, for review). The two must hold the same cells, and every chapter
must be in the website's navigation.

Create a pair with ``jupytext --set-formats ipynb,py:percent notebooks/NN_name.ipynb`` and keep
it in step with ``make sync`` (``jupytext --sync``).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
IPYNBS = sorted(NOTEBOOKS.glob("*.ipynb"))
PYS = sorted(p for p in NOTEBOOKS.glob("*.py") if not p.name.startswith("_"))

# The YAML header jupytext writes at the top of a paired .py file ("# ---" ... "# ---").
_HEADER = re.compile(r"\A# ---\n(?:#.*\n)*?# ---\n\n?")


def _split_header(text: str) -> tuple[str, str]:
    match = _HEADER.match(text)
    if not match:
        return "", text
    return match.group(0), text[match.end() :]


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def _diff(expected: str, actual: str, name: str) -> str:
    lines = difflib.unified_diff(
        expected.splitlines(keepends=True),
        actual.splitlines(keepends=True),
        fromfile=f"{name} (from the .ipynb)",
        tofile=f"{name} (on disk)",
        n=2,
    )
    return "".join(list(lines)[:80])


def test_split_header_strips_only_the_jupytext_header():
    text = "# ---\n# jupyter:\n#   jupytext:\n#     formats: ipynb,py:percent\n# ---\n\n# %%\nx = 1\n"
    header, body = _split_header(text)
    assert "formats: ipynb,py:percent" in header
    assert body == "# %%\nx = 1\n"
    assert _split_header("# %%\nx = 1\n") == ("", "# %%\nx = 1\n")


@pytest.mark.skipif(not IPYNBS, reason="no notebooks yet")
@pytest.mark.parametrize("ipynb", IPYNBS, ids=_ids(IPYNBS))
def test_notebook_has_identical_py_twin(ipynb: Path):
    twin = ipynb.with_suffix(".py")
    assert twin.exists(), f"{ipynb.name} has no {twin.name}: run make sync"
    nb = jupytext.read(ipynb)
    expected_header, expected = _split_header(jupytext.writes(nb, fmt="py:percent"))
    header, actual = _split_header(twin.read_text(encoding="utf-8"))
    # The header differs harmlessly between jupytext versions (jupytext_version, ...); what
    # matters is that both files declare the pairing and that the cells are the same.
    assert re.search(r"formats: ipynb,py:percent", header), (
        f"{twin.name} is not paired: jupytext --set-formats ipynb,py:percent {ipynb.name}"
    )
    assert "ipynb,py:percent" in str(nb.metadata.get("jupytext", {}).get("formats", "")), (
        f"{ipynb.name} is not paired: jupytext --set-formats ipynb,py:percent {ipynb.name}"
    )
    assert actual == expected, (
        f"{twin.name} and {ipynb.name} differ; run make sync (the newer file wins):\n"
        + _diff(expected, actual, twin.name)
    )


@pytest.mark.skipif(not PYS, reason="no notebook twins yet")
@pytest.mark.parametrize("py", PYS, ids=_ids(PYS))
def test_py_twin_has_a_notebook(py: Path):
    assert py.with_suffix(".ipynb").exists(), (
        f"{py.name} has no {py.with_suffix('.ipynb').name}: run it in Jupyter and save, or "
        f"jupytext --set-formats ipynb,py:percent {py.name}"
    )


@pytest.mark.skipif(not IPYNBS, reason="no notebooks yet")
@pytest.mark.parametrize("ipynb", IPYNBS, ids=_ids(IPYNBS))
def test_notebook_is_in_the_website_navigation(ipynb: Path):
    mkdocs_yml = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert f"notebooks/{ipynb.name}" in mkdocs_yml, (
        f"add {ipynb.name} to the nav: section of mkdocs.yml"
    )


# The Colab install cell: README.md defines the repository address once; notebooks copy it.
_INSTALL_URL = re.compile(r"mlhelpers @ git\+(https?://[^\s\"'\\]+)")


def test_colab_install_address_matches_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    defined = set(_INSTALL_URL.findall(readme))
    assert len(defined) == 1, f"README.md should name one install address, found {defined}"
    for path in IPYNBS + PYS:
        used = set(_INSTALL_URL.findall(path.read_text(encoding="utf-8")))
        assert used <= defined, f"{path.name} installs from {used - defined}; README.md says {defined}"


@pytest.mark.skipif(not IPYNBS, reason="no notebooks yet")
@pytest.mark.parametrize("ipynb", IPYNBS, ids=_ids(IPYNBS))
def test_first_code_cell_installs_mlhelpers_only_on_colab(ipynb: Path):
    import json

    cells = json.loads(ipynb.read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code, f"{ipynb.name} has no code cell"
    first = "".join(code[0]["source"])
    guarded = re.search(r'^if "google\.colab" in sys\.modules:\n((?:[ \t]+.*\n?)+)', first, re.M)
    assert guarded, f"{ipynb.name}: the first code cell must start with the Colab install (see README.md)"
    assert _INSTALL_URL.search(guarded.group(1)), f"{ipynb.name}: the Colab branch does not pip-install mlhelpers"
    assert not _INSTALL_URL.search(first[: guarded.start()] + first[guarded.end() :]), (
        f"{ipynb.name}: mlhelpers is installed outside the Colab branch"
    )
