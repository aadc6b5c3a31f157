"""The MovieLens "latest-small" ratings (Harper & Konstan 2015), real data for Chapter 7's cold start.

:func:`load_movielens` reads them for readers with internet; it downloads only when called with
``download=True`` (the book never does: Chapter 7 runs on the synthetic users of
:class:`~mlhelpers.samplers.ratings.RatingTasks`).
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from mlhelpers.validation import check_bool, describe

MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
"""Where :func:`load_movielens` downloads from (about 1 MB, 100,836 ratings of 610 users)."""


def load_movielens(root: str | os.PathLike, download: bool = False) -> dict[str, Tensor]:
    """The MovieLens "latest-small" ratings (Harper & Konstan 2015), for readers with internet.

    Reads ``root/ml-latest-small/ratings.csv`` and ``movies.csv``, downloading :data:`MOVIELENS_URL`
    only with ``download=True`` (else a FileNotFoundError says how to get them; the book itself runs
    on :class:`~mlhelpers.samplers.ratings.RatingTasks`). Returns ``user`` and ``item`` ``[ratings]``
    int64 (dense 0-based ids), ``rating`` ``[ratings]`` float32 (0.5 .. 5 stars) and ``genres``
    ``[items, 20]`` float32 multi-hot item features.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path (str or os.PathLike), got {describe(root)}")
    check_bool("download", download)
    folder = Path(root) / "ml-latest-small"
    ratings_file, movies_file = folder / "ratings.csv", folder / "movies.csv"
    if not (ratings_file.exists() and movies_file.exists()):
        if not download:
            raise FileNotFoundError(
                f"MovieLens is not in {folder} and download=False: call load_movielens(root, download=True) "
                f"to fetch {MOVIELENS_URL} (about 1 MB), or unzip it into {Path(root)} yourself"
            )
        import urllib.request

        Path(root).mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(MOVIELENS_URL, timeout=60) as response:  # noqa: S310 (fixed https URL)
            data = response.read()
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.extractall(Path(root))
    with open(movies_file, newline="", encoding="utf-8") as f:
        movies = list(csv.DictReader(f))
    genre_names = sorted({g for m in movies for g in m["genres"].split("|")})
    item_index = {m["movieId"]: i for i, m in enumerate(movies)}
    genres = torch.zeros(len(movies), len(genre_names))
    for i, m in enumerate(movies):
        for name in m["genres"].split("|"):
            genres[i, genre_names.index(name)] = 1.0
    users: dict[str, int] = {}
    u, it, r = [], [], []
    with open(ratings_file, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            u.append(users.setdefault(row["userId"], len(users)))
            it.append(item_index[row["movieId"]])
            r.append(float(row["rating"]))
    return {
        "user": torch.tensor(u, dtype=torch.int64),
        "item": torch.tensor(it, dtype=torch.int64),
        "rating": torch.tensor(r, dtype=torch.float32),
        "genres": genres,
    }
