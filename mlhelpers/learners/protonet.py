"""Prototypical Networks (Snell et al. 2017): classify by distance to class means. Chapter 4."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlhelpers.learners.base import MetaLearner


def class_prototypes(embeddings: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Mean embedding of each class: ``[tasks, n_support, D]`` -> ``[tasks, n_way, D]``."""
    one_hot = torch.nn.functional.one_hot(labels, n_way).to(embeddings.dtype)  # [T, S, N]
    counts = one_hot.sum(dim=1)  # [T, N]
    if (counts == 0).any():
        raise ValueError(
            f"every class 0..{n_way - 1} needs at least one support example; "
            f"per-class counts were {counts.tolist()}"
        )
    return torch.einsum("tsn,tsd->tnd", one_hot, embeddings) / counts[..., None]


class ProtoNet(MetaLearner):
    """Logits are negative squared Euclidean distances from query embeddings to class prototypes.

    Args:
        backbone: any module mapping ``[batch, *x_shape]`` to ``[batch, D]`` features.

    ``adapt`` returns the prototypes ``[tasks, n_way, D]``; ``predict`` returns logits
    ``[tasks, n_query, n_way]``. The number of ways is read from the support labels (0..N-1).
    """

    needs_grad_to_adapt = False

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def embed(self, x: Tensor) -> Tensor:
        """``[tasks, n, *x_shape]`` -> ``[tasks, n, D]``, all tasks through the backbone at once."""
        return self.backbone(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        n_way = int(support_y.max()) + 1
        return class_prototypes(self.embed(support_x), support_y, n_way)

    def predict(self, adapted: Tensor, query_x: Tensor) -> Tensor:
        return -torch.cdist(self.embed(query_x), adapted).pow(2)
