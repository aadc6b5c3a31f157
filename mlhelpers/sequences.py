"""Tasks as token sequences for a causal transformer: the layouts of Chapter 5.

An in-context learner reads a task's support set as a sequence of tokens and predicts a query's
label at the end. Following Garg et al. (2022, "What can transformers learn in-context?") the
tokens interleave inputs and labels, all vectors of one width ``W``::

    x_1, y_1, x_2, y_2, ..., x_k, y_k, x_query        2k + 1 tokens
    ^ prediction of y_1 is read here,  ^ ... and of the query's label here

**Token layout.** ``x`` tokens are the input vectors (or their image features) followed by zeros.

* Regression (float labels ``[tasks, n, out]``), as in Garg et al.: ``W = max(x width, out)``,
  a label token is ``[y, 0, ..., 0]``.
* Classification (integer labels ``0 .. n_way - 1``): ``W = x width + n_way``, an input token is
  ``[x, 0 * n_way]`` and a label token ``[0 * x width, one_hot(y)]``. The one-hot lives in
  coordinates of its own, so a linear read-in can never mistake a label for an input feature
  (it acts as two separate encoders, one for inputs and one for labels, with a shared bias).

**Paired layout.** SNAIL (Mishra et al. 2018) feeds each support example *with its own label*
and the query with a null label. :func:`paired_query_sequences` packs each pair into *one* token,
``x_i + y_i`` (the label in coordinates of its own: ``W = x width + n_way`` for classes,
``x width + out`` for regression, :func:`token_width` with ``paired=True``), and the query's token
carries zeros where a label would be::

    [x_1 | y_1], [x_2 | y_2], ..., [x_k | y_k], [x_query | 0]        k + 1 tokens

A query then finds its label in one attention step (match ``x``, copy ``y``), where the
interleaved layout needs two (an earlier layer must first copy ``x_i`` into ``y_i``'s token, the
"induction head" of Olsson et al. 2022); paired sequences are also half as long. What is lost is
Garg's learning curve for free: a paired token already holds its own label. (The memory-augmented
network of Santoro et al. 2016 pairs differently: it feeds each input with the *previous* step's
label, ``[x_t | y_{t-1}]``, so the label of ``x_t`` arrives one step later. This module does not
build that offset layout.)

**Queries.** :func:`query_sequences` builds one sequence per query, support set first, batched as
``[tasks * n_query, 2k + 1, W]``: a query sees the whole support set and itself, never its own
label nor the other queries. :func:`prefix_sequence` drops the query and the last label,
``x_1, y_1, ..., x_k`` (``2k - 1`` tokens); a causal model's outputs at the ``x`` positions
(:func:`x_positions`) then predict every ``y_i`` from the ``i - 1`` examples before it, so one pass
gives the in-context learning curve for context lengths ``0 .. k - 1`` (Garg's trick).

The classical baselines that predict along the same prefixes are in
:mod:`mlhelpers.regression_baselines`.
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
    """The query sequences of a task with *vector* inputs.

    ``[tasks * n_query, 2k + 1, W]`` interleaved (:func:`query_sequences`), or
    ``[tasks * n_query, k + 1, W]`` with ``paired=True`` (:func:`paired_query_sequences`). Raw
    tokens, before any learned read-in: the object the transformer of Chapter 5 reads. Image tasks
    are encoded first, inside :class:`~mlhelpers.learners.incontext.InContextLearner`.
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
