"""Cold-start recommendation as a task family: each user is a task (Chapter 7).

:class:`RatingTasks` generates users and their ratings from a documented *latent taste* model, so
the chapter runs without downloads and knows the truth it is trying to recover:

- a fixed catalogue of ``n_items`` items (drawn once from ``catalogue_seed``), item ``j`` with a
  taste vector ``v_j ~ N(0, I_dim)`` and a popularity ``b_j ~ N(0, 1)``;
- each user (task) has a taste vector ``u ~ N(0, I_dim)``, drawn from the sampler's own generator;
- user ``u`` rates item ``j`` ``r = 1 + 4 sigmoid(u . v_j + b_j + eps)``, ``eps ~ N(0, noise_std^2)``,
  a number in (1, 5) like a star rating.

A model sees the item's features ``x_j = (v_j, b_j)`` (in a real system: genres, tags, a
popularity count), never the user's ``u``: it has to infer the user's tastes from the few items
the user rated. That is the *cold-start* problem of MeLU (Lee et al. 2019)::

    support_x [tasks, k_shot, dim + 1]    support_y [tasks, k_shot, 1]   (ratings 1..5)
    query_x   [tasks, q_query, dim + 1]   query_y   [tasks, q_query, 1]

``info`` holds ``user`` ``[tasks, dim]`` and ``items`` ``[tasks, k_shot + q_query]`` (catalogue
indices, distinct within a user).

:func:`load_movielens` reads the real MovieLens "latest-small" ratings for readers with internet;
it downloads only when called with ``download=True`` (the book never does).
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from mlhelpers.episodes import TaskSampler
from mlhelpers.seeding import make_generator
from mlhelpers.tasks import Task
from mlhelpers.validation import check_number, check_positive_int, describe

MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
"""Where :func:`load_movielens` downloads from (about 1 MB, 100,836 ratings of 610 users)."""


class RatingTasks(TaskSampler):
    """Users of a synthetic catalogue as regression tasks: rate ``q_query`` items from ``k_shot`` ratings.

    Args:
        k_shot: items each new user has rated (the support set); Chapter 7 uses 3.
        q_query: further items of the same user to predict (the query set).
        n_items: size of the catalogue; ``k_shot + q_query`` must not exceed it.
        dim: dimension of the latent tastes.
        noise_std: standard deviation of the rating noise ``eps`` (on the logit scale).
        catalogue_seed: seeds the catalogue, so samplers with the same value share the items.
        seed: seeds the users and the items they rate (None: fresh entropy).
        device: where the batches are put.
    """

    def __init__(
        self,
        k_shot: int,
        q_query: int,
        *,
        n_items: int = 500,
        dim: int = 3,
        noise_std: float = 0.3,
        catalogue_seed: int = 0,
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(seed, device)
        self.k_shot = check_positive_int("k_shot", k_shot)
        self.q_query = check_positive_int("q_query", q_query)
        self.n_items = check_positive_int("n_items", n_items)
        self.dim = check_positive_int("dim", dim)
        self.noise_std = check_number("noise_std", noise_std, minimum=0.0)
        if self.k_shot + self.q_query > self.n_items:
            raise ValueError(
                f"k_shot + q_query = {self.k_shot + self.q_query} items per user, but the catalogue "
                f"holds only n_items={self.n_items}"
            )
        g = make_generator(catalogue_seed)
        self.item_taste = torch.randn(self.n_items, self.dim, generator=g)
        self.item_bias = torch.randn(self.n_items, generator=g)

    @property
    def item_features(self) -> Tensor:
        """What a model sees of each item: ``(v_j, b_j)``, ``[n_items, dim + 1]``."""
        return torch.cat([self.item_taste, self.item_bias[:, None]], dim=1)

    def expected_rating(self, user: Tensor, items: Tensor) -> Tensor:
        """The noise-free rating ``1 + 4 sigmoid(u . v_j + b_j)`` for ``user`` ``[tasks, dim]`` and ``items`` ``[tasks, n]``."""
        logit = torch.einsum("td,tnd->tn", user, self.item_taste[items]) + self.item_bias[items]
        return 1 + 4 * torch.sigmoid(logit)

    def _sample(self, num_tasks: int) -> Task:
        g = self.generator
        n = self.k_shot + self.q_query
        user = torch.randn(num_tasks, self.dim, generator=g)
        items = torch.rand(num_tasks, self.n_items, generator=g).argsort(dim=1)[:, :n]
        logit = torch.einsum("td,tnd->tn", user, self.item_taste[items]) + self.item_bias[items]
        if self.noise_std > 0:
            logit = logit + self.noise_std * torch.randn(logit.shape, generator=g)
        y = (1 + 4 * torch.sigmoid(logit))[..., None]
        x = self.item_features[items]
        k = self.k_shot
        return Task(x[:, :k], y[:, :k], x[:, k:], y[:, k:], {"user": user, "items": items})


def load_movielens(root: str | os.PathLike, download: bool = False) -> dict[str, Tensor]:
    """The MovieLens "latest-small" ratings (Harper & Konstan 2015), for readers with internet.

    Looks for ``ml-latest-small/ratings.csv`` and ``movies.csv`` under ``root``. If they are missing
    it downloads :data:`MOVIELENS_URL` into ``root`` only when ``download=True``; otherwise it
    raises a FileNotFoundError that says how to get them. Nothing in the book calls it with
    ``download=True``: Chapter 7 runs on :class:`RatingTasks`.

    Returns:
        ``user`` and ``item`` ``[ratings]`` int64 (0-based, dense ids), ``rating`` ``[ratings]``
        float32 (0.5 .. 5 stars) and ``genres`` ``[items, 20]`` float32, a multi-hot row per item
        (the item features of a MeLU-style model); group ratings by ``user`` to make tasks.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path (str or os.PathLike), got {describe(root)}")
    if not isinstance(download, bool):
        raise TypeError(f"download must be a bool, got {describe(download)}")
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
