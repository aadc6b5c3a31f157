"""Siamese networks, verification pairs and Proto-MAML (Chapter 4; issue 18)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_metric_learners import bars_dataset, held_out_accuracy
from torch import nn

from conftest import make_dataset
from mlhelpers.data.augment import KOCH_DISTORTION, random_affine
from mlhelpers.learners import ProtoMAML, ProtoNet, SiameseNet, prototype_head
from mlhelpers.learners.protomaml import HEAD_BIAS, HEAD_WEIGHT
from mlhelpers.learners.siamese import balanced_bce
from mlhelpers.models import conv4, mlp
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.samplers.pairs import PairSampler
from mlhelpers.samplers.wrappers import AugmentedSampler
from mlhelpers.tasks import Task
from mlhelpers.training import meta_train


def small_siamese() -> SiameseNet:
    return SiameseNet(conv4(hidden_channels=8, num_blocks=2), input_shape=(1, 8, 8))


def blob_task(tasks: int = 2, n_way: int = 3, k: int = 2, q: int = 3, dim: int = 4, seed: int = 0,
              dtype=torch.float32) -> Task:
    """Classes are Gaussian blobs around random centres in ``dim`` dimensions."""
    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(tasks, n_way, dim, generator=g)
    sy = torch.arange(n_way).repeat_interleave(k).expand(tasks, -1)
    qy = torch.arange(n_way).repeat_interleave(q).expand(tasks, -1)
    rows = torch.arange(tasks)[:, None]
    sx = centres[rows, sy] + 0.5 * torch.randn(tasks, n_way * k, dim, generator=g)
    qx = centres[rows, qy] + 0.5 * torch.randn(tasks, n_way * q, dim, generator=g)
    return Task(sx.to(dtype), sy.clone(), qx.to(dtype), qy.clone())


# --- pairs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("negatives", ["within", "across", "any"])
def test_pair_sampler_draws_the_groups_it_is_asked_for(negatives):
    dataset = make_dataset(num_classes=24, groups=3)
    sampler = PairSampler(dataset, "train", negatives=negatives, q_query=2, seed=0)
    task = sampler.sample(50)
    assert task.support_x.shape[:2] == (50, 2) and task.query_x.shape[:2] == (50, 4)
    groups = task.info["groups"]
    assert torch.equal(groups, dataset.class_groups[task.info["classes"]])
    if negatives == "within":
        assert (groups[:, 0] == groups[:, 1]).all()
    elif negatives == "across":
        assert (groups[:, 0] != groups[:, 1]).all()
    else:  # both kinds occur
        assert (groups[:, 0] == groups[:, 1]).any() and (groups[:, 0] != groups[:, 1]).any()
    same = task.query_y[:, :, None] == task.support_y[:, None]
    assert same.sum() == (~same).sum(), "2-way tasks give as many same pairs as different ones"


def test_pair_sampler_refuses_what_it_cannot_draw():
    dataset = make_dataset(num_classes=24, groups=3)
    with pytest.raises(ValueError, match="negatives must be one of"):
        PairSampler(dataset, "train", negatives="between")
    with pytest.raises(ValueError, match="n_way=4 and the split has only 3 groups"):
        PairSampler(dataset, "train", negatives="across", n_way=4)


def test_random_affine_parts_can_be_skipped():
    x = torch.rand(64, 1, 12, 12)
    torch.testing.assert_close(random_affine(x, p_each=0.0, generator=torch.Generator().manual_seed(0)), x,
                               atol=1e-5, rtol=0)
    half = random_affine(x, **KOCH_DISTORTION, generator=torch.Generator().manual_seed(0))
    unchanged = ((half - x).abs().flatten(1).amax(1) < 1e-5).float().mean()
    assert 0.0 < unchanged < 0.2, "all four parts skipped in about 1 image of 16"
    with pytest.raises(ValueError, match="p_each must be a probability"):
        random_affine(x, p_each=1.5)


# --- Siamese networks -------------------------------------------------------------------------


def test_siamese_pair_score_is_symmetric_and_uses_weighted_l1():
    torch.manual_seed(0)
    net = small_siamese().eval()
    a, b = torch.rand(5, 1, 8, 8), torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(net.score_pairs(a, b), net.score_pairs(b, a), rtol=0, atol=0)
    fa, fb = net.backbone(a), net.backbone(b)
    by_hand = (fa - fb).abs() @ net.head.weight[0] + net.head.bias[0]
    torch.testing.assert_close(net.score_pairs(a, b), by_hand)


def test_siamese_one_shot_prediction_is_the_most_similar_support_image():
    torch.manual_seed(0)
    net = small_siamese().eval()
    task = EpisodicSampler(make_dataset(size=8), 4, 2, 3, seed=0).sample(3)
    out = net(task)
    assert out.shape == (3, 12, 4) and torch.isfinite(out).all()
    with torch.no_grad():
        for t in range(3):
            for i in range(12):
                scores = net.score_pairs(task.query_x[t, i].expand(8, -1, -1, -1), task.support_x[t])  # [8]
                for n in range(4):
                    assert out[t, i, n] == pytest.approx(scores[task.support_y[t] == n].max().item(), abs=1e-5)
                assert out[t, i].argmax() == task.support_y[t, scores.argmax()]


def test_siamese_meta_loss_is_the_balanced_verification_loss():
    torch.manual_seed(0)
    net = small_siamese()
    task = EpisodicSampler(make_dataset(size=8), 4, 1, 2, seed=0).sample(2)
    logits, same = net.verification_logits(task)
    assert logits.shape == same.shape == (2, 8, 4) and same.sum() == 16  # one same pair per query
    target = same.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    by_hand = 0.5 * (bce[same].mean() + bce[~same].mean())
    torch.testing.assert_close(net.meta_loss(task), by_hand)
    all_same = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    torch.testing.assert_close(balanced_bce(logits, torch.ones_like(same)), all_same)


def test_siamese_refuses_a_backbone_without_flat_features_and_a_missing_class():
    with pytest.raises(ValueError, match=r"backbone must map \[batch, \*input_shape\] to \[batch, D\]"):
        SiameseNet(conv4(hidden_channels=4, num_blocks=2)[:-1], input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="support_y: every class 0..2 needs"):
        small_siamese().adapt(torch.rand(1, 3, 1, 8, 8), torch.tensor([[0, 2, 2]]))


@pytest.mark.slow
def test_siamese_verification_training_gives_one_shot_accuracy_on_held_out_classes():
    dataset = bars_dataset()
    torch.manual_seed(0)
    net = SiameseNet(conv4(hidden_channels=8, num_blocks=2, norm="none"), input_shape=(1, 8, 8))
    untrained = held_out_accuracy(net, dataset)
    sampler = AugmentedSampler(PairSampler(dataset, "train", negatives="any", q_query=2, seed=0), seed=1,
                               max_rotate=5.0, max_shift=0.05, p_each=0.5)
    meta_train(net, sampler, steps=300, meta_batch_size=16, seed=0, progress=False)
    trained = held_out_accuracy(net, dataset)
    assert trained > 0.6 and trained > untrained + 0.15, (untrained, trained)


# --- Proto-MAML -------------------------------------------------------------------------------


def tiny_embedding(dtype=torch.float32) -> nn.Module:
    return mlp(4, 3, hidden=(6,), activation=nn.Tanh).to(dtype)


def test_prototype_head_is_protonets_classifier_up_to_a_constant_per_query():
    g = torch.Generator().manual_seed(0)
    z_support, z_query = torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g)
    one_hot = F.one_hot(torch.tensor([0, 0, 1, 2, 2, 2]), 3).float()
    weight, bias = prototype_head(z_support, one_hot)
    prototypes = torch.stack([z_support[:2].mean(0), z_support[2], z_support[3:].mean(0)])
    protonet = -torch.cdist(z_query, prototypes).pow(2)
    torch.testing.assert_close(z_query @ weight.T + bias - z_query.pow(2).sum(1, keepdim=True), protonet,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["none", "task"])
def test_protomaml_before_any_inner_step_is_protonet(norm):
    torch.manual_seed(0)
    backbone = conv4(hidden_channels=4, num_blocks=2, norm=norm)
    task = EpisodicSampler(make_dataset(size=8), 3, 2, 3, seed=0).sample(1)  # one task: same batch statistics
    learner = ProtoMAML(backbone, inner_steps=0, strategy="loop").eval()
    z = backbone(task.query_x[0])[None]
    proto = ProtoNet(backbone)(task)
    torch.testing.assert_close(learner(task) - z.pow(2).sum(-1, keepdim=True), proto, atol=1e-4, rtol=1e-5)
    fast = learner.adapt(task.support_x, task.support_y)
    assert fast[HEAD_WEIGHT].shape == (1, 3, 16) and fast[HEAD_BIAS].shape == (1, 3)
    # the same loss, so the same meta-gradient (which flows through the prototypes into the embedding)
    learner.train()
    grads = torch.autograd.grad(learner.meta_loss(task), list(backbone.parameters()))
    expected = torch.autograd.grad(ProtoNet(backbone).meta_loss(task), list(backbone.parameters()))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_protomaml_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    learner = ProtoMAML(tiny_embedding(torch.float64), inner_lr=0.3, inner_steps=2, strategy="loop")
    task = blob_task(dtype=torch.float64)
    params = list(learner.parameters())
    grads = torch.autograd.grad(learner.meta_loss(task), params)
    eps = 1e-6
    with torch.no_grad():
        for p, grad in zip(params, grads):
            for i in range(p.numel()):
                old = p.view(-1)[i].item()
                p.view(-1)[i] = old + eps
                up = learner.meta_loss(task).item()
                p.view(-1)[i] = old - eps
                down = learner.meta_loss(task).item()
                p.view(-1)[i] = old
                assert grad.view(-1)[i].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8)


def test_protomaml_meta_gradient_through_task_batch_norm_matches_finite_differences():
    """Per-task batch norm (conv4's norm="task") in the second-order inner loop; tanh and average
    pooling instead of ReLU and max-pooling, whose kinks would spoil the finite differences."""
    torch.manual_seed(0)

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o, track_running_stats=False), nn.Tanh(),
                             nn.AvgPool2d(2))

    embedding = nn.Sequential(block(1, 4), block(4, 4), nn.Flatten()).double()
    task = EpisodicSampler(make_dataset(size=8), 3, 1, 2, seed=0).sample(2)
    task = Task(task.support_x.double() + 0.1 * torch.randn(task.support_x.shape, dtype=torch.float64),
                task.support_y, task.query_x.double(), task.query_y)
    learner = ProtoMAML(embedding, inner_lr=0.1, inner_steps=2, strategy="loop")
    params = list(learner.parameters())
    grads = torch.autograd.grad(learner.meta_loss(task), params)
    direction = [torch.randn_like(p) for p in params]
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
        up = learner.meta_loss(task).item()
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
        down = learner.meta_loss(task).item()
        for p, d in zip(params, direction):
            p.add_(eps * d)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction))
    assert analytic == pytest.approx((up - down) / (2 * eps), rel=1e-5)


def test_first_order_protomaml_keeps_the_gradient_through_the_prototypes():
    """First order drops the inner gradients' Hessian terms, not the path through the initial head."""
    torch.manual_seed(0)
    embedding = tiny_embedding()
    task = blob_task()
    first = ProtoMAML(embedding, inner_lr=0.3, inner_steps=1, first_order=True, strategy="loop")
    exact = ProtoMAML(embedding, inner_lr=0.3, inner_steps=1, strategy="loop")
    g_first = torch.autograd.grad(first.meta_loss(task), list(embedding.parameters()))
    g_exact = torch.autograd.grad(exact.meta_loss(task), list(embedding.parameters()))
    assert all(torch.isfinite(g).all() for g in g_first)
    assert not all(torch.allclose(a, b) for a, b in zip(g_first, g_exact)), "first order is an approximation"
    cosine = F.cosine_similarity(torch.cat([g.flatten() for g in g_first]),
                                 torch.cat([g.flatten() for g in g_exact]), dim=0)
    assert cosine > 0.9, cosine


@pytest.mark.parametrize("first_order", [False, True])
def test_protomaml_vmap_and_loop_agree(first_order):
    torch.manual_seed(0)
    embedding = conv4(hidden_channels=4, num_blocks=2, norm="task").double()
    task = EpisodicSampler(make_dataset(size=8), 3, 1, 2, seed=0).sample(3)
    task = Task(task.support_x.double(), task.support_y, task.query_x.double(), task.query_y)
    grads = {}
    for strategy in ("loop", "vmap"):
        learner = ProtoMAML(embedding, inner_lr=0.1, inner_steps=2, first_order=first_order, strategy=strategy)
        grads[strategy] = torch.autograd.grad(learner.meta_loss(task), list(embedding.parameters()))
        learner.eval()
        grads[strategy + " outputs"] = (learner(task).detach(),)
    for a, b in zip(grads["loop"] + grads["loop outputs"], grads["vmap"] + grads["vmap outputs"]):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


def test_protomaml_any_number_of_ways_and_a_clashing_name_is_refused():
    torch.manual_seed(0)
    learner = ProtoMAML(tiny_embedding(), inner_steps=1, strategy="loop").eval()
    for n_way in (2, 5):
        assert learner(blob_task(n_way=n_way)).shape == (2, 3 * n_way, n_way)

    class Clash(nn.Module):
        def __init__(self):
            super().__init__()
            self.proto_head = nn.Linear(4, 3)

        def forward(self, x):
            return self.proto_head(x)

    with pytest.raises(ValueError, match="proto_head.weight"):
        ProtoMAML(Clash())


@pytest.mark.slow
def test_protomaml_learns_held_out_classes():
    dataset = bars_dataset()
    torch.manual_seed(0)
    learner = ProtoMAML(conv4(hidden_channels=8, num_blocks=2, norm="task"), inner_lr=0.05, inner_steps=1,
                        first_order=True, strategy="loop")
    untrained = held_out_accuracy(learner, dataset)
    sampler = EpisodicSampler(dataset, 5, 1, 5, split="train", seed=0)
    meta_train(learner, sampler, steps=150, meta_batch_size=4, seed=0, progress=False)
    trained = held_out_accuracy(learner, dataset)
    assert trained > 0.75 and trained > untrained + 0.15, (untrained, trained)
