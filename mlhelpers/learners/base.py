"""The one interface every learner of the book shares.

A meta-learner *adapts* to a task's support set and *predicts* on its query set; meta-training
minimises the query loss after adaptation, averaged over a batch of tasks. Gradient-based learners
(MAML and relatives, Chapter 3) adapt by taking gradient steps, metric learners (Prototypical
Networks and friends, Chapter 4) by computing class summaries, in-context learners (Chapter 5) by
reading the support set as a sequence. All are batched over tasks::

    adapted = learner.adapt(task.support_x, task.support_y)   # [tasks, n_support, ...]
    outputs = learner.predict(adapted, task.query_x)          # [tasks, n_query, out]
    loss = learner.meta_loss(task)                            # scalar, differentiable
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlhelpers.tasks import Task


def task_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean loss over tasks and query points: cross-entropy for integer labels, else MSE.

    ``outputs`` ``[tasks, n, classes]`` with ``targets`` ``[tasks, n]`` int64 (classification), or
    ``outputs`` and ``targets`` ``[tasks, n, out]`` float (regression).
    """
    if targets.dtype in (torch.int64, torch.int32):
        return F.cross_entropy(outputs.flatten(0, 1), targets.flatten())
    return F.mse_loss(outputs, targets)


def task_metric(outputs: Tensor, targets: Tensor) -> Tensor:
    """``[tasks]`` accuracy (integer labels) or mean squared error (regression) of each task."""
    if targets.dtype in (torch.int64, torch.int32):
        return (outputs.argmax(-1) == targets).float().mean(dim=1)
    return (outputs - targets).pow(2).flatten(1).mean(dim=1)


class MetaLearner(nn.Module, ABC):
    """Base class: subclasses implement :meth:`adapt` and :meth:`predict`.

    :meth:`meta_loss` is what the training loop minimises; learners whose meta-update is not the
    gradient of the post-adaptation query loss (first-order MAML, Reptile) override it with a
    surrogate whose gradient is their update.

    ``needs_grad_to_adapt``: whether :meth:`adapt` takes gradient steps. Evaluation runs learners
    that set it to False (metric learners) under ``torch.no_grad()`` to save memory.
    """

    needs_grad_to_adapt: bool = True

    @abstractmethod
    def adapt(self, support_x: Tensor, support_y: Tensor) -> Any:
        """Adapt to each task's support set ``[tasks, n_support, ...]``; return the adapted state."""

    @abstractmethod
    def predict(self, adapted: Any, query_x: Tensor) -> Tensor:
        """Outputs ``[tasks, n_query, out]`` on the query inputs, using the adapted state."""

    def forward(self, task: Task) -> Tensor:
        """Adapt on the support set and predict the query set: ``[tasks, n_query, out]``."""
        return self.predict(self.adapt(task.support_x, task.support_y), task.query_x)

    def meta_loss(self, task: Task) -> Tensor:
        """Scalar query loss after adaptation, averaged over the batch of tasks."""
        return task_loss(self(task), task.query_y)
