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
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm  # text bars: readable live and in stored notebook outputs

from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.learners.base import MetaLearner
from mlhelpers.learners.matching import support_one_hot
from mlhelpers.seeding import make_generator
from mlhelpers.validation import check_positive_int

Normalise = Literal["l2", "cl2n"] | None


def _device_of(module: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


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
    the cross-entropy with Adam (``lr``). With ``rotations`` each example is also turned by a random
    multiple of 90 degrees and every (class, quarter turns) pair is its own class, the convention
    of :class:`~mlhelpers.samplers.episodic.EpisodicSampler` ``(rotations=True)``: 130 Omniglot training
    characters give 520 classes.

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
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")
    index, classes = _split_examples(dataset, split)
    n_rot = 4 if rotations else 1
    num_classes = int(classes.max()) + 1 if len(classes) else 0
    if num_classes * n_rot < 2:
        raise ValueError(f"split {split!r} has {num_classes * n_rot} class(es); a classifier needs at least 2")
    device = _device_of(backbone, device)
    backbone.to(device)
    generator = make_generator(seed)

    was_training = backbone.training
    backbone.eval()
    feature_dim = _features(backbone, dataset.images[:1].to(device)).shape[1]
    init = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    head = nn.Linear(feature_dim, num_classes * n_rot)
    with torch.no_grad():  # nn.Linear's default init, from our generator
        bound = 1 / math.sqrt(feature_dim)
        head.weight.copy_(torch.empty_like(head.weight).uniform_(-bound, bound, generator=init))
        head.bias.copy_(torch.empty_like(head.bias).uniform_(-bound, bound, generator=init))
    head.to(device)
    optimizer = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=lr)

    backbone.train()
    try:
        with tqdm(total=steps, desc="pretrain", unit="step", disable=not progress, dynamic_ncols=True) as bar:
            recent: list[float] = []
            for _ in range(steps):
                pick = torch.randint(len(index), (batch_size,), generator=generator)
                x = dataset.images[index[pick]]
                y = classes[pick] * n_rot
                if rotations:
                    turns = torch.randint(4, (batch_size,), generator=generator)
                    for k in range(1, 4):
                        mask = turns == k
                        if mask.any():
                            x[mask] = torch.rot90(x[mask], k, dims=(-2, -1))
                    y = y + turns
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(head(backbone(x).flatten(1)), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                recent = (recent + [loss.item()])[-50:]
                bar.set_postfix_str(f"loss={sum(recent) / len(recent):.4f}", refresh=False)
                bar.update(1)
    finally:
        backbone.train(was_training)
    return backbone


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
    device = _device_of(backbone, device)
    was_training = backbone.training
    backbone.eval()
    total: Tensor | None = None
    count = 0
    try:
        for start in range(0, len(index), batch_size):
            x = dataset.images[index[start:start + batch_size]].to(device)
            for k in range(4 if rotations else 1):
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

    def _adapt(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        one_hot = support_one_hot(support_y)  # [T, S, N]
        features = self.features(support_x)
        one_hot = one_hot.to(features.device, features.dtype)
        return torch.einsum("tsn,tsd->tnd", one_hot, features) / one_hot.sum(dim=1)[..., None]

    def _predict(self, adapted: Tensor, query_x: Tensor) -> Tensor:
        return -torch.cdist(self.features(query_x), adapted).pow(2)
