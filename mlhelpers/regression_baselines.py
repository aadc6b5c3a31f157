"""Classical predictors for linear regression on every prefix of a task (Garg et al. 2022, section 3). Chapter 5.

Row ``i`` predicts ``y_i`` from the ``i`` examples before it (row 0: 0), the prefixes of
:meth:`~mlhelpers.learners.incontext.InContextLearner.prefix_predictions`: ``xs [tasks, n, d]``,
``ys [tasks, n, out]`` -> ``[tasks, n, out]``. :func:`normalised_squared_error` scores any of them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mlhelpers.validation import check_positive_int, check_tensor


def _check_examples(xs: Tensor, ys: Tensor) -> None:
    check_tensor("xs", xs, dim=3)
    check_tensor("ys", ys, dim=3)
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

    With ``dim`` the input dimension of :class:`~mlhelpers.samplers.regression.LinearTasks`
    (``x, w ~ N(0, I_dim)``, so ``E[y^2] = dim``), predicting 0 scores 1 on average: Garg et
    al.'s scale for comparing learners across dimensions.
    """
    check_positive_int("dim", dim)
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but target has {tuple(target.shape)}")
    return (pred - target).pow(2).sum(dim=-1) / dim
