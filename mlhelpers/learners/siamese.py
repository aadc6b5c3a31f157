"""Siamese networks (Koch, Zemel & Salakhutdinov 2015): learn to verify pairs, then classify by the
most similar support image. Chapter 4 derives them.

Twin copies of one embedding ``f`` (shared weights) see two images; a weighted L1 distance and a
sigmoid give the probability that they show the same class::

    p(same | a, b) = sigmoid(w . |f(a) - f(b)| + b)

Training is *verification*: binary cross-entropy on same/different pairs. One-shot classification
then scores a query against every support image and takes, for each class, its best score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlhelpers.config import module_device
from mlhelpers.data.omniglot import IMAGE_SHAPE
from mlhelpers.learners.base import MetaLearner
from mlhelpers.learners.matching import support_one_hot
from mlhelpers.tasks import Task
from mlhelpers.validation import check_finite, check_floating, check_labels, check_module, check_shape, check_tensor


class SiameseState(NamedTuple):
    """What :meth:`SiameseNet.adapt` returns: the support set, embedded."""

    support: Tensor
    """``[tasks, n_support, D]`` support embeddings."""
    one_hot: Tensor
    """``[tasks, n_support, n_way]`` float one-hot support labels."""


def balanced_bce(logits: Tensor, same: Tensor) -> Tensor:
    """Binary cross-entropy of pair logits ``[...]`` against ``same`` ``[...]`` (bool), with the same
    pairs and the different pairs weighted equally (half the loss each, whatever their numbers)."""
    target = same.to(logits.dtype)
    losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    parts = [losses[mask].mean() for mask in (same, ~same) if bool(mask.any())]
    return torch.stack(parts).mean()


class SiameseNet(MetaLearner):
    """A twin embedding with a learned weighted-L1 head, trained on verification pairs.

    Args:
        backbone: maps ``[batch, *x_shape]`` to ``[batch, D]`` (e.g. :func:`~mlhelpers.models.conv4`).
        input_shape: the shape of one example, to find ``D`` (default Omniglot's ``(1, 28, 28)``).

    ``predict`` returns ``[tasks, n_query, n_way]`` scores: for each class, the largest "same" logit
    between the query and that class's support images (1-shot: its one image), so ``argmax`` is
    the class of the most similar support image. :meth:`meta_loss` is **not** the classification
    loss: it is the verification loss :func:`balanced_bce` on every (query, support) pair of the
    task, "same" when the labels agree (:meth:`verification_logits`). Train it on
    :class:`~mlhelpers.samplers.pairs.PairSampler` tasks (balanced pairs), with Koch et al.'s
    distortions (:data:`~mlhelpers.data.augment.KOCH_DISTORTION` in an
    :class:`~mlhelpers.samplers.wrappers.AugmentedSampler`).
    """

    needs_grad_to_adapt = False

    def __init__(self, backbone: nn.Module, *, input_shape: Sequence[int] = IMAGE_SHAPE) -> None:
        super().__init__()
        self.backbone = check_module("backbone", backbone)
        input_shape = check_shape("input_shape", input_shape)
        device = module_device(backbone, "cpu")
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad():
                out = backbone(torch.zeros(1, *input_shape, device=device))
        finally:
            backbone.train(was_training)
        if out.dim() != 2:
            raise ValueError(f"backbone must map [batch, *input_shape] to [batch, D] features; on input_shape="
                             f"{tuple(input_shape)} it returned shape {tuple(out.shape)}")
        self.head = nn.Linear(out.shape[1], 1).to(device)
        """The weights ``alpha_j`` of the L1 distance and a bias: ``[D] -> [1]`` logit of "same"."""

    def embed(self, x: Tensor) -> Tensor:
        """``[tasks, n, *x_shape]`` -> ``[tasks, n, D]``, all tasks through the backbone at once."""
        return self.backbone(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def pair_logits(self, a: Tensor, b: Tensor) -> Tensor:
        """The "same" logit of embeddings ``a`` and ``b`` (``[..., D]``, broadcast): ``[...]``. Symmetric."""
        return self.head((a - b).abs()).squeeze(-1)

    def score_pairs(self, x1: Tensor, x2: Tensor) -> Tensor:
        """"Same" logits ``[n]`` of image pairs ``x1[i]``, ``x2[i]`` (each ``[n, *x_shape]``)."""
        check_tensor("x1", x1, min_dim=2)
        check_tensor("x2", x2, min_dim=2)
        if x1.shape != x2.shape:
            raise ValueError(f"x1 and x2 must be pairs of one shape [n, *x_shape], got x1 {tuple(x1.shape)} "
                             f"and x2 {tuple(x2.shape)}")
        for name, x in (("x1", x1), ("x2", x2)):
            self._check_device(name, x)
            check_floating(name, x)
            check_finite(name, x)
        self._check_dtype(x1=x1, x2=x2)
        return self.pair_logits(self.backbone(x1), self.backbone(x2))

    def _adapt(self, support_x: Tensor, support_y: Tensor) -> SiameseState:
        one_hot = support_one_hot(support_y)  # checks the labels and that every class has an example
        support = self.embed(support_x)
        return SiameseState(support, one_hot.to(support.dtype))

    def _predict(self, adapted: SiameseState, query_x: Tensor) -> Tensor:
        if not isinstance(adapted, SiameseState):
            raise TypeError(f"adapted must be the SiameseState that SiameseNet.adapt returned, got "
                            f"{type(adapted).__name__}")
        queries = self.embed(query_x)  # [T, Q, D]
        logits = self.pair_logits(queries[:, :, None], adapted.support[:, None])  # [T, Q, S]
        member = adapted.one_hot[:, None].bool()  # [T, 1, S, N]
        scores = logits[..., None].masked_fill(~member, float("-inf"))  # [T, Q, S, N]
        return scores.amax(dim=2)

    def verification_logits(self, task: Task) -> tuple[Tensor, Tensor]:
        """"Same" logits ``[tasks, n_query, n_support]`` of every (query, support) pair, and whether
        the pair is the same class (``query_y == support_y``, bool, same shape). Every class
        ``0 .. n_way - 1`` needs a support example and every query label must be one of them (a
        ValueError names ``support_y`` or ``query_y``), as for classification."""
        n_way = support_one_hot(task.support_y).shape[-1]
        check_labels("query_y", task.query_y, n_way)
        support, queries = self.embed(task.support_x), self.embed(task.query_x)
        logits = self.pair_logits(queries[:, :, None], support[:, None])
        same = task.query_y[:, :, None] == task.support_y[:, None]
        return logits, same

    def _meta_loss(self, task: Task) -> Tensor:
        """The verification loss: :func:`balanced_bce` of :meth:`verification_logits`."""
        return balanced_bce(*self.verification_logits(task))
