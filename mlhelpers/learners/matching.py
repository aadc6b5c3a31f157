"""Matching Networks (Vinyals et al. 2016): attention over the support set. Chapter 4.

``p(y = n | x) = sum_i softmax_i(s * cos(f(x), g(x_i))) * [y_i = n]``. Also home of
:func:`support_one_hot`, the support-label check the metric learners of Chapter 4 share.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlhelpers.learners.base import MetaLearner
from mlhelpers.validation import check_bool, check_labels, check_module, check_positive


def support_one_hot(support_y: Tensor, n_way: int | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[tasks, n_support]`` integer labels -> ``[tasks, n_support, n_way]`` one-hot of ``dtype``.

    ``n_way`` None reads it from the labels (``max + 1``). The labels are checked by
    :func:`~mlhelpers.validation.check_labels` (a TypeError for a non-integer dtype, a ValueError
    for a label outside ``0 .. n_way - 1``); a ValueError also names a class without a support
    example in some task.
    """
    check_labels("support_y", support_y)
    if support_y.dim() != 2:
        raise ValueError(f"support_y must be a [tasks, n_support] tensor of labels, got shape {tuple(support_y.shape)}")
    if n_way is None:
        n_way = int(support_y.max()) + 1
    check_labels("support_y", support_y, n_way)
    one_hot = F.one_hot(support_y.long(), n_way).to(dtype)  # [T, S, N]
    counts = one_hot.sum(dim=1)  # [T, N]
    if (counts == 0).any():
        task, cls = (int(i) for i in torch.nonzero(counts == 0)[0])
        raise ValueError(
            f"support_y: every class 0..{n_way - 1} needs at least one support example, but class {cls} has "
            f"none in task {task}; per-class counts were {counts.long().tolist()}"
        )
    return one_hot


class MatchingState(NamedTuple):
    """What :meth:`MatchingNet.adapt` returns."""

    keys: Tensor
    """``[tasks, n_support, D]`` unit-norm support embeddings."""
    one_hot: Tensor
    """``[tasks, n_support, n_way]`` one-hot support labels."""


class MatchingNet(MetaLearner):
    """Matching Networks with a shared embedding ``f = g`` and no full context embeddings.

    ``predict`` returns **log-probabilities** ``log p(y | x)`` ``[tasks, n_query, n_way]`` of the
    attention-weighted label distribution above (computed as a log-sum-exp over each class's
    support scores, so it never underflows). Each row sums to one after ``exp``, so the shared
    cross-entropy :func:`~mlhelpers.learners.base.task_loss` (``log_softmax`` of log-probabilities
    is the identity) is exactly the negative log-likelihood the paper minimises.

    Full context embeddings (the paper's LSTMs) are not implemented: they matter little on Omniglot.

    Args:
        backbone: any module mapping ``[batch, *x_shape]`` to features (flattened to ``[batch, D]``).
        scale: the temperature ``s`` multiplying the cosine, which lies in ``[-1, 1]``. The paper uses
            the raw cosine (``scale=1, learn_scale=False``); with five support examples its attention
            can then put at most ~0.8 on the right class, so the default starts at 10.
        learn_scale: learn ``s`` (as ``log s``, so it stays positive) with the backbone.
    """

    needs_grad_to_adapt = False

    def __init__(self, backbone: nn.Module, *, scale: float = 10.0, learn_scale: bool = True) -> None:
        super().__init__()
        log_scale = torch.tensor(math.log(check_positive("scale", scale)))
        self.backbone = check_module("backbone", backbone)
        if check_bool("learn_scale", learn_scale):
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> Tensor:
        """The current temperature ``s`` (a scalar tensor)."""
        return self.log_scale.exp()

    def embed(self, x: Tensor) -> Tensor:
        """``[tasks, n, *x_shape]`` -> unit-norm ``[tasks, n, D]``."""
        features = self.backbone(x.flatten(0, 1)).flatten(1).unflatten(0, x.shape[:2])
        return F.normalize(features, dim=-1)

    def _adapt(self, support_x: Tensor, support_y: Tensor) -> MatchingState:
        one_hot = support_one_hot(support_y)
        return MatchingState(self.embed(support_x), one_hot.to(support_x.device))

    def attention_scores(self, adapted: MatchingState, query_x: Tensor) -> Tensor:
        """Scaled cosine similarities ``[tasks, n_query, n_support]`` (before the softmax)."""
        return self.scale * torch.einsum("tqd,tsd->tqs", self.embed(query_x), adapted.keys)

    def _predict(self, adapted: MatchingState, query_x: Tensor) -> Tensor:
        scores = self.attention_scores(adapted, query_x)  # [T, Q, S]
        # log p_n = logsumexp_{i: y_i = n} s_i - logsumexp_i s_i; log(0) = -inf masks other classes.
        mask = adapted.one_hot.log()[:, None]  # [T, 1, S, N]
        per_class = torch.logsumexp(scores[..., None] + mask, dim=2)  # [T, Q, N]
        return per_class - torch.logsumexp(scores, dim=2, keepdim=True)
