import torch
from torch import nn

from conftest import make_dataset
from mlhelpers.learners import ProtoNet, class_prototypes, refine_prototypes, task_loss, task_metric
from mlhelpers.models import conv4
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.tasks import Task


def test_prototypes_are_class_means():
    emb = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]])
    labels = torch.tensor([[0, 0, 1]])
    torch.testing.assert_close(class_prototypes(emb, labels, 2), torch.tensor([[[1.0, 0.0], [0.0, 4.0]]]))


def test_missing_class_is_an_error():
    emb, labels = torch.zeros(1, 2, 3), torch.tensor([[0, 2]])
    try:
        class_prototypes(emb, labels, 3)
    except ValueError as error:
        assert "class 1 has none in task 0; per-class counts were [[1, 0, 1]]" in str(error)
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


# --- transductive prototypes (soft k-means, Ren et al. 2018) --------------------------------------


def test_one_refinement_step_matches_its_formula():
    prototypes = torch.tensor([[[0.0, 0.0], [4.0, 0.0]]])
    counts = torch.tensor([[1.0, 2.0]])
    queries = torch.tensor([[[1.0, 0.0], [3.0, 1.0], [2.0, 2.0]]])
    w = (-torch.cdist(queries, prototypes).pow(2)).softmax(-1)[0]  # [Q, N]
    expected = torch.stack([
        (counts[0, n] * prototypes[0, n] + (w[:, n, None] * queries[0]).sum(0)) / (counts[0, n] + w[:, n].sum())
        for n in range(2)])
    refined = refine_prototypes(prototypes, counts, queries, lambda p, q: (-torch.cdist(q, p).pow(2)).softmax(-1), 1)
    torch.testing.assert_close(refined, expected[None])
    same = refine_prototypes(prototypes, counts, queries, lambda p, q: None, 0)
    assert same is prototypes


def test_refinement_with_the_queries_fixes_an_unlucky_support_example():
    # Class 0's one support example lies off its class: its 10 queries sit around (0.4, 0), class 1's
    # around (3, 0), next to class 1's support example. Inductively the boundary is at x = 0.5,
    # through class 0's queries; the queries pull both prototypes to their clusters.
    torch.manual_seed(0)
    support = torch.tensor([[[-2.0, 0.0], [3.0, 0.0]]])
    queries = torch.cat([torch.randn(10, 2) * 0.3 + torch.tensor([0.4, 0.0]),
                         torch.randn(10, 2) * 0.3 + torch.tensor([3.0, 0.0])])[None]
    labels = torch.tensor([[0] * 10 + [1] * 10])
    inductive = ProtoNet(nn.Flatten())
    transductive = ProtoNet(nn.Flatten(), transductive_steps=3)
    task = Task(support, torch.tensor([[0, 1]]), queries, labels)
    assert task_metric(inductive(task), labels) < 0.9
    assert task_metric(transductive(task), labels) == 1.0
    refined = transductive.predict(transductive.adapt(support, task.support_y), queries)
    torch.testing.assert_close(refined, inductive(task))


def test_transductive_predictions_follow_the_queries_order():
    torch.manual_seed(0)
    learner = ProtoNet(conv4(hidden_channels=8, num_blocks=2), transductive_steps=2).eval()
    task = EpisodicSampler(make_dataset(size=8), 3, 1, 3, seed=0).sample(2)
    perm = torch.randperm(task.n_query)
    with torch.no_grad():
        out = learner(task)
        permuted = learner(Task(task.support_x, task.support_y, task.query_x[:, perm], task.query_y[:, perm]))
        assert not torch.allclose(out, ProtoNet(learner.backbone)(task))  # the queries changed the prototypes
    torch.testing.assert_close(permuted, out[:, perm], atol=1e-5, rtol=1e-5)
