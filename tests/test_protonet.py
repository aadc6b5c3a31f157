import torch
from torch import nn

from conftest import make_dataset
from mlhelpers.episodes import EpisodicSampler
from mlhelpers.learners import ProtoNet, class_prototypes, task_loss, task_metric
from mlhelpers.models import conv4


def test_prototypes_are_class_means():
    emb = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]])
    labels = torch.tensor([[0, 0, 1]])
    torch.testing.assert_close(class_prototypes(emb, labels, 2), torch.tensor([[[1.0, 0.0], [0.0, 4.0]]]))


def test_missing_class_is_an_error():
    emb, labels = torch.zeros(1, 2, 3), torch.tensor([[0, 2]])
    try:
        class_prototypes(emb, labels, 3)
    except ValueError as error:
        assert "per-class counts were [[1.0, 0.0, 1.0]]" in str(error)
    else:
        raise AssertionError("a class without support examples must raise")


def test_logits_are_negative_squared_distances_with_identity_backbone():
    learner = ProtoNet(nn.Flatten())
    support = torch.tensor([[[0.0, 0.0], [4.0, 0.0]]])
    query = torch.tensor([[[1.0, 0.0], [4.0, 1.0]]])
    logits = learner.predict(learner.adapt(support, torch.tensor([[0, 1]])), query)
    torch.testing.assert_close(logits, torch.tensor([[[-1.0, -9.0], [-17.0, -1.0]]]))


def test_predictions_invariant_to_support_order():
    torch.manual_seed(0)
    learner = ProtoNet(conv4(hidden_channels=8, num_blocks=2)).eval()
    task = EpisodicSampler(make_dataset(size=8), 3, 2, 2, seed=0).sample(2)
    perm = torch.randperm(task.n_support)
    a = learner.predict(learner.adapt(task.support_x, task.support_y), task.query_x)
    b = learner.predict(learner.adapt(task.support_x[:, perm], task.support_y[:, perm]), task.query_x)
    torch.testing.assert_close(a, b)
    assert a.shape == (2, 6, 3)


def test_task_loss_and_metric_dispatch_on_label_dtype():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
    labels = torch.tensor([[0, 0]])
    assert task_metric(logits, labels).tolist() == [0.5]
    torch.testing.assert_close(task_loss(logits, labels), torch.nn.functional.cross_entropy(logits[0], labels[0]))
    pred, target = torch.zeros(2, 3, 1), torch.ones(2, 3, 1)
    assert task_metric(pred, target).tolist() == [1.0, 1.0]
    assert task_loss(pred, target).item() == 1.0
