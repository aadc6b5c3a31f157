"""The sampler interface: a seeded source of task batches on a device (Chapter 1).

A sampler owns a seeded ``torch.Generator`` (so a run is reproducible and can be resumed from its
:meth:`TaskSampler.state_dict`) and returns a batched :class:`~mlhelpers.tasks.Task` on its device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
from torch import Tensor

from mlhelpers.seeding import make_generator
from mlhelpers.tasks import Task
from mlhelpers.validation import check_positive_int, describe


class TaskSampler(ABC):
    """Base class: a seeded source of task batches on a device."""

    def __init__(self, seed: int | None = None, device: torch.device | str = "cpu") -> None:
        self.generator = make_generator(seed)
        if not isinstance(device, (str, torch.device)):
            raise TypeError(f"device must be a str or torch.device, got {describe(device)}")
        self.device = torch.device(device)

    @abstractmethod
    def _sample(self, num_tasks: int) -> Task:
        """Draw ``num_tasks`` tasks on the CPU using ``self.generator``."""

    def sample(self, num_tasks: int = 1) -> Task:
        """A batch of ``num_tasks`` fresh tasks on this sampler's device."""
        check_positive_int("num_tasks", num_tasks)
        return self._sample(num_tasks).to(self.device)

    def batches(self, meta_batch_size: int, num_batches: int | None = None) -> Iterator[Task]:
        """Yield ``num_batches`` batches of ``meta_batch_size`` tasks (forever if None)."""
        check_positive_int("meta_batch_size", meta_batch_size)
        if num_batches is not None:
            check_positive_int("num_batches", num_batches)
        done = 0
        while num_batches is None or done < num_batches:
            yield self.sample(meta_batch_size)
            done += 1

    def state_dict(self) -> dict[str, Tensor]:
        """The random state, to resume sampling exactly where it stopped."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore a :meth:`state_dict`; a ValueError says what a malformed one lacks."""
        generator = state.get("generator") if isinstance(state, dict) else None
        if not isinstance(generator, Tensor) or generator.dtype != torch.uint8:
            raise ValueError(f"state must be a sampler state_dict {{'generator': uint8 tensor}}, got {describe(state)}")
        self.generator.set_state(generator)


def split_support_query(x: Tensor, y: Tensor, k_shot: int, info: dict[str, Tensor]) -> Task:
    """The first ``k_shot`` examples of ``x`` ``[tasks, n, ...]`` and ``y`` as support, the rest as query."""
    return Task(x[:, :k_shot], y[:, :k_shot], x[:, k_shot:], y[:, k_shot:], info)
