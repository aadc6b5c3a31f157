"""One task type for every chapter (Chapter 1): a :class:`Task` holds a *batch* of support and query sets::

    support_x  [tasks, n_support, *x_shape]     e.g. [tasks, n_way * k_shot, 1, 28, 28]
    support_y  [tasks, n_support, *y_shape]     e.g. [tasks, n_way * k_shot] (int64 labels 0..n_way-1)
    query_x    [tasks, n_query, *x_shape]
    query_y    [tasks, n_query, *y_shape]

``info`` holds per-task metadata, also ``[tasks, ...]`` (a sinusoid's amplitude, an episode's
classes), moved between devices with the rest. Every learner runs :func:`check_task` first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mlhelpers.validation import check_query, check_same_device, check_support, check_targets, describe


@dataclass
class Task:
    """A batch of tasks, each with a support set (to adapt on) and a query set (to be judged on)."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = {
            "support_x": self.support_x,
            "support_y": self.support_y,
            "query_x": self.query_x,
            "query_y": self.query_y,
        }
        if not isinstance(self.info, dict):
            raise TypeError(f"Task.info must be a dict of tensors, got {type(self.info).__name__}")
        for name, value in parts.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"Task.{name} must be a torch.Tensor, got {type(value).__name__}")
            if value.dim() < 2:
                raise ValueError(
                    f"Task.{name} must have shape [tasks, examples, ...], got {tuple(value.shape)}"
                )
        for key, value in self.info.items():
            if not isinstance(value, Tensor) or value.dim() < 1:
                raise TypeError(
                    f"Task.info[{key!r}] must be a tensor with a leading [tasks] dimension, got {describe(value)}"
                )
        n = self.support_x.shape[0]
        for name, value in list(parts.items()) + [(f"info[{k!r}]", v) for k, v in self.info.items()]:
            if value.shape[0] != n:
                raise ValueError(
                    f"Task.{name} holds {value.shape[0]} tasks but support_x holds {n}: "
                    "every field needs the same leading [tasks] dimension"
                )
        for x, y in (("support_x", "support_y"), ("query_x", "query_y")):
            if parts[x].shape[1] != parts[y].shape[1]:
                raise ValueError(f"{x} has {parts[x].shape[1]} examples per task but {y} has {parts[y].shape[1]}")
        for name, what in (("support_x", "support"), ("query_x", "query")):
            if parts[name].shape[1] < 1:
                raise ValueError(
                    f"Task.{name} must hold at least one example per task, got an empty {what} set "
                    f"of shape {tuple(parts[name].shape)}"
                )
        for a, b in (("support_x", "query_x"), ("support_y", "query_y")):
            if parts[a].shape[2:] != parts[b].shape[2:]:
                raise ValueError(
                    f"Task.{b} must have the per-example shape of {a}, {tuple(parts[a].shape[2:])}, "
                    f"got {tuple(parts[b].shape[2:])}"
                )
        check_same_device(**parts, **{f"info[{k!r}]": v for k, v in self.info.items()})

    def __len__(self) -> int:
        """Number of tasks in the batch."""
        return self.support_x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.support_x.device

    @property
    def n_support(self) -> int:
        return self.support_x.shape[1]

    @property
    def n_query(self) -> int:
        return self.query_x.shape[1]

    def _apply(self, fn: Callable[[Tensor], Tensor]) -> Task:
        """The batch with ``fn`` applied to each of its tensors (the four sets and ``info``)."""
        return Task(fn(self.support_x), fn(self.support_y), fn(self.query_x), fn(self.query_y),
                    {k: fn(v) for k, v in self.info.items()})

    def to(self, device: torch.device | str) -> Task:
        """A copy of the batch on ``device`` (no copy if it is already there)."""
        return self._apply(lambda t: t.to(device))

    def __getitem__(self, index: int | slice | Tensor) -> Task:
        """The sub-batch ``index`` (an int keeps the leading dimension, with size 1)."""
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"task index {index} out of range for a batch of {len(self)}")
            index = slice(index, index + 1 if index != -1 else None)
        return self._apply(lambda t: t[index])

    def unbind(self) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Iterate over single tasks as ``(support_x, support_y, query_x, query_y)`` without the batch dim."""
        for i in range(len(self)):
            yield self.support_x[i], self.support_y[i], self.query_x[i], self.query_y[i]

    @staticmethod
    def cat(tasks: list[Task]) -> Task:
        """Concatenate batches along the task dimension."""
        if not tasks:
            raise ValueError("Task.cat needs at least one batch, got an empty list")
        for i, task in enumerate(tasks):
            if not isinstance(task, Task):
                raise TypeError(f"tasks[{i}] must be a Task, got {describe(task)}")
        keys = set(tasks[0].info)
        for i, task in enumerate(tasks):
            if set(task.info) != keys:
                raise ValueError(
                    f"tasks[{i}].info has keys {sorted(task.info)} but tasks[0].info has {sorted(keys)}: "
                    "batches must carry the same info to be concatenated"
                )
        return Task(
            torch.cat([t.support_x for t in tasks]),
            torch.cat([t.support_y for t in tasks]),
            torch.cat([t.query_x for t in tasks]),
            torch.cat([t.query_y for t in tasks]),
            {k: torch.cat([t.info[k] for t in tasks]) for k in keys},
        )


def check_task(task: Any, device: torch.device | None = None) -> None:
    """Check a batch of tasks before a learner uses it (see :func:`~mlhelpers.validation.check_support`).

    Also: ``task`` is a :class:`Task`; query inputs are float and finite; query
    targets have the support targets' kind (labels or float); and, with ``device``, the task lives
    on it (the learner's device).
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be a mlhelpers.tasks.Task, got {describe(task)}")
    if device is not None and task.device != device:
        raise ValueError(
            f"task is on {task.device} but the learner's parameters are on {device}; "
            f"move one of them (task.to({str(device)!r}))"
        )
    check_support(task.support_x, task.support_y)
    check_query(task.query_x)
    if task.query_y.is_floating_point() != task.support_y.is_floating_point():
        raise TypeError(
            f"query_y must have the kind of support_y (both class labels or both float targets), "
            f"got query_y dtype {task.query_y.dtype} and support_y dtype {task.support_y.dtype}"
        )
    check_targets("query_y", task.query_y)
