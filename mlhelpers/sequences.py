"""Tasks as token sequences for a causal transformer: the layouts of Chapter 5.

**Interleaved** (Garg et al. 2022): ``x_1, y_1, ..., x_k, y_k, x_query``, ``2k + 1`` tokens of one
width ``W``. An ``x`` token is the input vector followed by zeros. Regression: ``W = max(x width,
out)``, a label token ``[y, 0, ..., 0]``. Classification: ``W = x width + n_way``, an input token
``[x, 0 * n_way]`` and a label token ``[0 * x width, one_hot(y)]``, so a linear read-in never
mistakes a label for an input feature.

**Paired** (as SNAIL, Mishra et al. 2018): one token per example, ``[x_i | y_i]``, then
``[x_query | 0]`` (``k + 1`` tokens, :func:`token_width` with ``paired=True``). A query can find its
label in one attention step, where the interleaved layout needs two (an induction head, Olsson et
al. 2022; Chapter 5 does not test which learns faster), but a paired token already holds its
label, so there is no learning curve for free: only the last, unlabelled token is a prediction.

**Offset labels** (Santoro et al. 2016's memory-augmented network, :class:`~mlhelpers.learners.mann.MANN`):
one token per example too, but token ``t`` is ``[x_t | y_{t-1}]`` (``[x_1 | 0]`` first,
:func:`offset_labels`): each label arrives one step *after* its example. So every token is a
prediction (of ``y_t``, from the examples before it) and the whole episode is a stream with no
support/query split: the learning curve comes with every pass, as in the interleaved layout, with
half as many tokens. The price: ``y_t`` arrives in the token of ``x_{t+1}``, so to bind a drawing to
its label the network must carry ``x_t`` for one step in its own state (the interleaved layout gives
``y_t`` a token of its own; a paired token holds ``x_i`` and ``y_i`` together). For the prediction of
``y_t`` the three layouts hold the same information: ``x_1, y_1, ..., x_{t-1}, y_{t-1}`` and ``x_t``.

:func:`query_sequences` builds one sequence per query, ``[tasks * n_query, 2k + 1, W]`` (a query
never sees its own label or the other queries). :func:`prefix_sequence` (``x_1, y_1, ..., x_k``)
read at :func:`x_positions` predicts every ``y_i`` from the examples before it: the in-context
learning curve in one pass. Baselines along the same prefixes: :mod:`mlhelpers.regression_baselines`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mlhelpers.tasks import Task
from mlhelpers.validation import check_labels, check_positive_int


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def _check_vectors(name: str, value: Tensor) -> None:
    if not isinstance(value, Tensor) or value.dim() != 3:
        raise ValueError(f"{name} must be a [tasks, n, features] tensor, got {_shape(value)}")


def token_width(x_features: int, *, n_way: int | None = None, y_features: int = 1, paired: bool = False) -> int:
    """Width ``W`` of every token.

    ``x_features + n_way`` for classification; for regression ``max(x_features, y_features)``
    (Garg's interleaved layout), or ``x_features + y_features`` with ``paired=True`` (labels in
    coordinates of their own, so that ``x`` and ``y`` can share a token).
    """
    check_positive_int("x_features", x_features)
    if n_way is not None:
        return x_features + check_positive_int("n_way", n_way)
    check_positive_int("y_features", y_features)
    return x_features + y_features if paired else max(x_features, y_features)


def input_tokens(x: Tensor, width: int, *, name: str = "x") -> Tensor:
    """Input vectors ``[tasks, n, F]`` -> tokens ``[tasks, n, width]``: ``[x, 0, ..., 0]``."""
    _check_vectors(name, x)
    if x.shape[-1] > width:
        raise ValueError(f"{name} has {x.shape[-1]} features but tokens are only width={width} wide")
    return F.pad(x, (0, width - x.shape[-1]))


def label_tokens(
    y: Tensor, width: int, *, n_way: int | None = None, paired: bool = False, name: str = "y"
) -> Tensor:
    """Labels -> tokens ``[tasks, n, width]``, laid out as the module docstring says.

    Regression (``n_way`` None): float ``y`` ``[tasks, n, out]`` -> ``[y, 0, ..., 0]``, or
    ``[0, ..., 0, y]`` with ``paired=True``. Classification: integer ``y`` ``[tasks, n]`` ->
    ``[0, ..., 0, one_hot(y, n_way)]`` (either layout).
    """
    if n_way is None:
        _check_vectors(name, y)
        if not y.is_floating_point():
            raise ValueError(
                f"{name} must hold float regression targets [tasks, n, out] when n_way is None, "
                f"got dtype {y.dtype}; pass n_way for class labels"
            )
        if y.shape[-1] > width:
            raise ValueError(f"{name} has {y.shape[-1]} outputs but tokens are only width={width} wide")
        pad = width - y.shape[-1]
        return F.pad(y, (pad, 0) if paired else (0, pad))
    if not isinstance(y, Tensor) or y.dim() != 2:
        raise ValueError(f"{name} must be a [tasks, n] tensor of class labels, got {_shape(y)}")
    labels = check_labels(name, y, n_way).long()
    if n_way > width:
        raise ValueError(f"n_way={n_way} one-hot labels do not fit in tokens of width={width}")
    return F.pad(F.one_hot(labels, n_way).float(), (width - n_way, 0))


def interleave(x_tokens: Tensor, y_tokens: Tensor) -> Tensor:
    """``x_1, y_1, ..., x_n, y_n``: two ``[tasks, n, W]`` token tensors -> ``[tasks, 2n, W]``."""
    _check_vectors("x_tokens", x_tokens)
    if y_tokens.shape != x_tokens.shape:
        raise ValueError(
            f"y_tokens must have the shape of x_tokens {tuple(x_tokens.shape)}, got {_shape(y_tokens)}"
        )
    return torch.stack([x_tokens, y_tokens], dim=2).flatten(1, 2)


def x_positions(n: int) -> Tensor:
    """Positions ``0, 2, ..., 2n - 2`` of the ``x`` tokens in an interleaved sequence."""
    return torch.arange(n) * 2


def query_sequences(support_x_tokens: Tensor, support_y_tokens: Tensor, query_x_tokens: Tensor) -> Tensor:
    """One sequence per query: ``[tasks * n_query, 2k + 1, W]``, each ``x_1, y_1, ..., x_k, y_k, x_query``.

    Task-major: query ``j`` of task ``t`` is row ``t * n_query + j``. Read the prediction at the
    last position.
    """
    return _one_sequence_per_query(interleave(support_x_tokens, support_y_tokens), query_x_tokens)


def _one_sequence_per_query(context: Tensor, query_x_tokens: Tensor) -> Tensor:
    """``[T, L, W]`` context and ``[T, Q, W]`` queries -> ``[T * Q, L + 1, W]``, task-major."""
    _check_vectors("query_x_tokens", query_x_tokens)
    tasks, n_query, width = query_x_tokens.shape
    if tasks != context.shape[0] or width != context.shape[-1]:
        raise ValueError(
            f"query_x_tokens must be [tasks={context.shape[0]}, n_query, W={context.shape[-1]}] "
            f"like the support tokens, got {tuple(query_x_tokens.shape)}"
        )
    context = context[:, None].expand(tasks, n_query, *context.shape[1:])
    return torch.cat([context, query_x_tokens[:, :, None]], dim=2).flatten(0, 1)


def paired_query_sequences(support_x_tokens: Tensor, support_y_tokens: Tensor, query_x_tokens: Tensor) -> Tensor:
    """One paired sequence per query: ``[tasks * n_query, k + 1, W]``, each ``x_1 + y_1, ..., x_k + y_k, x_query``.

    Input and label tokens must use disjoint coordinates (:func:`token_width` with ``paired=True``
    or ``n_way``), so their sum holds both. Task-major like :func:`query_sequences`; read the
    prediction at the last position.
    """
    _check_vectors("support_x_tokens", support_x_tokens)
    if support_y_tokens.shape != support_x_tokens.shape:
        raise ValueError(
            f"support_y_tokens must have the shape of support_x_tokens {tuple(support_x_tokens.shape)}, "
            f"got {_shape(support_y_tokens)}"
        )
    if ((support_x_tokens != 0) & (support_y_tokens != 0)).any():
        raise ValueError("input and label tokens overlap: a paired token needs labels in coordinates of their own")
    return _one_sequence_per_query(support_x_tokens + support_y_tokens, query_x_tokens)


def prefix_sequence(x_tokens: Tensor, y_tokens: Tensor) -> Tensor:
    """``x_1, y_1, ..., x_{n-1}, y_{n-1}, x_n``: ``[tasks, 2n - 1, W]``, the last label left out."""
    return interleave(x_tokens, y_tokens)[:, :-1]


def task_sequences(task: Task, n_way: int | None = None, *, paired: bool = False) -> Tensor:
    """The raw query sequences of a task with *vector* inputs, before any learned read-in (Chapter 5):
    ``[tasks * n_query, 2k + 1, W]`` (:func:`query_sequences`), or ``[tasks * n_query, k + 1, W]``
    with ``paired=True`` (:func:`paired_query_sequences`). Image tasks are encoded inside
    :class:`~mlhelpers.learners.incontext.InContextLearner`.
    """
    _check_vectors("task.support_x", task.support_x)
    y_features = 1 if n_way is not None else task.support_y.shape[-1]
    width = token_width(task.support_x.shape[-1], n_way=n_way, y_features=y_features, paired=paired)
    build = paired_query_sequences if paired else query_sequences
    return build(
        input_tokens(task.support_x, width, name="task.support_x"),
        label_tokens(task.support_y, width, n_way=n_way, paired=paired, name="task.support_y"),
        input_tokens(task.query_x, width, name="task.query_x"),
    )


def offset_labels(y: Tensor, n_way: int) -> Tensor:
    """The offset-label layout's label part: integer labels ``[tasks, T]`` -> ``[tasks, T, n_way]``,
    row ``t`` the one-hot of ``y[:, t - 1]`` and row 0 zeros (Santoro et al. 2016). Concatenated
    with the inputs, step ``t`` shows ``x_t`` with the previous label, never its own.
    """
    if not isinstance(y, Tensor) or y.dim() != 2:
        raise ValueError(f"y must be a [tasks, T] tensor of class labels, got {_shape(y)}")
    check_positive_int("n_way", n_way)
    one_hot = F.one_hot(check_labels("y", y, n_way).long(), n_way).float()
    return F.pad(one_hot, (0, 0, 1, 0))[:, :-1]
