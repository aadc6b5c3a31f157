"""Samplers built on another sampler: augmentation (Ch. 4), shuffled support sets (Ch. 5), a fixed task pool (Ch. 8).

``AugmentedSampler(EpisodicSampler(omniglot, 60, 1, 5, "train", rotations=True))`` warps every
support and query image; ``ShuffledSupport(EpisodicSampler(omniglot, 5, 1, 5, "train"), seed=0)``
draws the same episodes with each support set in a random order;
``TaskPool(EpisodicSampler(omniglot, 5, 1, 5, "train"), 8, seed=0)`` trains on the same 8 episodes over and over.
"""

from __future__ import annotations

import torch

from mlhelpers.data.augment import check_distortion, random_distortion
from mlhelpers.samplers.base import TaskSampler
from mlhelpers.tasks import Task
from mlhelpers.validation import check_positive_int, describe


class SamplerWrapper(TaskSampler):
    """A sampler that transforms the batches of an inner ``sampler`` with its own generator.

    It lives on the inner sampler's device; its state holds both random states
    (``{"generator": ..., "inner": sampler.state_dict()}``), so training resumes exactly.
    """

    def __init__(self, sampler: TaskSampler, seed: int | None = None) -> None:
        if not isinstance(sampler, TaskSampler):
            raise TypeError(f"sampler must be a TaskSampler, got {type(sampler).__name__}")
        super().__init__(seed, sampler.device)
        self.sampler = sampler

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "inner": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "inner" not in state:
            raise ValueError(
                "state must be a wrapped sampler's state_dict {'generator': ..., 'inner': ...}, "
                f"got {describe(state)}"
            )
        super().load_state_dict(state)
        self.sampler.load_state_dict(state["inner"])


class AugmentedSampler(SamplerWrapper):
    """Every support and query image gets its own :func:`~mlhelpers.data.augment.random_distortion`.

    Keyword arguments are passed to ``random_distortion``: those of ``random_affine`` and the
    stroke-level ``max_stroke_change``, ``elastic_alpha``, ``elastic_sigma`` (off by default). The
    inner sampler draws on the CPU; this one moves the batch to the device.
    """

    def __init__(self, sampler: TaskSampler, seed: int | None = None, **distortion_kwargs: float) -> None:
        super().__init__(sampler, seed)
        self.distortion_kwargs = distortion_kwargs
        check_distortion(**distortion_kwargs)

    def _sample(self, num_tasks: int) -> Task:
        task = self.sampler._sample(num_tasks)
        warp = lambda x: random_distortion(x, generator=self.generator, **self.distortion_kwargs)  # noqa: E731
        return Task(support_x=warp(task.support_x), support_y=task.support_y,
                    query_x=warp(task.query_x), query_y=task.query_y, info=task.info)


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
    """Every batch of the inner sampler comes through :func:`shuffle_support`."""

    def _sample(self, num_tasks: int) -> Task:
        return shuffle_support(self.sampler.sample(num_tasks).to("cpu"), self.generator)


class TaskPool(TaskSampler):
    """A fixed pool of ``size`` tasks drawn once from ``sampler``; every batch re-uses pool tasks.

    Meta-training on a small pool lets a learner memorise its tasks instead of learning to learn
    new ones (meta-overfitting, Chapter 8). ``sample(n)`` draws ``n`` pool tasks uniformly with
    replacement from this sampler's own generator; :attr:`tasks` is the whole pool as one batch
    ``[size, ...]`` (to measure accuracy on exactly the tasks trained on).
    """

    def __init__(self, sampler: TaskSampler, size: int, seed: int | None = None) -> None:
        if not isinstance(sampler, TaskSampler):
            raise TypeError(f"sampler must be a TaskSampler, got {describe(sampler)}")
        size = check_positive_int("size", size)
        super().__init__(seed, sampler.device)
        self.tasks = sampler.sample(size)

    def __len__(self) -> int:
        return len(self.tasks)

    def _sample(self, num_tasks: int) -> Task:
        index = torch.randint(len(self.tasks), (num_tasks,), generator=self.generator)
        return self.tasks.to("cpu")[index]
