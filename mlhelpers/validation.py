"""Input checks shared by the package: each error names the argument, what was given and what was expected.

Every helper from Chapter 1 on calls them, and the base class of the learners runs
:func:`~mlhelpers.tasks.check_task`, :func:`check_support` and :func:`check_query` before any
learner's own code. This module imports nothing of the package (``tasks`` imports it).
The site's "Input validation" page lists every case; a test runs each one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1, else raise a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def check_steps(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 0 (0 = no adaptation), else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool, else a TypeError naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_module(name: str, value: Any) -> Any:
    """Return ``value`` if it is a ``torch.nn.Module`` (a backbone, a model), else a TypeError naming ``name``."""
    if not isinstance(value, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {describe(value)}")
    return value


def check_positive(name: str, value: Any) -> float:
    """Return ``value`` as a float if it is a finite number > 0 (a learning rate, a step size, a
    standard deviation), else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_number(name: str, value: Any, *, minimum: float | None = None) -> float:
    """Return ``value`` as a float if it is a finite number (``>= minimum``), else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        expected = f">= {minimum:g} (a finite number)" if minimum is not None else "a finite number"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def check_shape(name: str, value: Any) -> tuple[int, ...]:
    """Return ``value`` as a tuple if it is a sequence of ints >= 1 (the shape of one example, such as
    ``(1, 28, 28)``), else a TypeError naming ``name``."""
    if isinstance(value, (str, bytes, int)) or not hasattr(value, "__iter__") or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value):
        raise TypeError(f"{name} must be the shape of one example, a tuple of ints >= 1 such as (1, 28, 28), "
                        f"got {value!r}")
    return tuple(value)


class NonFiniteError(RuntimeError):
    """A run produced NaN or infinity: a loss or gradient norm in :func:`~mlhelpers.training.meta_train`,
    a learner's outputs or metric in :func:`~mlhelpers.evaluation.evaluate`. What a diverged run raises;
    :func:`~mlhelpers.hpo.learner_objective` prunes a trial on it."""


# --- tensors ----------------------------------------------------------------------------------

INTEGER_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
"""Dtypes accepted as class labels (what :func:`~mlhelpers.learners.base.task_loss` reads as classification)."""


def describe(value: Any) -> str:
    """A short description for error messages: ``"a tensor of shape (2, 3) and dtype torch.float32"``."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, (int, float, str, bool)):
        return f"{type(value).__name__} {value!r}"
    return f"a {type(value).__name__}"


def transformed() -> bool:
    """True inside a ``torch.func`` transform (vmap, grad), where data-dependent checks cannot run."""
    # torch.func has no public "inside a transform?" query (torch 2.14): is_batchedtensor is as
    # private as this, and torch.func.debug_unwrap is documented as debug-only. The current
    # functorch level is what torch.func itself consults; None outside every transform.
    return torch._C._functorch.maybe_current_level() is not None


def check_tensor(name: str, value: Any, *, min_dim: int | None = None, dim: int | None = None) -> Tensor:
    """Return ``value`` if it is a tensor with ``dim`` (or at least ``min_dim``) dimensions.

    A TypeError names ``name`` if ``value`` is not a tensor, a ValueError if its rank is wrong.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(value)}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(value.shape)}")
    if min_dim is not None and value.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions, got shape {tuple(value.shape)}")
    return value


def check_floating(name: str, value: Tensor) -> Tensor:
    """Return ``value`` if its dtype is floating point, else a TypeError naming ``name`` and the dtype."""
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def check_finite(name: str, value: Tensor) -> Tensor:
    """Return ``value`` if it holds no NaN or infinity, else a ValueError naming ``name``.

    The message gives how many entries are not finite and the first one's index and value.
    Integer tensors are always finite.
    """
    if not (value.is_floating_point() or value.is_complex()) or transformed():
        return value
    bad = ~torch.isfinite(value.detach())
    if bool(bad.any()):
        first = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(
            f"{name} must hold finite numbers, got {int(bad.sum())} non-finite value(s) "
            f"(first: {float(value.detach()[first])} at index {first})"
        )
    return value


def check_labels(name: str, labels: Tensor, num_classes: int | None = None) -> Tensor:
    """Return integer class ``labels`` if they lie in ``0 .. num_classes - 1`` (``>= 0`` if None).

    A TypeError names ``name`` for a non-integer dtype, a ValueError for a label outside the
    range, with the labels given and the range expected.
    """
    check_tensor(name, labels)
    if labels.dtype not in INTEGER_LABEL_DTYPES:
        raise TypeError(f"{name} must hold integer class labels (int64), got dtype {labels.dtype}")
    if labels.numel() == 0 or transformed():
        return labels
    low, high = int(labels.min()), int(labels.max())
    if num_classes is not None and (low < 0 or high >= num_classes):
        raise ValueError(
            f"{name} labels must lie in 0..{num_classes - 1} (n_way={num_classes}), got labels {low}..{high}"
        )
    if low < 0:
        raise ValueError(
            f"{name} labels must lie in 0..{max(high, 0)} (n_way = largest label + 1), got labels {low}..{high}"
        )
    return labels


def check_same_device(**tensors: Tensor) -> torch.device:
    """The common device of the keyword tensors; a ValueError names each argument and its device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"tensors must all be on one device, got {listed}")
    return next(iter(devices.values()))


def check_support(support_x: Any, support_y: Any) -> None:
    """Check one batch of support sets: ``support_x`` ``[tasks, n_support, ...]`` float, finite;
    ``support_y`` ``[tasks, n_support, ...]`` float (regression, finite) or int64 labels >= 0;
    at least one example; both on one device. Errors name the argument."""
    check_tensor("support_x", support_x, min_dim=2)
    check_tensor("support_y", support_y, min_dim=2)
    if support_x.shape[:2] != support_y.shape[:2]:
        raise ValueError(
            f"support_x and support_y must share their first two dimensions [tasks, n_support], "
            f"got support_x {tuple(support_x.shape)} and support_y {tuple(support_y.shape)}"
        )
    if support_x.shape[1] < 1:
        raise ValueError(
            "support_x must hold at least one example per task, got an empty support set of shape "
            f"{tuple(support_x.shape)}"
        )
    check_same_device(support_x=support_x, support_y=support_y)
    check_floating("support_x", support_x)
    check_finite("support_x", support_x)
    check_targets("support_y", support_y)


def check_targets(name: str, targets: Tensor) -> Tensor:
    """Regression targets (floating point, finite) or class labels (an integer dtype, >= 0, shaped
    ``[tasks, n]``: a trailing dimension such as ``[tasks, n, 1]`` is a ValueError naming ``name``)."""
    if targets.is_floating_point():
        return check_finite(name, targets)
    check_labels(name, targets)
    if targets.dim() != 2:
        raise ValueError(
            f"{name} holds integer class labels, which must be [tasks, n], got shape {tuple(targets.shape)}; "
            "use .squeeze(-1) for [tasks, n, 1], or float targets for regression"
        )
    return targets


def check_query(query_x: Any) -> None:
    """``query_x`` ``[tasks, n_query, ...]``, at least one query per task, floating point and finite."""
    check_tensor("query_x", query_x, min_dim=2)
    if query_x.shape[1] < 1:
        raise ValueError(
            "query_x must hold at least one example per task (the query loss of none is NaN), got an empty "
            f"query set of shape {tuple(query_x.shape)}"
        )
    check_floating("query_x", query_x)
    check_finite("query_x", query_x)
