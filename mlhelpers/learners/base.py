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

import functools
import threading
from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlhelpers.tasks import Task
from mlhelpers.validation import (
    INTEGER_LABEL_DTYPES,
    check_floating,
    check_labels,
    check_query,
    check_same_device,
    check_support,
    check_task,
    check_tensor,
)


def check_outputs(outputs: Tensor, targets: Tensor) -> bool:
    """Check ``outputs`` against ``targets`` as :func:`task_loss` reads them; True for classification.

    Classification: ``targets`` ``[tasks, n]`` int64 labels in ``0 .. classes - 1`` and ``outputs``
    ``[tasks, n, classes]``. Regression: float ``outputs`` and ``targets`` of one shape. A
    TypeError or ValueError names the argument, what it got and what it expected.
    """
    check_tensor("outputs", outputs, min_dim=2)
    check_tensor("targets", targets, min_dim=2)
    check_same_device(outputs=outputs, targets=targets)
    check_floating("outputs", outputs)
    if targets.dtype in INTEGER_LABEL_DTYPES:
        if outputs.dim() != 3 or targets.dim() != 2 or outputs.shape[:2] != targets.shape:
            raise ValueError(
                f"outputs must be [tasks, n, classes] for targets [tasks, n] of class labels, got "
                f"outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)}"
            )
        check_labels("targets", targets, outputs.shape[-1])
        return True
    check_floating("targets", targets)
    if outputs.shape != targets.shape:
        raise ValueError(
            f"outputs must have the shape of the regression targets {tuple(targets.shape)}, "
            f"got {tuple(outputs.shape)}"
        )
    return False


def task_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean loss over tasks and query points: cross-entropy for integer labels, else MSE.

    ``outputs`` ``[tasks, n, classes]`` with ``targets`` ``[tasks, n]`` int64 (classification), or
    ``outputs`` and ``targets`` ``[tasks, n, out]`` float (regression); see :func:`check_outputs`.
    """
    if check_outputs(outputs, targets):
        return F.cross_entropy(outputs.flatten(0, 1), targets.flatten().long())
    return F.mse_loss(outputs, targets)


def task_metric(outputs: Tensor, targets: Tensor) -> Tensor:
    """``[tasks]`` accuracy (integer labels) or mean squared error (regression) of each task."""
    if check_outputs(outputs, targets):
        return (outputs.argmax(-1) == targets).float().mean(dim=1)
    return (outputs - targets).pow(2).flatten(1).mean(dim=1)


# Inputs are checked once per public call: nested calls (forward -> adapt -> predict) skip it.
_depth = threading.local()


def _parameter_device(module: nn.Module) -> torch.device | None:
    for p in module.parameters():
        return p.device
    return None


def _checked(method: Callable[..., Any], check: Callable[..., None]) -> Callable[..., Any]:
    """``method`` with ``check(self, *args)`` run first, unless called from another checked method."""

    @functools.wraps(method)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(_depth, "value", 0)
        if depth == 0:
            check(self, *args, **kwargs)
        _depth.value = depth + 1
        try:
            return method(self, *args, **kwargs)
        finally:
            _depth.value = depth

    wrapper.__checked__ = True  # type: ignore[attr-defined]
    return wrapper


def _check_task_call(self: nn.Module, task: Any, *args: Any, **kwargs: Any) -> None:
    check_task(task, _parameter_device(self))


def _check_adapt_call(self: nn.Module, support_x: Any, support_y: Any, *args: Any, **kwargs: Any) -> None:
    device = _parameter_device(self)
    if device is not None and isinstance(support_x, Tensor) and support_x.device != device:
        raise ValueError(f"support_x is on {support_x.device} but the learner's parameters are on {device}")
    check_support(support_x, support_y)


def _check_predict_call(self: nn.Module, adapted: Any, query_x: Any, *args: Any, **kwargs: Any) -> None:
    device = _parameter_device(self)
    if device is not None and isinstance(query_x, Tensor) and query_x.device != device:
        raise ValueError(f"query_x is on {query_x.device} but the learner's parameters are on {device}")
    check_query(query_x)


_CHECKS = {
    "forward": _check_task_call,
    "meta_loss": _check_task_call,
    "adapt": _check_adapt_call,
    "predict": _check_predict_call,
}


class MetaLearner(nn.Module, ABC):
    """Base class: subclasses implement :meth:`adapt` and :meth:`predict`.

    :meth:`meta_loss` is what the training loop minimises; learners whose meta-update is not the
    gradient of the post-adaptation query loss (first-order MAML, Reptile) override it with a
    surrogate whose gradient is their update.

    ``needs_grad_to_adapt``: whether :meth:`adapt` takes gradient steps. Evaluation runs learners
    that set it to False (metric learners) under ``torch.no_grad()`` to save memory.
    """

    needs_grad_to_adapt: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every learner's ``forward``, ``meta_loss``, ``adapt`` and ``predict`` check their inputs
        (:func:`~mlhelpers.validation.check_task`, :func:`~mlhelpers.validation.check_support`,
        :func:`~mlhelpers.validation.check_query`) before running, so a bad task fails with an
        error naming the argument, whatever the learner."""
        super().__init_subclass__(**kwargs)
        for name, check in _CHECKS.items():
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "__checked__", False):
                setattr(cls, name, _checked(method, check))

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


for _name, _check in _CHECKS.items():
    setattr(MetaLearner, _name, _checked(getattr(MetaLearner, _name), _check))
