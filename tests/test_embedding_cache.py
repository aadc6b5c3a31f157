"""Stored embeddings give the same episodes and accuracies as running the networks (Chapter 4's shortcut)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import synthetic_dataset
from mlhelpers.embedding_cache import EmbeddingCache, cached, embed_dataset, identity_copy
from mlhelpers.evaluation import evaluate
from mlhelpers.learners import (
    MAML,
    EnsembleProtoNet,
    MatchingNet,
    NearestCentroid,
    ProtoNet,
    RelationNet,
    SiameseNet,
    feature_mean,
    relation_backbone,
)
from mlhelpers.models import conv4
from mlhelpers.samplers.episodic import EpisodicSampler


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(size=28)


def _net(seed: int, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return conv4(hidden_channels=8, **kwargs).eval()


def _learners(data):
    torch.manual_seed(5)
    relation = RelationNet(relation_backbone(hidden_channels=8), hidden_channels=8).eval()
    baseline_net = _net(3)
    return [
        ProtoNet(_net(1)).eval(),
        ProtoNet(_net(1), transductive_steps=2).eval(),
        MatchingNet(_net(2), scale=7.0).eval(),
        NearestCentroid(baseline_net, "cl2n", base_mean=feature_mean(baseline_net, data, "train")).eval(),
        relation,
        SiameseNet(_net(4)).eval(),
    ]


def test_identity_copy_on_stored_embeddings_gives_the_same_accuracies(data):
    for learner in _learners(data):
        stored, light = cached(learner, data)
        direct = evaluate(learner, EpisodicSampler(data, 5, 2, 3, "test", seed=9), 6, progress=False).values
        fast = evaluate(light, EpisodicSampler(stored, 5, 2, 3, "test", seed=9), 6, progress=False).values
        assert torch.allclose(direct, fast), type(learner).__name__


def test_embed_dataset_keeps_only_the_requested_splits_and_restores_training_mode(data):
    net = _net(1).train()
    stored = embed_dataset(data, net, ("test",))
    test_rows = torch.isin(data.labels, data.splits["test"])
    assert stored.images.shape[0] == len(data.images) and stored.images.shape[2:] == (1, 1)
    assert stored.images[~test_rows].abs().sum() == 0
    assert stored.images[test_rows].abs().sum(dim=(1, 2, 3)).min() > 0
    assert net.training  # put back as it was
    with pytest.raises(ValueError, match="splits"):
        embed_dataset(data, net, ("val",))  # synthetic_dataset has no val split


def test_a_learner_that_adapts_its_network_is_refused():
    maml = MAML(conv4(hidden_channels=8, out_features=5, norm="task"), inner_lr=0.4)
    with pytest.raises(TypeError, match="learner must be"):
        identity_copy(maml)


def test_cached_ensemble_matches_the_ensemble_on_images_with_test_time_shifts(data):
    nets = [_net(1), _net(2)]
    cache = EmbeddingCache(data, ("test",))
    stored, light = cache.ensemble(nets, tta_shift=1)
    direct = evaluate(EnsembleProtoNet(nets, tta_shift=1).eval(), EpisodicSampler(data, 5, 1, 2, "test", seed=4), 5,
                      progress=False).values
    fast = evaluate(light, EpisodicSampler(stored, 5, 1, 2, "test", seed=4), 5, progress=False).values
    assert torch.allclose(direct, fast)
    # without the shifts the embeddings differ: the cache keys on the shift as well as the network
    assert not torch.allclose(cache.embeddings(nets[0], 0), cache.embeddings(nets[0], 1))


def test_each_network_is_embedded_once(data):
    calls = []

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net(1)

        def forward(self, x):
            calls.append(len(x))
            return self.net(x)

    net = Counting()
    cache = EmbeddingCache(data, ("test",))
    first = cache.embeddings(net)
    cache.ensemble([net, net])
    assert torch.equal(cache.embeddings(net), first)
    assert sum(calls) == int(torch.isin(data.labels, data.splits["test"]).sum())  # every test image, once
