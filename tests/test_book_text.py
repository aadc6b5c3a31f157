"""The chapters' prose stays true to their stored full runs, and every chapter has its teaching aids.

- **Every decimal number in the prose was printed by the run** (or is in the chapter's code), or it
  is listed in ``notebooks/cited_numbers.toml`` with where it comes from (a paper's table, another
  chapter's run). So a rerun that changes a result fails this test until the text follows it.
  A number matches an output if the output rounds to it at the prose's precision, also read as a
  percentage (``0.9596`` in an output matches ``96.0%`` in the text) or as a fraction.
- **A "Common mistakes" box:** a Markdown cell whose first line is a ``**Common mistakes**``
  heading, quoted (``> **Common mistakes**``) so it stands out in Jupyter, Colab and the website.
- **A schematic figure:** a code cell tagged ``schematic`` whose stored output is an image, drawn
  with :mod:`mlhelpers.diagrams` (the website shows its picture, not its code).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
CITED_FILE = ROOT / "notebooks" / "cited_numbers.toml"

# A decimal number not glued to a word, another number or a dot (so "v1.2.3" and "x1.5" are skipped).
NUMBER = re.compile(r"(?<![\w.])-?\d+\.\d+(?![\w.]*\d)")
DIAGRAMS_IMPORT = re.compile(
    r"^\s*(?:from mlhelpers\.diagrams import|import mlhelpers\.diagrams|from mlhelpers import [^\n]*\bdiagrams\b)",
    re.MULTILINE,
)
MISTAKES_HEADING = re.compile(r"^>\s*\*\*Common mistakes\*\*", re.MULTILINE)


def _cited() -> dict[str, dict[str, str]]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
        import tomli as tomllib

    return tomllib.loads(CITED_FILE.read_text(encoding="utf-8"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _output_texts(cell: dict) -> list[str]:
    texts = []
    for output in cell.get("outputs", []):
        texts.append("".join(output.get("text", "")))
        for kind, value in output.get("data", {}).items():
            if kind.startswith("text/"):
                texts.append("".join(value) if isinstance(value, list) else str(value))
    return texts


# A reference to a part of the book or of a paper ("Section 4.3", "Exercises 8.2 and 8.4",
# "arXiv:1803.02999"), a numbered heading ("## 4.3 Title") or exercise ("**7.1 Title.**"): its decimals
# are not results.
REFERENCE = re.compile(
    r"(?:\b(?:[Ss]ections?|[Ee]xercises?|[Ff]igs?\.|[Ff]igures?|[Tt]ables?|[Cc]hapters?|[Ee]qs?\.|[Ee]quations?"
    r"|[Aa]ppendix|[Ss]olutions?|[Ss]teps?)|§|arXiv:?)\s*\d+(?:\.\d+)*"
    r"(?:\s*(?:,|and|or|to|-|–|&)\s*\d+(?:\.\d+)*)*"
    r"|^#+\s*\d+(?:\.\d+)*"
    r"|\*\*\d+\.\d+"  # a bold exercise or solution number: "**7.1 How many ratings ...**"
    r"|\b\d{4}\.\d{4,5}\b",  # an arXiv identifier on its own
    re.MULTILINE,
)


def _prose(cell: dict) -> str:
    """A Markdown cell's text without its LaTeX, links' targets, inline code and references, where
    decimals are notation, addresses or section numbers rather than results (``$\\alpha = 0.4$``
    is a setting the code shows)."""
    text = _source(cell)
    text = re.sub(r"\$\$.*?\$\$|\$[^$\n]*\$", " ", text, flags=re.DOTALL)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"`[^`\n]*`", " ", text)
    return REFERENCE.sub(" ", text)


def printed_numbers(cells: list[dict]) -> list[float]:
    """Every decimal number in the code cells' sources and stored outputs."""
    found = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        for text in [_source(cell), *_output_texts(cell)]:
            found.extend(float(m.group(0)) for m in NUMBER.finditer(text))
    return found


def matches(quoted: str, printed: list[float]) -> bool:
    """True if some printed number, read as itself, as a percentage or as a fraction, rounds to
    ``quoted`` at the number of decimals ``quoted`` is written with."""
    decimals = len(quoted.split(".")[1])
    value = float(quoted)
    tolerance = 0.5 * 10**-decimals + 1e-12
    return any(abs(scaled - value) <= tolerance for p in printed for scaled in (p, 100 * p, p / 100))


