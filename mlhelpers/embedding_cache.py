"""Evaluating metric learners on stored embeddings: each image is embedded once, not once per episode.

Chapter 4 evaluates every metric learner on thousands of episodes. Their networks embed an image
the same way whatever episode it is in, so :func:`embed_dataset` replaces every image of some
splits by its embedding, and :func:`cached` returns that dataset with a copy of the learner whose
backbone is the identity. Episode samplers choose dataset indices by label and only then look the
images up, so with the same seed they draw the same episodes from either dataset and the
accuracies agree (``tests/test_embedding_cache.py`` checks it). :class:`EmbeddingCache` keeps the
embeddings of each (network, test-time shift) pair and builds ProtoNet ensembles on them.
MAML has no such shortcut: its network changes with every task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mlhelpers.data.augment import shifted_copies
from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.learners import (
    EnsembleProtoNet,
    MatchingNet,
    MetaLearner,
    NearestCentroid,
    ProtoNet,
    RelationNet,
    SiameseNet,
)
from mlhelpers.validation import check_module, check_positive_int, check_steps

__all__ = ["EmbeddingCache", "Member", "cached", "embed_dataset", "identity_copy"]


def _split_rows(dataset: LabelledDataset, splits: Sequence[str]) -> Tensor:
    if isinstance(splits, str) or not splits:
        raise ValueError(f"splits must be a non-empty sequence of split names, got {splits!r}")
    unknown = [s for s in splits if s not in dataset.splits]
    if unknown:
        raise ValueError(f"splits {unknown} are not splits of the dataset (it has {sorted(dataset.splits)})")
    classes = torch.cat([dataset.splits[s] for s in splits])
    return torch.nonzero(torch.isin(dataset.labels, classes)).flatten()


def embed_dataset(
    dataset: LabelledDataset,
    embed: Callable[[Tensor], Tensor],
    splits: Sequence[str] = ("val", "test"),
    batch_size: int = 250,
) -> LabelledDataset:
    """``dataset`` with each image of ``splits`` replaced by ``embed(image)``, as ``[N, ...]`` 4-D features.

    ``embed`` maps ``[batch, C, H, W]`` to ``[batch, D]`` (stored as ``[N, D, 1, 1]``) or to feature
    maps ``[batch, C', h, w]`` (stored as they are). Images of other splits become zeros: samplers
    of ``splits`` never draw them. Runs under ``torch.inference_mode``; an ``nn.Module`` is put in
    eval mode for the pass and restored.
    """
    check_positive_int("batch_size", batch_size)
    rows = _split_rows(dataset, splits)
    was_training = isinstance(embed, nn.Module) and embed.training
    if isinstance(embed, nn.Module):
        embed.eval()
    try:
        with torch.inference_mode():
            out = torch.cat([embed(dataset.images[rows[i:i + batch_size]]) for i in range(0, len(rows), batch_size)])
    finally:
        if was_training:
            embed.train()
    out = out.reshape(len(out), *(out.shape[1:] if out.dim() == 4 else (-1, 1, 1)))
    features = torch.zeros(len(dataset.images), *out.shape[1:], dtype=out.dtype)
    features[rows] = out
    return dataclasses.replace(dataset, images=features)


def identity_copy(learner: MetaLearner) -> MetaLearner:
    """The same metric learner with its backbone replaced by the identity: it reads stored embeddings.

    Supports ProtoNet, MatchingNet (its temperature frozen), NearestCentroid, RelationNet (the
    relation module shared, not copied) and SiameseNet (its L1 head shared). Any other learner is a TypeError.
    """
    if isinstance(learner, ProtoNet):
        return ProtoNet(nn.Flatten(), transductive_steps=learner.transductive_steps)
    if isinstance(learner, MatchingNet):
        return MatchingNet(nn.Flatten(), scale=learner.scale.item(), learn_scale=False)
    if isinstance(learner, NearestCentroid):
        return NearestCentroid(nn.Flatten(), learner.normalise, base_mean=learner.base_mean)
    if isinstance(learner, RelationNet):
        return RelationNet(nn.Identity(), relation_module=learner.relation, class_pooling=learner.class_pooling)
    if isinstance(learner, SiameseNet):
        copy = SiameseNet(nn.Flatten(), input_shape=(learner.head.in_features, 1, 1))
        copy.head = learner.head
        return copy
    raise TypeError(
        f"learner must be a ProtoNet, MatchingNet, NearestCentroid, RelationNet or SiameseNet, "
        f"got {type(learner).__name__}: "
        f"only a learner whose embedding does not depend on the task can be evaluated on stored embeddings"
    )


def cached(
    learner: MetaLearner, dataset: LabelledDataset, splits: Sequence[str] = ("test",)
) -> tuple[LabelledDataset, MetaLearner]:
    """(``dataset`` with ``splits`` embedded by ``learner.backbone``, :func:`identity_copy` of ``learner``)."""
    light = identity_copy(learner)  # first: a wrong learner fails before any embedding is computed
    return embed_dataset(dataset, learner.backbone, splits), light


class Member(nn.Module):
    """The ``m``-th member's slice of stored ensemble embeddings: ``[N, members, D, 1]`` -> ``[N, D]``."""

    def __init__(self, m: int) -> None:
        super().__init__()
        self.m = check_steps("m", m)

    def forward(self, x: Tensor) -> Tensor:
        return x[:, self.m, :, 0]


class EmbeddingCache:
    """Embeddings ``[N, D]`` of every image of ``splits``, computed once per (network, ``tta_shift``).

    ``tta_shift > 0`` embeds each image and its four copies shifted by that many pixels
    (:func:`~mlhelpers.data.augment.shifted_copies`) and keeps the mean, as
    :class:`~mlhelpers.learners.EnsembleProtoNet` does.
    """

    def __init__(self, dataset: LabelledDataset, splits: Sequence[str] = ("val", "test")) -> None:
        _split_rows(dataset, splits)  # fails early on a bad split name
        self.dataset, self.splits = dataset, tuple(splits)
        self._stored: dict[tuple[int, int], tuple[nn.Module, Tensor]] = {}

    def embeddings(self, net: nn.Module, tta_shift: int = 0) -> Tensor:
        """``[N, D]``: ``net``'s (mean over shifted views) embedding of each image; zeros outside ``splits``."""
        check_module("net", net)
        shift = check_steps("tta_shift", tta_shift)
        key = (id(net), shift)
        if key not in self._stored:
            def embed(x: Tensor) -> Tensor:
                if not shift:
                    return net(x).flatten(1)
                return net(shifted_copies(x, shift).flatten(0, 1)).flatten(1).unflatten(0, (5, len(x))).mean(0)

            was_training = net.training
            net.eval()
            try:
                features = embed_dataset(self.dataset, embed, self.splits).images.flatten(1)
            finally:
                net.train(was_training)
            self._stored[key] = (net, features)  # the net is kept so that its id is not reused
        return self._stored[key][1]

    def ensemble(self, nets: Sequence[nn.Module], tta_shift: int = 0) -> tuple[LabelledDataset, EnsembleProtoNet]:
        """(dataset of stored embeddings ``[N, members, D, 1]``, an EnsembleProtoNet reading them).

        The pair gives the same episodes and accuracies as ``EnsembleProtoNet(nets, tta_shift)`` on
        the images.
        """
        if len(nets) == 0:
            raise ValueError("nets must hold at least one network")
        features = torch.stack([self.embeddings(net, tta_shift) for net in nets], dim=1)[..., None]
        return (dataclasses.replace(self.dataset, images=features),
                EnsembleProtoNet([Member(m) for m in range(len(nets))], tta_shift=0))
