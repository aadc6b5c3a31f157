"""Building blocks for the book's schematic figures (every chapter, from Chapter 1 on, draws at least one).

A schematic is drawn from code, so it stays editable and renders wherever the notebook does (the
website, Jupyter, Colab): :func:`canvas` gives an empty drawing area in data units, :func:`box`
places a labelled rounded box, :func:`arrow` joins two points, and :func:`images` lays out a row
of small grey-scale pictures (an episode's support set, say). The colours in :data:`COLORS` mean
the same thing in every chapter: support data, query data, the inner loop, the outer (meta) loop.

Example::

    fig, ax = canvas(6, 2)
    a = box(ax, 1, 1, "support set", color="support")
    b = box(ax, 5, 1, "adapted model", color="inner")
    arrow(ax, a.right, b.left, "adapt")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

__all__ = ["COLORS", "Box", "arrow", "box", "canvas", "images"]

# Fill colours by role; the same role has the same colour in every chapter's schematic.
COLORS: dict[str, str] = {
    "support": "#cfe2ff",  # support (training) examples of a task
    "query": "#ffe0b3",  # query (test) examples of a task
    "inner": "#d4edda",  # the inner loop: adapting to one task
    "outer": "#f8d7da",  # the outer loop: learning across tasks
    "model": "#e2e3e5",  # a network, parameters, a learner
    "plain": "#ffffff",
}


@dataclass(frozen=True)
class Box:
    """Where a drawn box sits: its centre and half sizes, and the midpoints of its four sides."""

    x: float
    y: float
    half_width: float
    half_height: float

    @property
    def left(self) -> tuple[float, float]:
        return (self.x - self.half_width, self.y)

    @property
    def right(self) -> tuple[float, float]:
        return (self.x + self.half_width, self.y)

    @property
    def top(self) -> tuple[float, float]:
        return (self.x, self.y + self.half_height)

    @property
    def bottom(self) -> tuple[float, float]:
        return (self.x, self.y - self.half_height)


def canvas(width: float, height: float, scale: float = 1.3) -> tuple[Figure, Axes]:
    """An empty figure whose axes run over ``[0, width] x [0, height]`` in data units, without ticks.

    ``scale`` is inches per data unit, so a canvas of width 8 is about 10 inches wide.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"canvas: width and height must be positive (got width={width}, height={height})")
    fig, ax = plt.subplots(figsize=(width * scale, height * scale))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.set_autoscale_on(False)  # pictures drawn later keep the limits
    ax.axis("off")
    return fig, ax


def _fill(color: str) -> str:
    return COLORS.get(color, color)


def box(
    ax: Axes,
    x: float,
    y: float,
    text: str,
    width: float = 1.6,
    height: float = 0.6,
    color: str = "plain",
    fontsize: float = 10,
    dashed: bool = False,
) -> Box:
    """A rounded box centred on ``(x, y)`` with ``text`` inside; ``color`` is a role of :data:`COLORS`
    or any matplotlib colour. Returns the :class:`Box`, whose sides give arrows their ends."""
    patch = FancyBboxPatch(
        (x - width / 2, y - height / 2), width, height,
        boxstyle="round,pad=0.02,rounding_size=0.08",
        facecolor=_fill(color), edgecolor="#333333", linewidth=1.0,
        linestyle="--" if dashed else "-",
    )
    ax.add_patch(patch)
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)
    return Box(x, y, width / 2, height / 2)


def arrow(
    ax: Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    text: str | None = None,
    color: str = "#333333",
    dashed: bool = False,
    curve: float = 0.0,
    fontsize: float = 9,
    text_offset: tuple[float, float] = (0.0, 0.15),
) -> None:
    """An arrow from ``start`` to ``end`` with an optional label at its middle (shifted by
    ``text_offset``); ``curve`` bends it (0 is straight, 0.3 a gentle arc)."""
    ax.add_patch(FancyArrowPatch(
        start, end, arrowstyle="-|>", mutation_scale=12, color=color, linewidth=1.2,
        linestyle="--" if dashed else "-", connectionstyle=f"arc3,rad={curve}",
        shrinkA=2, shrinkB=2,
    ))
    if text:
        mid_x = (start[0] + end[0]) / 2 + text_offset[0]
        mid_y = (start[1] + end[1]) / 2 + text_offset[1]
        ax.text(mid_x, mid_y, text, ha="center", va="bottom", fontsize=fontsize, color=color)


def images(
    ax: Axes,
    pictures: Sequence[np.ndarray] | np.ndarray,
    x: float,
    y: float,
    size: float = 0.6,
    gap: float = 0.1,
    frame: str | None = None,
) -> list[Box]:
    """Draw grey-scale pictures ``[n, H, W]`` (values in [0, 1]) in a row starting at ``(x, y)``
    (the first picture's lower-left corner), each ``size`` wide; ``frame`` colours their border
    by role. Returns one :class:`Box` per picture."""
    pictures = np.asarray(pictures, dtype=float)
    if pictures.ndim != 3:
        raise ValueError(f"images: pictures must have shape [n, H, W] (got shape {pictures.shape})")
    placed = []
    for i, picture in enumerate(pictures):
        left = x + i * (size + gap)
        ax.imshow(picture, cmap="gray_r", vmin=0, vmax=1, extent=(left, left + size, y, y + size), zorder=2)
        if frame is not None:
            ax.add_patch(FancyBboxPatch(
                (left, y), size, size, boxstyle="square,pad=0.02", fill=False,
                edgecolor=_darker(COLORS[frame]) if frame in COLORS else frame, linewidth=2, zorder=3,
            ))
        placed.append(Box(left + size / 2, y + size / 2, size / 2, size / 2))
    return placed


def _darker(hex_color: str, factor: float = 0.55) -> str:
    """The same hue, darker: frames drawn in a role's colour stay visible on white."""
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return "#{:02x}{:02x}{:02x}".format(*(int(c * factor) for c in (r, g, b)))
