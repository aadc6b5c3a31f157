"""Draw the picture at the top of README.md (and so of the website's home page) from the shipped
Omniglot data: for each of the 8 alphabets, two characters, each drawn by five different people.

    python scripts/make_cover.py            # writes docs/assets/omniglot-cover.png

The output is deterministic (fixed characters and drawers, no timestamp in the PNG), so running it
again changes nothing unless the data or the layout changed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mlhelpers.data.omniglot import load_omniglot  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "assets" / "omniglot-cover.png"
CHARACTERS_PER_ALPHABET = 2
DRAWERS = 5


def draw(path: Path = OUT) -> Path:
    data = load_omniglot()
    columns = CHARACTERS_PER_ALPHABET * DRAWERS
    rows = len(data.group_names)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.62 + 1.9, rows * 0.62 + 0.5), dpi=110)
    for row, alphabet in enumerate(data.group_names):
        characters = (data.class_groups == row).nonzero().flatten()[:CHARACTERS_PER_ALPHABET]
        for c, character in enumerate(characters.tolist()):
            drawings = (data.labels == character).nonzero().flatten()[:DRAWERS]
            for d, index in enumerate(drawings.tolist()):
                ax = axes[row, c * DRAWERS + d]
                ax.imshow(data.images[index, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)
        axes[row, 0].set_ylabel(alphabet.replace("_", " ").replace(" (katakana)", "\n(katakana)"),
                                rotation=0, ha="right", va="center", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("#c8c8d8")
    fig.suptitle("Omniglot: two characters per alphabet, each drawn by five people", fontsize=10, y=0.995)
    fig.subplots_adjust(left=0.15, right=0.995, top=0.95, bottom=0.01, wspace=0.08, hspace=0.08)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(draw(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
