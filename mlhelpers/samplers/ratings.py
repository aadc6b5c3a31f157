"""Cold-start recommendation as a task family: each user is a task (Chapter 7).

A fixed catalogue (from ``catalogue_seed``) gives item ``j`` a taste ``v_j ~ N(0, I_dim)`` and a
popularity ``b_j ~ N(0, 1)``; a user ``u ~ N(0, I_dim)`` rates it ``1 + 4 sigmoid(u . v_j + b_j +
eps)``. A model sees ``x_j = (v_j, b_j)``, never ``u``: it infers the user's tastes from the few
items rated (MeLU, Lee et al. 2019). ``support_x`` ``[tasks, k_shot, dim + 1]``, ``support_y``
``[tasks, k_shot, 1]``; ``info`` holds ``user`` and ``items``. Real ratings:
:func:`mlhelpers.data.ratings.load_movielens`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mlhelpers.samplers.base import TaskSampler, split_support_query
from mlhelpers.seeding import make_generator
from mlhelpers.tasks import Task
from mlhelpers.validation import check_number, check_positive_int


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
        """Noise-free ratings ``1 + 4 sigmoid(u . v_j + b_j)``: ``user`` ``[tasks, dim]``, ``items`` ``[tasks, n]``."""
        return 1 + 4 * torch.sigmoid(self._logit(user, items))

    def _logit(self, user: Tensor, items: Tensor) -> Tensor:
        """``u . v_j + b_j`` ``[tasks, n]``: the rating before noise and squashing."""
        return torch.einsum("td,tnd->tn", user, self.item_taste[items]) + self.item_bias[items]

    def _sample(self, num_tasks: int) -> Task:
        g = self.generator
        n = self.k_shot + self.q_query
        user = torch.randn(num_tasks, self.dim, generator=g)
        items = torch.rand(num_tasks, self.n_items, generator=g).argsort(dim=1)[:, :n]
        logit = self._logit(user, items)
        if self.noise_std > 0:
            logit = logit + self.noise_std * torch.randn(logit.shape, generator=g)
        y = (1 + 4 * torch.sigmoid(logit))[..., None]
        x = self.item_features[items]
        return split_support_query(x, y, self.k_shot, {"user": user, "items": items})
