"""The outputs stored in each chapter's .ipynb (a full run, shown on the website) are clean.

- No output names a path of the machine that ran it (a warning quoting a site-packages file, a
  temporary directory, a home directory): the website would show it to every reader.
- No cell stored an error. A chapter states its claims as ``assert`` statements in the full run,
  so a claim that failed is an error output too, and so is any other exception; a chapter that
  demonstrates an error message catches it and prints it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

# An absolute path under a directory that holds machines' own files, a Windows drive path, or any
# mention of site-packages; not preceded by a word character, dot, colon or slash, so URLs
# (https://host/home/...) and relative paths (bench/results.md) pass.
LOCAL_PATH = re.compile(
    r"(?<![\w.:/])/(?:tmp|work|root|home|Users|usr|opt|var|private|mnt)/\S+"
    r"|\b[A-Za-z]:\\\S+"
    r"|site-packages"
)


def _output_texts(output: dict) -> list[str]:
    """Every text an output shows: a stream, a traceback, or the text/* parts of a display."""
    texts = ["".join(output.get("text", "")), "\n".join(output.get("traceback", []))]
    for kind, value in output.get("data", {}).items():
        if kind.startswith("text/"):
            texts.append("".join(value) if isinstance(value, list) else str(value))
    return texts


def _code_outputs(path: Path) -> list[tuple[int, dict]]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(i, o) for i, c in enumerate(cells) if c["cell_type"] == "code" for o in c.get("outputs", [])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_stored_output_names_a_local_path(path):
    found = [(i, m.group(0)[:80]) for i, o in _code_outputs(path) for t in _output_texts(o)
             for m in LOCAL_PATH.finditer(t)]
    assert not found, f"{path.name}: outputs name local paths (cell index, text): {found}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_stored_output_is_an_error(path):
    errors = [(i, o.get("ename"), o.get("evalue", "")[:80]) for i, o in _code_outputs(path)
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: stored errors (cell index, exception, message): {errors}"


def test_the_checks_catch_what_they_are_for():
    """The two checks fail on the outputs they exist to catch, and pass on look-alikes."""
    warning = {"output_type": "stream", "text": ["/tmp/env/lib/python3.11/site-packages/tqdm/auto.py:21: Warn\n"]}
    assert any(LOCAL_PATH.search(t) for t in _output_texts(warning))
    home = {"output_type": "display_data", "data": {"text/plain": ["saved to /home/reader/runs/x.pt"]}}
    assert any(LOCAL_PATH.search(t) for t in _output_texts(home))
    clean = {"output_type": "stream", "text": ["see https://example.org/home/page and bench/results.md\n"]}
    assert not any(LOCAL_PATH.search(t) for t in _output_texts(clean))
    assert NOTEBOOKS, "no stored notebooks found"
