"""mlhelpers.diagrams: the schematic figures' building blocks place what they are asked to."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from mlhelpers import diagrams


def test_canvas_spans_the_asked_units_and_keeps_them_after_pictures():
    fig, ax = diagrams.canvas(6, 2)
    diagrams.images(ax, np.zeros((3, 5, 5)), x=0.5, y=0.5, size=0.5)
    assert ax.get_xlim() == (0, 6) and ax.get_ylim() == (0, 2)
    plt.close(fig)


def test_box_sides_and_arrow_label_are_where_the_box_is():
    fig, ax = diagrams.canvas(4, 2)
    b = diagrams.box(ax, 2, 1, "model", width=2, height=1, color="inner")
    assert (b.left, b.right, b.top, b.bottom) == ((1, 1), (3, 1), (2, 1.5), (2, 0.5))
    diagrams.arrow(ax, b.right, (3.8, 1), "out")
    assert [t.get_text() for t in ax.texts] == ["model", "out"]
    assert ax.patches[0].get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb(diagrams.COLORS["inner"]))
    plt.close(fig)


def test_images_returns_one_box_per_picture_in_a_row():
    fig, ax = diagrams.canvas(5, 2)
    placed = diagrams.images(ax, np.ones((4, 3, 3)), x=0, y=0, size=1, gap=0.2, frame="support")
    assert [p.x for p in placed] == pytest.approx([0.5, 1.7, 2.9, 4.1])
    plt.close(fig)


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="width and height"):
        diagrams.canvas(0, 2)
    fig, ax = diagrams.canvas(2, 2)
    with pytest.raises(ValueError, match=r"pictures must have shape \[n, H, W\]"):
        diagrams.images(ax, np.zeros((5, 5)), 0, 0)
    plt.close(fig)
