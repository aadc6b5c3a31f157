"""The one interface every learner of the book shares (gradient-based, Chapter 3; metric, Chapter 4;
in-context, Chapter 5): adapt to a support set, predict on a query set, batched over tasks::

    adapted = learner.adapt(task.support_x, task.support_y)   # [tasks, n_support, ...]
    outputs = learner.predict(adapted, task.query_x)          # [tasks, n_query, out]
    loss = learner.meta_loss(task)                            # scalar: query loss after adaptation
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from mlhelpers.config import module_device
from mlhelpers.tasks import Task, check_task
from mlhelpers.validation import (
    INTEGER_LABEL_DTYPES,
    NonFiniteError,
    check_floating,
    check_labels,
    check_query,
    check_same_device,
    check_support,
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


def _check_adapted_tasks(adapted: Any, query_x: Tensor) -> None:
    """A ValueError if the state ``adapt`` returned (a tensor, or a tuple of tensors whose leading
    dimensions agree: the tasks) holds another number of tasks than ``query_x``. (The gradient-based
    learners check their fast-weight dicts themselves.)"""
    if isinstance(adapted, Tensor):
        parts = [adapted]
    elif isinstance(adapted, tuple):
        parts = list(adapted)
    else:
        return
    leading = {p.shape[0] for p in parts if isinstance(p, Tensor) and p.dim() >= 1}
    if len(leading) == 1 and len(parts) == sum(isinstance(p, Tensor) and p.dim() >= 1 for p in parts):
        tasks = leading.pop()
        if tasks != query_x.shape[0]:
            raise ValueError(f"adapted holds the state of {tasks} tasks but query_x holds {query_x.shape[0]} "
                             "(predict needs the state adapt returned for the same tasks)")


_SHAPE_ERROR = re.compile(r"shape|size|dimension|Expected .* input", re.IGNORECASE)


@contextmanager
def _shape_errors_named(**inputs: Any) -> Iterator[None]:
    """Re-raise a torch shape error from inside a learner's model as a ValueError naming ``inputs``.

    Examples of another rank or size than the model takes (``[tasks, n, 28, 28]`` for a conv net
    that reads ``[C, H, W]``) pass every check that does not know the model, then fail in torch
    with a message that names no argument of the learner.
    """
    try:
        yield
    except RuntimeError as error:
        if isinstance(error, NonFiniteError) or not _SHAPE_ERROR.search(str(error)):
            raise
        shapes = ", ".join(f"{name} {tuple(x.shape)}" for name, x in inputs.items() if isinstance(x, Tensor))
        first_line = str(error).splitlines()[0][:300]
        raise ValueError(
            f"the learner's model raised a shape error on {shapes}: check that each example has the shape "
            f"the model takes ([tasks, n, *example_shape]); torch said: {first_line}"
        ) from error


class MetaLearner(nn.Module, ABC):
    """Base class: subclasses implement the hooks :meth:`_adapt` and :meth:`_predict`.

    The public methods :meth:`adapt`, :meth:`predict`, :meth:`forward` and :meth:`meta_loss` check
    their inputs (:func:`~mlhelpers.tasks.check_task`, :func:`~mlhelpers.validation.check_support`,
    :func:`~mlhelpers.validation.check_query`), then call the hook of the same name with an
    underscore. Subclasses override hooks, never public methods; hooks call hooks, so nothing is
    checked twice. :meth:`_meta_loss` (what training minimises) and :meth:`_forward` may be overridden
    too (Reptile's surrogate loss, a transductive forward).

    ``needs_grad_to_adapt``: False for learners that adapt without gradient steps; evaluation runs
    them under ``torch.no_grad()``.
    """

    needs_grad_to_adapt: bool = True

    # --- the public interface: check the inputs, then run the hook ----------------------------

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Any:
        """Adapt to each task's support set ``[tasks, n_support, ...]``; return the adapted state."""
        self._check_device("support_x", support_x)
        check_support(support_x, support_y)
        self._check_dtype(support_x=support_x, support_y=support_y)
        with _shape_errors_named(support_x=support_x):
            return self._adapt(support_x, support_y)

    def predict(self, adapted: Any, query_x: Tensor) -> Tensor:
        """Outputs ``[tasks, n_query, out]`` on the query inputs, using the adapted state."""
        self._check_device("query_x", query_x)
        check_query(query_x)
        self._check_dtype(query_x=query_x)
        _check_adapted_tasks(adapted, query_x)
        with _shape_errors_named(query_x=query_x):
            return self._predict(adapted, query_x)

    def forward(self, task: Task) -> Tensor:
        """Adapt on the support set and predict the query set: ``[tasks, n_query, out]``."""
        check_task(task, module_device(self))
        self._check_task_dtype(task)
        with _shape_errors_named(support_x=task.support_x, query_x=task.query_x):
            return self._forward(task)

    def meta_loss(self, task: Task) -> Tensor:
        """Scalar query loss after adaptation, averaged over the batch of tasks."""
        check_task(task, module_device(self))
        self._check_task_dtype(task)
        with _shape_errors_named(support_x=task.support_x, query_x=task.query_x):
            return self._meta_loss(task)

    def _check_device(self, name: str, x: Any) -> None:
        """A ValueError naming ``name`` if the tensor ``x`` is not on the learner's device."""
        device = module_device(self)
        if device is not None and isinstance(x, Tensor) and x.device != device:
            raise ValueError(f"{name} is on {x.device} but the learner's parameters are on {device}")

    def _check_dtype(self, **tensors: Tensor) -> None:
        """A TypeError naming the first floating-point tensor whose dtype is not that of the learner's
        parameters (float64 or float16 inputs to float32 weights used to fail deep inside torch)."""
        dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), None)
        for name, x in tensors.items():
            if dtype is not None and isinstance(x, Tensor) and x.is_floating_point() and x.dtype != dtype:
                raise TypeError(
                    f"{name} has dtype {x.dtype} but the learner's parameters are {dtype}: convert the data "
                    f"(x.to({dtype})) or the learner (learner.to({x.dtype}))"
                )

    def _check_task_dtype(self, task: Task) -> None:
        self._check_dtype(support_x=task.support_x, support_y=task.support_y, query_x=task.query_x,
                          query_y=task.query_y)

    # --- hooks: what subclasses implement, on inputs already checked --------------------------

    @abstractmethod
    def _adapt(self, support_x: Tensor, support_y: Tensor) -> Any:
        """:meth:`adapt` without the checks."""

    @abstractmethod
    def _predict(self, adapted: Any, query_x: Tensor) -> Tensor:
        """:meth:`predict` without the checks."""

    def _forward(self, task: Task) -> Tensor:
        """:meth:`forward` without the checks: predict the query set after adapting on the support set."""
        return self._predict(self._adapt(task.support_x, task.support_y), task.query_x)

    def _meta_loss(self, task: Task) -> Tensor:
        """:meth:`meta_loss` without the checks: :func:`task_loss` of :meth:`_forward`."""
        return task_loss(self._forward(task), task.query_y)
