"""Baselines without meta-training: nearest centroid in a pre-trained feature space. Chapter 4.

A backbone trained as an ordinary classifier is a strong few-shot baseline (Chen et al. 2019);
SimpleShot (Wang et al. 2019) classifies by the nearest class mean of normalised features, which
matches Chen et al.'s fine-tuned linear head without gradient steps (so that is not implemented)::

    backbone = pretrain_classifier(conv4(), omniglot, "train", steps=2000)  # mlhelpers.pretraining
    learner = NearestCentroid(backbone, "cl2n", base_mean=feature_mean(backbone, omniglot, "train"))
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlhelpers.config import module_device
from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.learners.base import MetaLearner
from mlhelpers.learners.protonet import class_prototypes, negative_squared_distances
from mlhelpers.samplers.episodic import ROTATIONS
from mlhelpers.samplers.examples import split_examples
from mlhelpers.validation import check_bool, check_module, check_positive_int

Normalise = Literal["l2", "cl2n"] | None


@torch.no_grad()
def _features(backbone: nn.Module, x: Tensor) -> Tensor:
    return backbone(x).flatten(1)


def feature_mean(
    backbone: nn.Module,
    dataset: LabelledDataset,
    split: str | None = "train",
    *,
    rotations: bool = False,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Tensor:
    """Mean feature ``[D]`` of all examples of ``split``: the base-class mean CL2N centres with.

    The backbone runs in eval mode (its previous mode is restored) without gradients, on ``device``
    (None: the backbone's device); the result lives there. ``rotations`` averages over the four
    quarter turns of every example too (matching a backbone pre-trained with rotations).
    """
    check_positive_int("batch_size", batch_size)
    check_bool("rotations", rotations)
    index, _ = split_examples(dataset, split)
    device = torch.device(device) if device is not None else module_device(backbone, "cpu")
    was_training = backbone.training
    backbone.eval()
    total: Tensor | None = None
    count = 0
    try:
        for start in range(0, len(index), batch_size):
            x = dataset.images[index[start:start + batch_size]].to(device)
            for k in range(ROTATIONS if rotations else 1):
                f = _features(backbone, torch.rot90(x, k, dims=(-2, -1)) if k else x).double()
                total = f.sum(0) if total is None else total + f.sum(0)
                count += len(f)
    finally:
        backbone.train(was_training)
    assert total is not None
    return (total / count).float()


class NearestCentroid(MetaLearner):
    """SimpleShot: nearest class mean of (optionally normalised) features of a fixed backbone.

    ``normalise`` transforms the features ``f(x)`` (flattened to ``[D]``): None leaves them ("UN"),
    ``"l2"`` gives ``f / |f|`` ("L2N"), ``"cl2n"`` ``(f - m) / |f - m|`` with ``m = base_mean``
    ``[D]``, the mean feature of the meta-training classes from :func:`feature_mean` ("CL2N",
    SimpleShot's best; a buffer, so ``.to(device)`` moves it). ``adapt`` returns the class means
    ``[tasks, n_way, D]`` (not re-normalised); ``predict`` the negative squared distances to them,
    ``[tasks, n_query, n_way]``. ``backbone`` is usually the output of :func:`pretrain_classifier`.
    """

    needs_grad_to_adapt = False

    def __init__(self, backbone: nn.Module, normalise: Normalise = "l2", base_mean: Tensor | None = None) -> None:
        super().__init__()
        if normalise not in ("l2", "cl2n", None):
            raise ValueError(f"normalise must be 'l2', 'cl2n' or None, got {normalise!r}")
        if normalise == "cl2n":
            if not isinstance(base_mean, Tensor) or base_mean.dim() != 1:
                got = tuple(base_mean.shape) if isinstance(base_mean, Tensor) else type(base_mean).__name__
                raise ValueError(
                    f"normalise='cl2n' needs base_mean, a [D] tensor (feature_mean(backbone, dataset, "
                    f"'train')), got {got}"
                )
        elif base_mean is not None:
            raise ValueError(f"base_mean is only used with normalise='cl2n', got normalise={normalise!r}")
        self.backbone = check_module("backbone", backbone)
        self.normalise = normalise
        self.register_buffer("base_mean", base_mean.detach().clone() if base_mean is not None else None)

    def features(self, x: Tensor) -> Tensor:
        """``[tasks, n, *x_shape]`` -> transformed features ``[tasks, n, D]``."""
        f = self.backbone(x.flatten(0, 1)).flatten(1).unflatten(0, x.shape[:2])
        if self.normalise == "cl2n":
            if self.base_mean.shape[0] != f.shape[-1]:
                raise ValueError(
                    f"base_mean has {self.base_mean.shape[0]} entries but the backbone gives "
                    f"{f.shape[-1]} features"
                )
            f = f - self.base_mean.to(f.dtype)
        if self.normalise is not None:
            f = F.normalize(f, dim=-1)
        return f

    def _adapt(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        return class_prototypes(self.features(support_x), support_y, int(support_y.max()) + 1)

    def _predict(self, adapted: Tensor, query_x: Tensor) -> Tensor:
        return negative_squared_distances(self.features(query_x), adapted)
