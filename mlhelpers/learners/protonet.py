"""Prototypical Networks (Snell et al. 2017): classify by distance to class means. Chapter 4.

With ``transductive_steps > 0`` the prototypes are refined with the unlabelled query embeddings of
the task by soft k-means (Ren et al. 2018, :func:`refine_prototypes`): a *transductive* learner,
whose prediction for one query depends on the other queries of its task. Chapter 4 measures it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mlhelpers.learners.base import MetaLearner
from mlhelpers.learners.matching import support_one_hot
from mlhelpers.tasks import Task
from mlhelpers.validation import check_module, check_steps


def class_counts(labels: Tensor, n_way: int) -> Tensor:
    """Examples per class: ``[tasks, n]`` labels -> ``[tasks, n_way]`` float counts."""
    return torch.nn.functional.one_hot(labels.long(), n_way).sum(1).float()


def class_sums(embeddings: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Summed embedding of each class: ``[..., tasks, n_support, D]`` -> ``[..., tasks, n_way, D]``.

    Leading dims (e.g. the members of an ensemble) share the labels ``[tasks, n_support]``. A
    TypeError names non-integer labels; a ValueError gives the per-class counts if a class
    0..n_way-1 has no example.
    """
    one_hot = support_one_hot(labels, n_way, embeddings.dtype)  # [T, S, N]
    return torch.einsum("tsn,...tsd->...tnd", one_hot, embeddings)


def class_prototypes(embeddings: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Mean embedding of each class: ``[..., tasks, n_support, D]`` -> ``[..., tasks, n_way, D]``
    (:func:`class_sums` over :func:`class_counts`)."""
    sums = class_sums(embeddings, labels, n_way)  # checks the labels
    return sums / class_counts(labels, n_way).to(embeddings.dtype)[..., None]


def refine_prototypes(
    prototypes: Tensor,
    counts: Tensor,
    queries: Tensor,
    probabilities: Callable[[Tensor, Tensor], Tensor],
    steps: int,
) -> Tensor:
    """Soft k-means on the query set (Ren et al. 2018): ``steps`` refinements of the prototypes.

    Each step moves prototype ``n`` to the weighted mean of its ``counts[t, n]`` support embeddings
    and the queries, ``p_n <- (counts_n * p_n + sum_q w_qn z_q) / (counts_n + sum_q w_qn)``, with
    ``w = probabilities(prototypes, queries)`` ``[tasks, n_query, n_way]``. ``prototypes``
    ``[..., tasks, n_way, D]`` and ``queries`` ``[..., tasks, n_query, D]`` (leading dims such as
    ensemble members broadcast); ``steps = 0`` returns ``prototypes``.
    """
    check_steps("steps", steps)
    for _ in range(steps):
        w = probabilities(prototypes, queries)  # [tasks, n_query, n_way]
        weighted = torch.einsum("tqn,...tqd->...tnd", w.to(queries.dtype), queries)
        prototypes = (counts[..., None] * prototypes + weighted) / (counts + w.sum(1))[..., None]
    return prototypes


def negative_squared_distances(queries: Tensor, prototypes: Tensor) -> Tensor:
    """ProtoNet logits: ``[..., n_query, D]`` and ``[..., n_way, D]`` -> ``[..., n_query, n_way]``."""
    return -torch.cdist(queries, prototypes).pow(2)


class PrototypeLearner(MetaLearner):
    """Classify by class prototypes, the mean support embeddings; ProtoNet and EnsembleProtoNet share it.

    Subclasses give :meth:`embed`; :meth:`logits` and :meth:`probabilities` default to negative
    squared distances and their softmax. ``adapt`` returns the prototypes ``[..., tasks, n_way, D]``
    and ``predict`` the logits ``[tasks, n_query, n_way]``; both are inductive. :meth:`_solve` (what
    ``forward`` calls) refines the prototypes with the query embeddings first when
    ``self.transductive_steps > 0`` (:func:`refine_prototypes`). The number of ways is read from the
    support labels (0..N-1).
    """

    needs_grad_to_adapt = False
    transductive_steps: int

    @abstractmethod
    def embed(self, x: Tensor) -> Tensor:
        """``[tasks, n, *x_shape]`` -> ``[..., tasks, n, D]``."""

    def logits(self, prototypes: Tensor, queries: Tensor) -> Tensor:
        """``[tasks, n_way, D]`` prototypes, ``[tasks, n_query, D]`` queries -> ``[tasks, n_query, n_way]``."""
        return negative_squared_distances(queries, prototypes)

    def probabilities(self, prototypes: Tensor, queries: Tensor) -> Tensor:
        """Class probabilities ``[tasks, n_query, n_way]``: the softmax of :meth:`logits`."""
        return self.logits(prototypes, queries).softmax(-1)

    def _adapt(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        return class_prototypes(self.embed(support_x), support_y, int(support_y.max()) + 1)

    def _predict(self, adapted: Tensor, query_x: Tensor) -> Tensor:
        return self.logits(adapted, self.embed(query_x))

    def _solve(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Logits ``[tasks, n_query, n_way]`` of the queries: inductive, or refined on the queries."""
        prototypes = self._adapt(support_x, support_y)
        if not self.transductive_steps:
            return self._predict(prototypes, query_x)
        queries = self.embed(query_x)
        counts = class_counts(support_y, prototypes.shape[-2])
        prototypes = refine_prototypes(prototypes, counts, queries, self.probabilities, self.transductive_steps)
        return self.logits(prototypes, queries)

    def _forward(self, task: Task) -> Tensor:
        return self._solve(task.support_x, task.support_y, task.query_x)


class ProtoNet(PrototypeLearner):
    """Logits are negative squared Euclidean distances from query embeddings to class prototypes.

    ``backbone`` maps ``[batch, *x_shape]`` to ``[batch, D]`` features; ``transductive_steps``
    (default 0: the inductive ProtoNet of Snell et al.) refines the prototypes in ``forward`` as
    described in :class:`PrototypeLearner`.
    """

    def __init__(self, backbone: nn.Module, transductive_steps: int = 0) -> None:
        super().__init__()
        self.backbone = check_module("backbone", backbone)
        self.transductive_steps = check_steps("transductive_steps", transductive_steps)

    def embed(self, x: Tensor) -> Tensor:
        """``[tasks, n, *x_shape]`` -> ``[tasks, n, D]``, all tasks through the backbone at once."""
        return self.backbone(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def extra_repr(self) -> str:
        return f"transductive_steps={self.transductive_steps}" if self.transductive_steps else ""
