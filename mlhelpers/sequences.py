"""Tasks as sequences for a causal transformer, and the classical predictors on their prefixes. Chapter 5.

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

**Paired layout.** Memory-augmented networks (Santoro et al. 2016) and SNAIL (Mishra et al. 2018)
feed an example and its label together. :func:`paired_query_sequences` packs each pair into *one*
token, ``x_i + y_i`` (the label in coordinates of its own: ``W = x width + n_way`` for classes,
``x width + out`` for regression, :func:`token_width` with ``paired=True``), and the query's token
carries zeros where a label would be::

    [x_1 | y_1], [x_2 | y_2], ..., [x_k | y_k], [x_query | 0]        k + 1 tokens

A query then finds its label in one attention step (match ``x``, copy ``y``), where the
interleaved layout needs two (an earlier layer must first copy ``x_i`` into ``y_i``'s token, the
"induction head" of Olsson et al. 2022); paired sequences are also half as long. What is lost is
Garg's learning curve for free: a paired token already holds its own label.

**Queries.** :func:`query_sequences` builds one sequence per query, support set first, batched as
``[tasks * n_query, 2k + 1, W]``: a query sees the whole support set and itself, never its own
label nor the other queries. :func:`prefix_sequence` drops the query and the last label,
``x_1, y_1, ..., x_k`` (``2k - 1`` tokens); a causal model's outputs at the ``x`` positions
(:func:`x_positions`) then predict every ``y_i`` from the ``i - 1`` examples before it, so one pass
gives the in-context learning curve for context lengths ``0 .. k - 1`` (Garg's trick).

**Baselines** for linear regression (Garg et al., section 3) predict along the same prefixes:
:func:`least_squares_predictions`, :func:`averaging_predictions`,
:func:`nearest_neighbour_predictions`; they return ``[tasks, n, out]`` like
:meth:`~mlhelpers.learners.incontext.InContextLearner.prefix_predictions`, and
:func:`normalised_squared_error` scores them on a common scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mlhelpers.episodes import TaskSampler
from mlhelpers.tasks import Task
from mlhelpers.validation import check_positive_int

_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


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


def check_labels(name: str, y: Tensor, n_way: int) -> Tensor:
    """``y`` ``[tasks, n]`` as int64 if it holds labels in ``0 .. n_way - 1``, else a ValueError naming ``name``."""
    if not isinstance(y, Tensor) or y.dim() != 2:
        raise ValueError(f"{name} must be a [tasks, n] tensor of class labels, got {_shape(y)}")
    if y.dtype not in _INTEGER_DTYPES:
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_way):
        raise ValueError(
            f"{name} labels must lie in 0..{n_way - 1} (n_way={n_way}), "
            f"got labels {int(y.min())}..{int(y.max())}"
        )
    return y.long()


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
    labels = check_labels(name, y, n_way)
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


def shuffle_support(task: Task, generator: torch.Generator | None = None) -> Task:
    """The same task with each task's support examples in a fresh random order (labels move along).

    :class:`~mlhelpers.episodes.EpisodicSampler` lays the support set out class by class, so in a
    1-shot episode the labels read ``0, 1, ..., n_way - 1`` in order. A model with positional
    embeddings could then learn "the third example has label 2" and ignore the label tokens;
    shuffling makes the labels the only way to know. Queries and ``info`` are unchanged.
    """
    tasks, k = task.support_x.shape[:2]
    order = torch.rand(tasks, k, generator=generator).argsort(dim=1).to(task.support_x.device)
    rows = torch.arange(tasks, device=order.device)[:, None]
    return Task(task.support_x[rows, order], task.support_y[rows, order], task.query_x, task.query_y, task.info)


class ShuffledSupport(TaskSampler):
    """Wraps a sampler so that every batch comes through :func:`shuffle_support`.

    ``ShuffledSupport(EpisodicSampler(omniglot, 5, 1, 5, "train"), seed=0)`` draws the same
    episodes as the inner sampler, each support set in a random order. Its state (for resuming
    :func:`~mlhelpers.training.meta_train`) holds both random states.
    """

    def __init__(self, sampler: TaskSampler, seed: int | None = None) -> None:
        if not isinstance(sampler, TaskSampler):
            raise TypeError(f"sampler must be a TaskSampler, got {type(sampler).__name__}")
        super().__init__(seed, sampler.device)
        self.sampler = sampler

    def _sample(self, num_tasks: int) -> Task:
        return shuffle_support(self.sampler.sample(num_tasks).to("cpu"), self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "inner": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.sampler.load_state_dict(state["inner"])


# --- Baselines on every prefix (linear regression, Garg et al. 2022, section 3) ---------------


def _check_examples(xs: Tensor, ys: Tensor) -> None:
    _check_vectors("xs", xs)
    _check_vectors("ys", ys)
    if ys.shape[:2] != xs.shape[:2]:
        raise ValueError(
            f"ys must be [tasks, n, out] with [tasks, n] = {tuple(xs.shape[:2])} like xs, got {tuple(ys.shape)}"
        )


def least_squares_predictions(xs: Tensor, ys: Tensor) -> Tensor:
    """Minimum-norm least squares on each prefix: ``[tasks, n, d]``, ``[tasks, n, out]`` -> ``[tasks, n, out]``.

    Row ``i`` predicts ``y_i`` as ``w_hat . x_i`` with ``w_hat = pinv(X_{<i}) Y_{<i}`` fitted to the
    ``i`` examples before it (row 0, no examples: 0). With ``i >= d`` noiseless examples in general
    position it recovers ``w`` exactly; the optimal predictor for ``w ~ N(0, I)`` without noise.
    Computed in float64, returned in the dtype of ``xs``.
    """
    _check_examples(xs, ys)
    x, y = xs.double(), ys.double()
    preds = [torch.zeros_like(y[:, 0])]
    for i in range(1, xs.shape[1]):
        w_hat = torch.linalg.pinv(x[:, :i]) @ y[:, :i]  # [T, d, out]
        preds.append(torch.einsum("td,tdo->to", x[:, i], w_hat))
    return torch.stack(preds, dim=1).to(xs.dtype)


def ridge_predictions(xs: Tensor, ys: Tensor, alpha: float) -> Tensor:
    """Ridge regression on each prefix: ``w_hat = (X^T X + alpha I)^{-1} X^T Y`` from the examples before row ``i``.

    ``[tasks, n, d]``, ``[tasks, n, out]`` -> ``[tasks, n, out]``; row 0 is 0. With labels
    ``y = w . x + noise``, ``w ~ N(0, I)`` and noise variance ``sigma^2``, ``alpha = sigma^2``
    gives the posterior mean of ``w``: the best possible predictor for noisy linear tasks. As
    ``alpha -> 0`` it tends to :func:`least_squares_predictions`. Computed in float64.
    """
    _check_examples(xs, ys)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    x, y = xs.double(), ys.double()
    eye = alpha * torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    preds = [torch.zeros_like(y[:, 0])]
    for i in range(1, xs.shape[1]):
        xi = x[:, :i]
        w_hat = torch.linalg.solve(xi.transpose(1, 2) @ xi + eye, xi.transpose(1, 2) @ y[:, :i])  # [T, d, out]
        preds.append(torch.einsum("td,tdo->to", x[:, i], w_hat))
    return torch.stack(preds, dim=1).to(xs.dtype)


def averaging_predictions(xs: Tensor, ys: Tensor) -> Tensor:
    """Garg's averaging estimator on each prefix: ``w_hat = (1/i) sum_{j<i} y_j x_j``, prediction ``w_hat . x_i``.

    ``[tasks, n, d]``, ``[tasks, n, out]`` -> ``[tasks, n, out]``; row 0 is 0. Unbiased for
    ``x, w ~ N(0, I)`` but never exact: its expected normalised error after ``i >= 1`` examples is
    ``(d + 1) / i``, where least squares reaches 0 at ``i = d``.
    """
    _check_examples(xs, ys)
    products = torch.einsum("tnd,tno->tndo", xs, ys)  # y_j x_j
    before = torch.cumsum(products, dim=1) - products  # sums over j < i
    counts = torch.arange(xs.shape[1], dtype=xs.dtype, device=xs.device).clamp(min=1)
    w_hat = before / counts[None, :, None, None]
    return torch.einsum("tnd,tndo->tno", xs, w_hat)


def nearest_neighbour_predictions(xs: Tensor, ys: Tensor, k: int = 3) -> Tensor:
    """Mean label of the ``k`` nearest (Euclidean) earlier examples: ``[tasks, n, out]``.

    Row ``i`` averages over the ``min(k, i)`` nearest of ``x_1 .. x_{i-1}``; row 0 is 0.
    """
    _check_examples(xs, ys)
    check_positive_int("k", k)
    n = xs.shape[1]
    distances = torch.cdist(xs, xs)  # [T, n, n]
    later = torch.ones(n, n, dtype=torch.bool, device=xs.device).triu()  # j >= i: not yet seen
    distances = distances.masked_fill(later, float("inf"))
    kk = min(k, max(n - 1, 1))
    nearest = distances.topk(kk, dim=-1, largest=False)  # [T, n, kk]
    valid = torch.isfinite(nearest.values).to(ys.dtype)
    labels = torch.gather(
        ys[:, None].expand(-1, n, -1, -1), 2, nearest.indices[..., None].expand(-1, -1, -1, ys.shape[-1])
    )  # [T, n, kk, out]
    total = (labels * valid[..., None]).sum(dim=2)
    return total / valid.sum(dim=2, keepdim=True).clamp(min=1)


def normalised_squared_error(pred: Tensor, target: Tensor, dim: int) -> Tensor:
    """Squared error summed over the last axis, divided by ``dim``: ``[..., out]`` -> ``[...]``.

    With ``dim`` the input dimension of :class:`~mlhelpers.data.regression.LinearTasks`
    (``x, w ~ N(0, I_dim)``, so ``E[y^2] = dim``), predicting 0 scores 1 on average: Garg et
    al.'s scale for comparing learners across dimensions.
    """
    check_positive_int("dim", dim)
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but target has {tuple(target.shape)}")
    return (pred - target).pow(2).sum(dim=-1) / dim