def unsupported_numbers(cells: list[dict], cited: dict[str, str]) -> list[tuple[int, str]]:
    """(cell index, number) for each decimal in the prose that no code cell printed or holds and
    that ``cited`` does not account for."""
    printed = printed_numbers(cells)
    return [
        (i, m.group(0))
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "markdown"
        for m in NUMBER.finditer(_prose(cell))
        if m.group(0).lstrip("-") not in cited and not matches(m.group(0), printed)
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_number_in_the_prose_was_printed_or_is_cited(path):
    cited = _cited().get(path.stem, {})
    missing = unsupported_numbers(_cells(path), cited)
    assert not missing, (
        f"{path.name}: numbers in the text that no stored output prints (cell index, number): {missing}. "
        f"Print them in the run, render the text from the run's variables, or, for a paper's number, "
        f"list it under [{path.stem}] in {CITED_FILE.relative_to(ROOT)} with its source."
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cited_number_is_still_quoted(path):
    """An entry of cited_numbers.toml that the text no longer quotes is stale: remove it."""
    cited = _cited().get(path.stem, {})
    prose = " ".join(_prose(c) for c in _cells(path) if c["cell_type"] == "markdown")
    quoted = {m.group(0).lstrip("-") for m in NUMBER.finditer(prose)}
    stale = sorted(set(cited) - quoted)
    assert not stale, f"{path.name}: cited_numbers.toml lists numbers the text no longer quotes: {stale}"


def test_every_source_in_cited_numbers_is_a_chapter():
    chapters = {p.stem for p in NOTEBOOKS}
    assert set(_cited()) <= chapters, f"unknown chapters in cited_numbers.toml: {set(_cited()) - chapters}"
    for chapter, entries in _cited().items():
        for number, source in entries.items():
            assert NUMBER.fullmatch(number), f"[{chapter}] {number!r} is not a decimal number"
            assert isinstance(source, str) and len(source) > 10, f"[{chapter}] {number}: say where it comes from"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_chapter_has_a_common_mistakes_box(path):
    boxes = [c for c in _cells(path) if c["cell_type"] == "markdown" and MISTAKES_HEADING.search(_source(c))]
    assert boxes, f"{path.name}: no Markdown cell starting '> **Common mistakes**'"
    assert any(_source(c).count("\n> -") + _source(c).count("\n> 1.") >= 3 for c in boxes), (
        f"{path.name}: the common-mistakes box should list at least three mistakes as '> - ...' items"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_chapter_has_a_schematic_figure(path):
    schematics = [c for c in _cells(path) if c["cell_type"] == "code" and "schematic" in c["metadata"].get("tags", [])]
    assert schematics, f"{path.name}: no code cell tagged 'schematic'"
    imports_diagrams = any(DIAGRAMS_IMPORT.search(_source(c)) for c in _cells(path) if c["cell_type"] == "code")
    for cell in schematics:
        assert imports_diagrams and re.search(r"\b(?:diagrams\.)?canvas\(", _source(cell)), (
            f"{path.name}: a schematic cell should draw on a mlhelpers.diagrams canvas"
        )
        assert any("image/png" in o.get("data", {}) for o in cell.get("outputs", [])), (
            f"{path.name}: a schematic cell has no stored picture (run the chapter in full)"
        )


def test_the_number_check_catches_what_it_is_for():
    code = {"cell_type": "code", "source": "lr = 0.4\n", "metadata": {},
            "outputs": [{"output_type": "stream", "text": "accuracy 0.9596, loss 2.934\n"}]}

    def prose(text: str) -> dict:
        return {"cell_type": "markdown", "source": text, "metadata": {}}

    good = prose("It reaches 96.0% (a loss of 2.93) with a step of 0.4; see `0.123` and $\\beta=0.77$.")
    assert unsupported_numbers([code, good], {}) == []
    stale = prose("It reaches 97.5% (a loss of 2.94).")
    assert unsupported_numbers([code, stale], {}) == [(1, "97.5"), (1, "2.94")]
    assert unsupported_numbers([code, stale], {"97.5": "paper", "2.94": "paper"}) == []
    assert NUMBER.findall("version 1.2.3 and x1.5 but 3.25") == ["3.25"]
    references = prose("## 4.3 Title\n**8.1 An exercise.** See Section 4.3, Exercises 8.2 and 8.4, "
                       "Figure 2.1, arXiv:1803.02999; it is 0.77.")
    assert NUMBER.findall(_prose(references)) == ["0.77"]
