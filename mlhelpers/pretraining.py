"""Pre-training a backbone as an ordinary classifier over all meta-training classes. Chapter 4.

Chen et al. (2019, "A closer look at few-shot classification") showed that such a backbone is a
strong few-shot baseline; :class:`~mlhelpers.learners.baseline.NearestCentroid` classifies with it.
The training runs through :func:`~mlhelpers.training.meta_train`, the book's one training loop,
with a :class:`Classifier` whose ``meta_loss`` is the cross-entropy of a batch of examples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlhelpers.config import module_device
from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.samplers.episodic import ROTATIONS
from mlhelpers.samplers.examples import ExampleSampler, LabelledBatch, split_examples
from mlhelpers.seeding import make_generator
from mlhelpers.training import meta_train
from mlhelpers.validation import check_bool, check_positive, check_positive_int


@torch.no_grad()
def _features(backbone: nn.Module, x: Tensor) -> Tensor:
    return backbone(x).flatten(1)


class Classifier(nn.Module):
    """``backbone`` plus a linear ``head``, trained by :func:`~mlhelpers.training.meta_train` on
    :class:`LabelledBatch` batches: :meth:`meta_loss` is the cross-entropy of the head's logits."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def meta_loss(self, batch: LabelledBatch) -> Tensor:
        return F.cross_entropy(self.head(self.backbone(batch.x).flatten(1)), batch.y)


def pretrain_classifier(
    backbone: nn.Module,
    dataset: LabelledDataset,
    split: str | None = "train",
    *,
    rotations: bool = True,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    distortion: dict[str, float] | None = None,
) -> nn.Module:
    """Train ``backbone`` plus a linear head as an ordinary classifier over all classes of ``split``.

    Each step draws ``batch_size`` random examples of the split and minimises the cross-entropy with
    Adam (``lr``) through :func:`~mlhelpers.training.meta_train`. With ``rotations`` every (class,
    quarter turns) pair is its own class, as in :class:`~mlhelpers.samplers.episodic.EpisodicSampler`
    ``(rotations=True)``. ``backbone`` maps ``[batch, C, H, W]`` to features (flattened to
    ``[batch, D]``); ``split`` None means all classes; ``seed`` seeds the example draws and the head;
    ``device`` None trains on the backbone's device; ``distortion`` (the keyword arguments of
    :func:`~mlhelpers.data.augment.random_distortion`) distorts every example, as the meta-training
    of the shipped learner does its episodes. Returns ``backbone``, trained in place, in its
    previous train/eval mode; the head is thrown away.
    """
    check_positive_int("steps", steps)
    check_bool("rotations", rotations)
    check_positive_int("batch_size", batch_size)
    lr = check_positive("lr", lr)
    generator = make_generator(seed)
    index, classes = split_examples(dataset, split)
    n_rot = ROTATIONS if rotations else 1
    num_classes = int(classes.max()) + 1 if len(classes) else 0
    if num_classes * n_rot < 2:
        raise ValueError(f"split {split!r} has {num_classes * n_rot} class(es); a classifier needs at least 2")
    device = torch.device(device) if device is not None else module_device(backbone, "cpu")
    backbone.to(device)

    was_training = backbone.training
    backbone.eval()
    feature_dim = _features(backbone, dataset.images[:1].to(device)).shape[1]
    head = _seeded_linear(feature_dim, num_classes * n_rot, seed=int(torch.randint(2**62, (1,), generator=generator)))
    classifier = Classifier(backbone, head.to(device))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    sampler = ExampleSampler(dataset.images, index, classes, rotations, generator, distortion)
    try:
        meta_train(classifier, sampler, steps=steps, meta_batch_size=batch_size, optimizer=optimizer,
                   progress=progress)
    finally:
        backbone.train(was_training)
    return backbone


def _seeded_linear(in_features: int, out_features: int, seed: int) -> nn.Linear:
    """``nn.Linear`` with its default initialisation (uniform in +-1/sqrt(in_features)) drawn from ``seed``."""
    init = torch.Generator().manual_seed(seed)
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        bound = 1 / math.sqrt(in_features)
        layer.weight.copy_(torch.empty_like(layer.weight).uniform_(-bound, bound, generator=init))
        layer.bias.copy_(torch.empty_like(layer.bias).uniform_(-bound, bound, generator=init))
    return layer
