"""Distilling an ensemble of ProtoNets into one network (Chapter 4, mlhelpers.distillation)."""

from __future__ import annotations

import pytest
import torch

from mlhelpers import recipe
from mlhelpers.data.omniglot import load_omniglot
from mlhelpers.distillation import Distillation
from mlhelpers.learners import EnsembleProtoNet, ProtoNet
from mlhelpers.models import conv4
from mlhelpers.samplers.episodic import EpisodicSampler


@pytest.fixture(scope="module")
def omniglot():
    return load_omniglot()


def _task(omniglot, seed=0):
    return EpisodicSampler(omniglot, 5, 1, 2, "val", seed=seed).sample(2)


def test_loss_is_zero_for_the_teachers_own_network(omniglot):
    torch.manual_seed(0)
    network = conv4(hidden_channels=8).eval()
    teacher = EnsembleProtoNet([network])  # one member, no shifts: the ProtoNet of that network
    assert Distillation(ProtoNet(network), teacher).eval().meta_loss(_task(omniglot)).abs() < 1e-6


def test_only_the_student_learns_and_the_teacher_stays_in_eval_mode(omniglot):
    torch.manual_seed(0)
    teacher = EnsembleProtoNet([conv4(hidden_channels=8), conv4(hidden_channels=8)])
    distillation = Distillation(ProtoNet(conv4(hidden_channels=8)), teacher).train()
    assert distillation.student.training and not teacher.training
    assert all(not m.training for m in teacher.modules())
    distillation.meta_loss(_task(omniglot)).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in distillation.student.parameters())
    torch.testing.assert_close(distillation(_task(omniglot)), distillation.student(_task(omniglot)))


def test_distilled_student_agrees_with_its_teacher_more_than_one_trained_alone(omniglot):
    """Same seed, episodes and steps; one trained on the labels, one on a two-network teacher's
    probabilities: on meta-validation tasks the distilled one is closer to the teacher."""
    train = lambda seed, **kw: recipe.train_member(omniglot, seed=seed, steps=60, n_way=10,  # noqa: E731
                                                   augment=False, hidden_channels=8, progress=False,
                                                   val_every=None, **kw)
    teacher = EnsembleProtoNet([train(0), train(10)])
    students = {"distilled": train(5, teacher=teacher), "alone": train(5)}
    tasks = [_task(omniglot, seed) for seed in range(10)]
    with torch.no_grad():
        kl = {name: sum(Distillation(ProtoNet(net), teacher).eval().meta_loss(t).item() for t in tasks) / 10
              for name, net in students.items()}
    assert kl["distilled"] < 0.85 * kl["alone"], kl


def test_bad_student_or_teacher_is_named():
    network = conv4(hidden_channels=4)
    with pytest.raises(TypeError, match="student must be a ProtoNet, got Sequential"):
        Distillation(network, EnsembleProtoNet([network]))
    with pytest.raises(TypeError, match="teacher must be an EnsembleProtoNet, got ProtoNet"):
        Distillation(ProtoNet(network), ProtoNet(network))
