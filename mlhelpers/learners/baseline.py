"""Baselines without meta-training: pre-train a classifier, then classify by nearest centroid. Chapter 4.

Chen et al. (2019, "A closer look at few-shot classification") showed that a backbone trained as an
ordinary classifier over all meta-training classes is a strong few-shot baseline; SimpleShot (Wang
et al. 2019) classifies with it by the nearest class mean of normalised features::

    backbone = pretrain_classifier(conv4(), omniglot, "train", steps=2000)
    learner = NearestCentroid(backbone, "cl2n", base_mean=feature_mean(backbone, omniglot, "train"))
    evaluate(learner, test_sampler)

Chen et al.'s own test-time step, fine-tuning a fresh linear head on each support set, is not
implemented here: SimpleShot's nearest centroid matches or beats it and needs no gradient steps.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlhelpers.config import module_device
from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.learners.base import MetaLearner
from mlhelpers.learners.protonet import class_prototypes, negative_squared_distances
from mlhelpers.seeding import make_generator
from mlhelpers.validation import check_positive, check_positive_int

Normalise = Literal["l2", "cl2n"] | None


QUARTER_TURNS = 4
"""With ``rotations``, every class is seen at 0, 1, 2 and 3 quarter turns (each its own class in
:func:`pretrain_classifier`), as with :class:`~mlhelpers.episodes.EpisodicSampler` ``(rotations=True)``."""


def _split_examples(dataset: LabelledDataset, split: str | None) -> tuple[Tensor, Tensor]:
    """Dataset indices ``[n]`` of the examples of ``split`` and their class index within it ``[n]``."""
    if not isinstance(dataset, LabelledDataset):
        raise TypeError(f"dataset must be a LabelledDataset, got {type(dataset).__name__}")
    classes = dataset.classes_of(split)  # a ValueError names the known splits
    position = torch.full((dataset.num_classes,), -1, dtype=torch.int64)
    position[classes] = torch.arange(len(classes))
    index = torch.nonzero(position[dataset.labels] >= 0).flatten()
    if len(index) == 0:
        raise ValueError(f"split {split!r} of the dataset holds no examples")
    return index, position[dataset.labels[index]]


@torch.no_grad()
def _features(backbone: nn.Module, x: Tensor) -> Tensor:
    return backbone(x).flatten(1)


class LabelledBatch(NamedTuple):
    """A batch of examples for an ordinary classifier: what :class:`ExampleSampler` draws."""

    x: Tensor
    """``[batch, C, H, W]`` inputs."""
    y: Tensor
    """``[batch]`` int64 class indices."""

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: torch.device | str) -> LabelledBatch:
        return LabelledBatch(self.x.to(device), self.y.to(device))


class ExampleSampler:
    """Random examples of a split (with replacement), each turned by a random number of quarter turns
    with ``rotations`` (class ``c`` at ``k`` turns is class ``QUARTER_TURNS * c + k``).

    Args:
        images: ``[N, C, H, W]`` all images of the dataset.
        index, classes: ``[n]`` the split's dataset indices and their class index within the split.
        rotations: see above.
        generator: draws the examples and turns; :meth:`state_dict` saves it.
    """

    def __init__(self, images: Tensor, index: Tensor, classes: Tensor, rotations: bool,
                 generator: torch.Generator) -> None:
        self.images, self.index, self.classes = images, index, classes
        self.rotations = rotations
        self.generator = generator

    def sample(self, n: int) -> LabelledBatch:
        """``n`` examples as a :class:`LabelledBatch` on the CPU."""
        pick = torch.randint(len(self.index), (n,), generator=self.generator)
        x = self.images[self.index[pick]]
        if not self.rotations:
            return LabelledBatch(x, self.classes[pick])
        turns = torch.randint(QUARTER_TURNS, (n,), generator=self.generator)
        for k in range(1, QUARTER_TURNS):
            mask = turns == k
            if mask.any():
                x[mask] = torch.rot90(x[mask], k, dims=(-2, -1))
        return LabelledBatch(x, self.classes[pick] * QUARTER_TURNS + turns)

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


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
) -> nn.Module:
    """Train ``backbone`` plus a linear head as an ordinary classifier over all classes of ``split``.

    Each step draws ``batch_size`` random examples of the split (with replacement) and minimises
    the cross-entropy with Adam (``lr``), through :func:`~mlhelpers.training.meta_train`. With
    ``rotations`` each example is also turned by a random multiple of 90 degrees and every (class,
    quarter turns) pair is its own class, the convention of :class:`~mlhelpers.episodes.EpisodicSampler`
    ``(rotations=True)``: 130 Omniglot training characters give 520 classes.

    Args:
        backbone: maps ``[batch, C, H, W]`` to features (flattened to ``[batch, D]``).
        dataset, split: where the training classes come from (None: all classes).
        steps, batch_size, lr: optimizer steps, examples per step, Adam learning rate.
        seed: seeds the example draws and the head's initialisation (None: fresh entropy).
        device: where to train (None: the backbone's device); the backbone is moved there.
        progress: show a tqdm progress bar.

    Returns:
        the trained ``backbone`` (the same module, trained in place, in its previous train/eval
        mode); the head is thrown away.
    """
    # imported here: mlhelpers.training imports mlhelpers.evaluation, which imports the learners
    from mlhelpers.training import meta_train

    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    lr = check_positive("lr", lr)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")
    index, classes = _split_examples(dataset, split)
    n_rot = QUARTER_TURNS if rotations else 1
    num_classes = int(classes.max()) + 1 if len(classes) else 0
    if num_classes * n_rot < 2:
        raise ValueError(f"split {split!r} has {num_classes * n_rot} class(es); a classifier needs at least 2")
    device = torch.device(device) if device is not None else module_device(backbone, "cpu")
    backbone.to(device)
    generator = make_generator(seed)

    was_training = backbone.training
    backbone.eval()
    feature_dim = _features(backbone, dataset.images[:1].to(device)).shape[1]
    head = _seeded_linear(feature_dim, num_classes * n_rot, seed=int(torch.randint(2**62, (1,), generator=generator)))
    classifier = Classifier(backbone, head.to(device))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    sampler = ExampleSampler(dataset.images, index, classes, rotations, generator)
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
    index, _ = _split_examples(dataset, split)
    device = torch.device(device) if device is not None else module_device(backbone, "cpu")
    was_training = backbone.training
    backbone.eval()
    total: Tensor | None = None
    count = 0
    try:
        for start in range(0, len(index), batch_size):
            x = dataset.images[index[start:start + batch_size]].to(device)
            for k in range(QUARTER_TURNS if rotations else 1):
                f = _features(backbone, torch.rot90(x, k, dims=(-2, -1)) if k else x).double()
                total = f.sum(0) if total is None else total + f.sum(0)
                count += len(f)
    finally:
        backbone.train(was_training)
    assert total is not None
    return (total / count).float()


class NearestCentroid(MetaLearner):
    """SimpleShot: nearest class mean of (optionally normalised) features of a fixed backbone.

    Features ``f(x)`` (flattened to ``[D]``) are transformed by ``normalise``:

    - ``None``: unchanged ("UN" in SimpleShot); with an identity-like backbone this is ProtoNet;
    - ``"l2"``: ``f / |f|`` ("L2N");
    - ``"cl2n"``: ``(f - m) / |f - m|`` with ``m = base_mean``, the mean feature of the base
      (meta-training) classes from :func:`feature_mean` ("CL2N", SimpleShot's best).

    ``adapt`` returns the class means of the transformed support features ``[tasks, n_way, D]``
    (not re-normalised, as in SimpleShot); ``predict`` returns logits ``[tasks, n_query, n_way]``,
    the negative squared Euclidean distances to them.

    Args:
        backbone: any module mapping ``[batch, *x_shape]`` to features; usually the output of
            :func:`pretrain_classifier`. It is trained by nothing here (but :func:`meta_train` would
            train it like ProtoNet's).
        normalise: ``"l2"``, ``"cl2n"`` or None.
        base_mean: ``[D]`` feature mean, required by ``"cl2n"`` and only used by it. Stored as a
            buffer, so ``.to(device)`` moves it.
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
        self.backbone = backbone
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

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        return class_prototypes(self.features(support_x), support_y, int(support_y.max()) + 1)

    def predict(self, adapted: Tensor, query_x: Tensor) -> Tensor:
        return negative_squared_distances(self.features(query_x), adapted)
