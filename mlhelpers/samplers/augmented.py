"""A sampler wrapper that distorts every image with its own random affine map (Chapter 4).

``AugmentedSampler(EpisodicSampler(omniglot, 60, 1, 5, "train", rotations=True))`` draws the
inner sampler's episodes, each support and query image warped by
:func:`~mlhelpers.data.augment.random_affine`.
"""

from __future__ import annotations

import torch

from mlhelpers.data.augment import random_affine
from mlhelpers.samplers.base import SamplerWrapper, TaskSampler
from mlhelpers.tasks import Task


class AugmentedSampler(SamplerWrapper):
    """Wrap a sampler so that every support and query image gets its own :func:`~mlhelpers.data.augment.random_affine`.

    ``state_dict`` holds the inner sampler's state and this one's, so training resumes exactly.
    Keyword arguments are passed to ``random_affine``. The inner sampler draws on the CPU; this
    one moves the batch to the device.
    """

    def __init__(self, sampler: TaskSampler, seed: int | None = None, **affine_kwargs: float) -> None:
        super().__init__(sampler, seed)
        self.affine_kwargs = affine_kwargs
        random_affine(torch.zeros(1, 1, 4, 4), **affine_kwargs)  # check the arguments now

    def _sample(self, num_tasks: int) -> Task:
        task = self.sampler._sample(num_tasks)
        warp = lambda x: random_affine(x, generator=self.generator, **self.affine_kwargs)  # noqa: E731
        return Task(support_x=warp(task.support_x), support_y=task.support_y,
                    query_x=warp(task.query_x), query_y=task.query_y, info=task.info)
