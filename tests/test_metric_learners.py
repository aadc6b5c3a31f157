"""MatchingNet, RelationNet and the pre-trained nearest-centroid baseline (Chapter 4)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_dataset
from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.evaluation import evaluate
from mlhelpers.learners import MAML, EnsembleProtoNet, ProtoNet, task_loss
from mlhelpers.learners.baseline import NearestCentroid, feature_mean
from mlhelpers.learners.matching import MatchingNet, support_one_hot
from mlhelpers.learners.relation import RelationNet, build_relation_module, relation_backbone
from mlhelpers.models import conv4
from mlhelpers.pretraining import pretrain_classifier
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.tasks import Task
from mlhelpers.training import meta_train

LEARNERS = ["protonet", "matching", "relation", "nearest_centroid"]
CHECKS_LABELS = ["matching", "relation", "nearest_centroid"]  # ProtoNet's own checks: test_protonet.py


pytestmark = pytest.mark.usefixtures("one_thread")


def small_learner(name: str, image_size: int = 8) -> nn.Module:
    """A learner with a tiny backbone for ``[1, image_size, image_size]`` inputs."""
    if name == "protonet":
        return ProtoNet(conv4(hidden_channels=8, num_blocks=2))
    if name == "matching":
        return MatchingNet(conv4(hidden_channels=8, num_blocks=2))
    if name in ("relation", "relation_mse"):
        spatial = conv4(hidden_channels=8, num_blocks=2)[:-1]  # conv blocks without the flatten
        loss = "mse" if name == "relation_mse" else "cross_entropy"
        return RelationNet(spatial, input_shape=(1, image_size, image_size), hidden_channels=8, loss=loss)
    if name == "nearest_centroid":
        return NearestCentroid(conv4(hidden_channels=8, num_blocks=2), "l2")
    raise ValueError(name)


def bars_dataset(num_classes: int = 96, per_class: int = 10, size: int = 8, noise: float = 0.5) -> LabelledDataset:
    """Each class is the union of 3 of the 16 full-length rows and columns of an 8x8 image, plus noise.

    Classes share parts (the bars), so a backbone that learns to see bars on the training classes
    helps on the held-out ones; an untrained one is much worse (5-way 1-shot ~0.55).
    """
    g = torch.Generator().manual_seed(0)
    bars = torch.zeros(2 * size, size, size)
    for i in range(size):
        bars[i, i, :] = 1.0
        bars[size + i, :, i] = 1.0
    pick = torch.rand(num_classes, 2 * size, generator=g).argsort(dim=1)[:, :3]
    patterns = bars[pick].amax(dim=1)[:, None]  # [classes, 1, size, size]
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = patterns[labels] + noise * torch.randn(len(labels), 1, size, size, generator=g)
    n_train = num_classes * 3 // 4
    return LabelledDataset(
        images=images,
        labels=labels,
        class_names=[f"bars{c}" for c in range(num_classes)],
        splits={"train": torch.arange(n_train), "test": torch.arange(n_train, num_classes)},
    )


def held_out_accuracy(learner: nn.Module, dataset: LabelledDataset) -> float:
    return evaluate(learner, EpisodicSampler(dataset, 5, 1, 5, split="test", seed=1), num_episodes=100).mean


# --------------------------------------------------------------------------------------------
# Shared behaviour
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LEARNERS)
def test_output_shape_and_metric_flag(name):
    torch.manual_seed(0)
    learner = small_learner(name)
    task = EpisodicSampler(make_dataset(size=8), 4, 2, 3, seed=0).sample(3)
    out = learner(task)
    assert out.shape == (3, 12, 4)
    assert torch.isfinite(out).all()
    assert learner.needs_grad_to_adapt is False


@pytest.mark.parametrize("name", LEARNERS)
def test_predictions_invariant_to_support_order(name):
    torch.manual_seed(0)
    learner = small_learner(name).eval()
    task = EpisodicSampler(make_dataset(size=8), 3, 3, 2, seed=0).sample(2)
    perm = torch.randperm(task.n_support)
    a = learner.predict(learner.adapt(task.support_x, task.support_y), task.query_x)
    b = learner.predict(learner.adapt(task.support_x[:, perm], task.support_y[:, perm]), task.query_x)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[..., 0], a[..., 1])  # and the outputs say something about the classes


@pytest.mark.parametrize("name", CHECKS_LABELS)
@pytest.mark.parametrize(
    "labels, error, message",
    [
        ([[0, 1, -1]], ValueError, "must lie in 0..1"),
        ([[0, 2, 2]], ValueError, r"class 1 has none in task 0|every class 0..2 needs at least one support example"),
        ([[0.0, 1.0, 1.0]], TypeError, "integer class labels"),
    ],
)
def test_bad_support_labels_raise(name, labels, error, message):
    """MatchingNet checks with support_one_hot, the others with class_prototypes."""
    learner = small_learner(name)
    with pytest.raises(error, match=message):
        learner.adapt(torch.rand(1, 3, 1, 8, 8), torch.tensor(labels))


def test_support_one_hot_checks_a_given_n_way():
    torch.testing.assert_close(support_one_hot(torch.tensor([[1, 0]])), torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    with pytest.raises(ValueError, match=r"must lie in 0..1 \(n_way=2\), got labels 0..2"):
        support_one_hot(torch.tensor([[0, 1, 2]]), n_way=2)
    with pytest.raises(ValueError, match=r"\[tasks, n_support\]"):
        support_one_hot(torch.tensor([0, 1]))


# --------------------------------------------------------------------------------------------
# MatchingNet
# --------------------------------------------------------------------------------------------


def test_matching_net_is_cosine_attention_by_hand():
    learner = MatchingNet(nn.Flatten(), scale=2.0, learn_scale=False)
    support = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]]])
    labels = torch.tensor([[0, 1, 0]])
    query = torch.tensor([[[1.0, 0.5]]])
    log_p = learner.predict(learner.adapt(support, labels), query)

    q = (1.0, 0.5)
    cos = []
    for s in support[0].tolist():
        cos.append((q[0] * s[0] + q[1] * s[1]) / (math.hypot(*q) * math.hypot(*s)))
    weights = [math.exp(2.0 * c) for c in cos]
    p0 = (weights[0] + weights[2]) / sum(weights)
    expected = torch.tensor([[[p0, 1.0 - p0]]])
    torch.testing.assert_close(log_p.exp(), expected)
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(1, 1))
    # The shared cross-entropy on log-probabilities is the negative log-likelihood.
    torch.testing.assert_close(task_loss(log_p, torch.tensor([[1]])), -torch.log(torch.tensor(1.0 - p0)))


def test_matching_net_probabilities_sum_to_one_and_scale_is_learnable():
    torch.manual_seed(0)
    learner = small_learner("matching")
    task = EpisodicSampler(make_dataset(size=8), 5, 2, 3, seed=0).sample(2)
    log_p = learner(task)
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(2, 15))
    assert (log_p <= 0).all()
    learner.meta_loss(task).backward()
    assert learner.log_scale.grad is not None and learner.log_scale.grad != 0
    assert "log_scale" not in dict(MatchingNet(nn.Flatten(), learn_scale=False).named_parameters())
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        MatchingNet(nn.Flatten(), scale=0.0)


# --------------------------------------------------------------------------------------------
# RelationNet
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("class_pooling, class0", [("sum", 3.0), ("mean", 1.5)])
def test_relation_net_concatenates_class_then_query(class_pooling, class0):
    # Identity "backbone" on 1x1x1 images, a linear relation module: logit = class + 10 * query.
    head = nn.Sequential(nn.Flatten(), nn.Linear(2, 1))
    with torch.no_grad():
        head[1].weight.copy_(torch.tensor([[1.0, 10.0]]))
        head[1].bias.zero_()
    learner = RelationNet(nn.Identity(), head, class_pooling=class_pooling)
    support = torch.tensor([1.0, 2.0, 5.0]).view(1, 3, 1, 1, 1)
    query = torch.tensor([7.0, 9.0]).view(1, 2, 1, 1, 1)
    adapted = learner.adapt(support, torch.tensor([[0, 0, 1]]))
    pairs = learner.pairs(adapted, query)
    assert pairs.shape == (1, 2, 2, 2, 1, 1)
    expected_pairs = torch.tensor([[[class0, 7.0], [5.0, 7.0]], [[class0, 9.0], [5.0, 9.0]]])
    torch.testing.assert_close(pairs.view(2, 2, 2), expected_pairs)
    logits = learner.predict(adapted, query)
    torch.testing.assert_close(logits, (expected_pairs[..., 0] + 10 * expected_pairs[..., 1])[None])


def test_relation_scores_depend_on_the_class_and_losses():
    torch.manual_seed(0)
    learner = small_learner("relation")
    task = EpisodicSampler(make_dataset(size=8), 5, 1, 2, seed=0).sample(2)
    logits = learner(task)
    scores = learner.relation_scores(logits)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert (logits.std(dim=-1) > 1e-4).all()  # each query's scores differ between the classes
    torch.testing.assert_close(learner.meta_loss(task), task_loss(logits, task.query_y))
    learner.loss = "mse"  # the paper's loss
    target = F.one_hot(task.query_y, 5).float()
    torch.testing.assert_close(learner.meta_loss(task), ((torch.sigmoid(logits) - target) ** 2).mean())
    with pytest.raises(ValueError, match="loss must be 'cross_entropy' or 'mse', got 'hinge'"):
        RelationNet(nn.Identity(), nn.Identity(), loss="hinge")


def test_relation_backbone_keeps_paper_feature_maps():
    backbone = relation_backbone(hidden_channels=4)
    assert backbone(torch.rand(2, 1, 28, 28)).shape == (2, 4, 5, 5)
    learner = RelationNet(backbone, hidden_channels=4, fc_hidden=3)  # default relation module
    assert learner.relation[3].in_features == 4  # 5x5 -> 2x2 -> 1x1, as in the paper
    assert learner.relation(torch.rand(6, 8, 5, 5)).shape == (6, 1)
    assert build_relation_module((8, 2, 2), 8, 8)(torch.rand(3, 16, 2, 2)).shape == (3, 1)
    with pytest.raises(ValueError, match=r"spatial feature maps \[batch, C, h, w\].*shape \(1, 64\)"):
        RelationNet(conv4())


# --------------------------------------------------------------------------------------------
# Nearest centroid (SimpleShot) and pre-training
# --------------------------------------------------------------------------------------------


def test_nearest_centroid_without_normalisation_is_protonet():
    torch.manual_seed(0)
    task = Task(torch.randn(2, 6, 3), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2),
                torch.randn(2, 4, 3), torch.zeros(2, 4, dtype=torch.int64))
    torch.testing.assert_close(NearestCentroid(nn.Flatten(), None)(task), ProtoNet(nn.Flatten())(task))


def test_l2_and_cl2n_features_are_unit_norm_and_centred():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4) + 3.0
    mean = torch.tensor([3.0, 3.0, 3.0, 3.0])
    for learner in (NearestCentroid(nn.Flatten(), "l2"), NearestCentroid(nn.Flatten(), "cl2n", base_mean=mean)):
        torch.testing.assert_close(learner.features(x).norm(dim=-1), torch.ones(2, 5))
    cl2n = NearestCentroid(nn.Flatten(), "cl2n", base_mean=mean).features(x)
    torch.testing.assert_close(cl2n, F.normalize(x - 3.0, dim=-1))
    assert not torch.allclose(cl2n, NearestCentroid(nn.Flatten(), "l2").features(x))
    with pytest.raises(ValueError, match="normalise='cl2n' needs base_mean"):
        NearestCentroid(nn.Flatten(), "cl2n")
    with pytest.raises(ValueError, match="base_mean is only used with normalise='cl2n'"):
        NearestCentroid(nn.Flatten(), "l2", base_mean=mean)
    with pytest.raises(ValueError, match="normalise must be"):
        NearestCentroid(nn.Flatten(), "L2")
    with pytest.raises(ValueError, match="base_mean has 3 entries but the backbone gives 4"):
        NearestCentroid(nn.Flatten(), "cl2n", base_mean=torch.zeros(3)).features(x)


def test_feature_mean_is_the_split_mean():
    dataset = make_dataset(size=4)
    classes = dataset.splits["train"]
    images = dataset.images[torch.isin(dataset.labels, classes)]
    torch.testing.assert_close(feature_mean(nn.Flatten(), dataset, "train", batch_size=7), images.flatten(1).mean(0))
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
    torch.testing.assert_close(feature_mean(nn.Flatten(), dataset, "train", rotations=True), rotated.flatten(1).mean(0))
    with pytest.raises(ValueError, match="unknown split 'base'"):
        feature_mean(nn.Flatten(), dataset, "base")


def test_pretrain_classifier_checks_arguments_and_restores_mode():
    dataset = make_dataset(size=8)
    backbone = conv4(hidden_channels=4, num_blocks=2).eval()
    before = [p.detach().clone() for p in backbone.parameters()]
    out = pretrain_classifier(backbone, dataset, "train", steps=2, batch_size=4, seed=0, progress=False)
    assert out is backbone and not backbone.training
    assert any(not torch.equal(a, b) for a, b in zip(before, backbone.parameters()))
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        pretrain_classifier(backbone, dataset, steps=0, progress=False)
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got -1.0"):
        pretrain_classifier(backbone, dataset, steps=1, lr=-1.0, progress=False)
    with pytest.raises(ValueError, match="unknown split 'base'"):
        pretrain_classifier(backbone, dataset, "base", steps=1, progress=False)


def test_pretrain_classifier_is_reproducible_with_a_seed():
    dataset = make_dataset(size=8)
    trained = []
    for _ in range(2):
        torch.manual_seed(0)
        backbone = conv4(hidden_channels=4, num_blocks=2)
        pretrain_classifier(backbone, dataset, steps=3, batch_size=4, seed=5, progress=False)
        trained.append(torch.cat([p.detach().flatten() for p in backbone.parameters()]))
    torch.testing.assert_close(trained[0], trained[1])


# --------------------------------------------------------------------------------------------
# Learning: a short run generalises to held-out classes
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, steps, least, gain",
    [("protonet", 300, 0.75, 0.15), ("matching", 300, 0.75, 0.15),
     ("relation", 400, 0.6, 0.3), ("relation_mse", 400, 0.6, 0.3)],
)
def test_meta_training_generalises_to_held_out_classes(name, steps, least, gain):
    dataset = bars_dataset()
    torch.manual_seed(0)
    learner = small_learner(name)
    untrained = held_out_accuracy(learner, dataset)
    sampler = EpisodicSampler(dataset, 5, 1, 5, split="train", seed=0)
    meta_train(learner, sampler, steps=steps, meta_batch_size=4, seed=0, progress=False)
    trained = held_out_accuracy(learner, dataset)
    assert trained > least and trained > untrained + gain, (untrained, trained)


def test_pretrained_nearest_centroid_generalises_to_held_out_classes():
    dataset = bars_dataset()
    torch.manual_seed(0)
    backbone = conv4(hidden_channels=8, num_blocks=2)
    untrained = held_out_accuracy(NearestCentroid(backbone, None), dataset)
    pretrain_classifier(backbone, dataset, "train", rotations=False, steps=300, batch_size=32, seed=0, progress=False)
    mean = feature_mean(backbone, dataset, "train")
    for normalise, base_mean in ((None, None), ("l2", None), ("cl2n", mean)):
        trained = held_out_accuracy(NearestCentroid(backbone, normalise, base_mean), dataset)
        assert trained > 0.75 and trained > untrained + 0.15, (normalise, untrained, trained)


@pytest.mark.parametrize("name", ["protonet", "matching", "relation", "relation_mse", "nearest_centroid"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_every_integer_label_dtype_gives_the_int64_result(name, dtype):
    """Validation accepts any integer labels; each learner gives exactly what it gives for int64
    (torch's one_hot takes only int64, which used to crash ProtoNet and friends)."""
    torch.manual_seed(0)
    learner = small_learner(name).eval()
    x = torch.rand(2, 6, 1, 8, 8)
    y = torch.tensor([[0, 0, 1, 1, 2, 2], [2, 1, 0, 2, 1, 0]])
    expected = Task(x, y, x, y)
    narrow = Task(x, y.to(dtype), x, y.to(dtype))
    with torch.no_grad():
        assert torch.equal(learner(narrow), learner(expected))
        assert torch.equal(learner.meta_loss(narrow), learner.meta_loss(expected))


@pytest.mark.parametrize("make", [ProtoNet, MatchingNet, NearestCentroid, MAML,
                                  lambda b: RelationNet(b, input_shape=(1, 8, 8)),
                                  lambda b: EnsembleProtoNet([b])])
def test_a_backbone_that_is_not_a_module_is_refused_at_construction(make):
    with pytest.raises(TypeError, match=r"must be a torch\.nn\.Module, got str 'conv4'"):
        make("conv4")
