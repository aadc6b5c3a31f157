"""Support sets in a fresh random order, so that a sequence model must read the labels (Chapter 5)."""

from __future__ import annotations

import torch

from mlhelpers.samplers.base import SamplerWrapper
from mlhelpers.tasks import Task


def shuffle_support(task: Task, generator: torch.Generator | None = None) -> Task:
    """The same task with each task's support examples in a fresh random order (labels move along).

    :class:`~mlhelpers.samplers.episodic.EpisodicSampler` lays the support set out class by class, so in a
    1-shot episode the labels read ``0, 1, ..., n_way - 1`` in order. A model with positional
    embeddings could then learn "the third example has label 2" and ignore the label tokens;
    shuffling makes the labels the only way to know. Queries and ``info`` are unchanged.
    """
    tasks, k = task.support_x.shape[:2]
    order = torch.rand(tasks, k, generator=generator).argsort(dim=1).to(task.support_x.device)
    rows = torch.arange(tasks, device=order.device)[:, None]
    return Task(task.support_x[rows, order], task.support_y[rows, order], task.query_x, task.query_y, task.info)


class ShuffledSupport(SamplerWrapper):
    """Wraps a sampler so that every batch comes through :func:`shuffle_support`.

    ``ShuffledSupport(EpisodicSampler(omniglot, 5, 1, 5, "train"), seed=0)`` draws the same
    episodes as the inner sampler, each support set in a random order. Its state (for resuming
    :func:`~mlhelpers.training.meta_train`) holds both random states.
    """

    def _sample(self, num_tasks: int) -> Task:
        return shuffle_support(self.sampler.sample(num_tasks).to("cpu"), self.generator)
