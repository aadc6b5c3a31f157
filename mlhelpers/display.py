"""Tables of results in a notebook (Chapters 3, 4, 5, 7 and 8).

The chapters print their results as Markdown tables: :func:`markdown_table` builds one from a
header and already formatted rows. Jupyter (and the website) renders it as a table; ``str()``
gives the Markdown text, so a script can print it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["MarkdownTable", "markdown_table"]


class MarkdownTable:
    """A Markdown table that Jupyter displays as a table (``text/markdown``) and ``str()`` returns."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_markdown_(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> MarkdownTable:
    """A Markdown table from a header and rows of already formatted cells.

    Args:
        header: the column titles.
        rows: one sequence of cells per row, each as long as ``header``; a cell is shown with ``str``.

    Raises:
        ValueError: if the header is empty or a row has another number of cells than the header.
    """
    header = [str(cell) for cell in header]
    if not header:
        raise ValueError("markdown_table: header is empty (got []); a table needs at least one column")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        cells = [str(cell) for cell in row]
        if len(cells) != len(header):
            raise ValueError(f"row {i} has {len(cells)} cells but the header has {len(header)}: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return MarkdownTable("\n".join(lines))
