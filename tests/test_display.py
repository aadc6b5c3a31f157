"""markdown_table: the Markdown the chapters display, and its checks."""

import pytest

from mlhelpers.display import markdown_table


def test_table_lines_and_cells():
    table = markdown_table(["learner", "accuracy (%)"], [("MAML", 56.2), ("ProtoNet", "89.4 ± 0.8")])
    assert str(table).splitlines() == [
        "| learner | accuracy (%) |",
        "|---|---|",
        "| MAML | 56.2 |",
        "| ProtoNet | 89.4 ± 0.8 |",
    ]


def test_jupyter_renders_it_as_markdown():
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(markdown_table(["a"], [[1]]))
    assert data["text/markdown"] == "| a |\n|---|\n| 1 |"


def test_rows_may_be_a_generator_and_empty():
    assert str(markdown_table(["n", "n²"], ((k, k * k) for k in range(2)))).count("\n") == 3
    assert str(markdown_table(["only a header"], [])) == "| only a header |\n|---|"


def test_short_row_is_refused():
    with pytest.raises(ValueError, match="row 1 has 1 cells but the header has 2"):
        markdown_table(["a", "b"], [(1, 2), (3,)])
