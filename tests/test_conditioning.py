"""Task conditioning (Chapter 3, section 3.5): CAVIA's meta-gradient against finite differences,
its inner loop against a by-hand step, and what FiLMLearner's task embedding must satisfy."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mlhelpers.evaluation import evaluate
from mlhelpers.learners import CAVIA, FiLMLearner, task_loss
from mlhelpers.models import mlp
from mlhelpers.samplers.regression import SinusoidTasks
from mlhelpers.tasks import Task
from mlhelpers.training import meta_train

pytestmark = pytest.mark.usefixtures("one_thread")


def double(task: Task) -> Task:
    f = lambda t: t.double() if t.is_floating_point() else t  # noqa: E731
    return Task(f(task.support_x), f(task.support_y), f(task.query_x), f(task.query_y), task.info)


def sine_tasks(num_tasks: int = 3, seed: int = 0, k_shot: int = 5) -> Task:
    return double(SinusoidTasks(k_shot, 6, seed=seed).sample(num_tasks))


def tiny_cavia(num_context: int = 2, seed: int = 0, **kwargs) -> CAVIA:
    """1 + context -> 5 -> 1 with tanh (smooth, so finite differences are accurate), float64."""
    torch.manual_seed(seed)
    return CAVIA(mlp(1 + num_context, 1, hidden=(5,), activation=nn.Tanh), num_context=num_context,
                 **kwargs).double()


def tiny_film_cavia(seed: int = 0, **kwargs) -> CAVIA:
    """A conv net whose first conv's 3 channels FiLM modulates from a 2-number context, float64."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    return CAVIA(net, num_context=2, film_after=0, channels=3, **kwargs).double()


def image_tasks(num_tasks: int = 2, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3)
    return Task(torch.randn(num_tasks, 6, 1, 6, 6, generator=g, dtype=torch.float64),
                labels.repeat_interleave(2).repeat(num_tasks, 1),
                torch.randn(num_tasks, 6, 1, 6, 6, generator=g, dtype=torch.float64),
                labels.repeat_interleave(2).repeat(num_tasks, 1))


def meta_grad(learner: nn.Module, task: Task) -> torch.Tensor:
    grads = torch.autograd.grad(learner.meta_loss(task), list(learner.parameters()))
    return torch.cat([g.flatten() for g in grads])


def finite_differences(learner: nn.Module, task: Task, h: float = 1e-6) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for p in learner.parameters():
            flat = p.view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + h
                up = learner.meta_loss(task).item()
                flat[i] = old - h
                down = learner.meta_loss(task).item()
                flat[i] = old
                out.append((up - down) / (2 * h))
    return torch.tensor(out, dtype=torch.float64)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --- the meta-gradient ------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("steps", [1, 3])
def test_cavia_meta_gradient_matches_finite_differences(steps, strategy):
    learner = tiny_cavia(inner_lr=0.5, inner_steps=steps, strategy=strategy)
    task = sine_tasks()
    assert rel_error(meta_grad(learner, task), finite_differences(learner, task)) < 1e-6


def test_cavia_film_meta_gradient_matches_finite_differences():
    learner = tiny_film_cavia(inner_lr=0.5, inner_steps=2, strategy="loop")
    task = image_tasks()
    grad = meta_grad(learner, task)
    assert float(learner.film.linear.weight.numel()) > 0
    assert rel_error(grad, finite_differences(learner, task)) < 1e-6


def test_second_order_differs_from_first_order_which_is_the_query_gradient_at_the_fixed_context():
    task = sine_tasks()
    second = tiny_cavia(inner_lr=0.5, inner_steps=2)
    first = copy.deepcopy(second)
    first.first_order = True
    contexts = first.adapt(task.support_x, task.support_y).detach()
    expected = torch.autograd.grad(task_loss(first.predict(contexts, task.query_x), task.query_y),
                                   list(first.parameters()))
    expected = torch.cat([g.flatten() for g in expected])
    torch.testing.assert_close(meta_grad(first, task), expected, rtol=1e-10, atol=1e-12)
    assert rel_error(meta_grad(second, task), expected) > 1e-2, "second order must differ"


def test_loop_and_vmap_give_the_same_contexts_and_meta_gradient():
    task = sine_tasks(num_tasks=4)
    loop = tiny_cavia(inner_lr=0.5, inner_steps=2, strategy="loop")
    vmap = copy.deepcopy(loop)
    vmap.strategy = "vmap"
    torch.testing.assert_close(vmap.adapt(task.support_x, task.support_y),
                               loop.adapt(task.support_x, task.support_y))
    torch.testing.assert_close(meta_grad(vmap, task), meta_grad(loop, task))


# --- the inner loop ---------------------------------------------------------------------------


def test_zero_inner_steps_is_the_network_with_a_zero_context():
    learner = tiny_cavia(num_context=3, inner_steps=0)
    task = sine_tasks()
    inputs = torch.cat([task.query_x, torch.zeros(*task.query_x.shape[:2], 3, dtype=torch.float64)], dim=-1)
    torch.testing.assert_close(learner(task), learner.model(inputs))
    assert learner.adapt(task.support_x, task.support_y).abs().max() == 0


def test_one_inner_step_is_a_gradient_step_on_the_context_alone():
    learner, task, lr = tiny_cavia(inner_lr=0.7), sine_tasks(), 0.7
    before = [p.detach().clone() for p in learner.parameters()]
    contexts = learner.adapt(task.support_x, task.support_y)
    for i, (sx, sy, _, _) in enumerate(task.unbind()):
        c = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        loss = ((learner.model(torch.cat([sx, c.expand(len(sx), -1)], 1)) - sy) ** 2).mean()
        (g,) = torch.autograd.grad(loss, c)
        torch.testing.assert_close(contexts[i], -lr * g)
    assert all(torch.equal(a, b) for a, b in zip(before, learner.parameters())), "the network is not adapted"


def test_eval_mode_uses_eval_inner_steps_and_detaches_under_no_grad():
    learner, task = tiny_cavia(inner_steps=1, eval_inner_steps=4), sine_tasks()
    learner.eval()
    with torch.no_grad():
        contexts = learner.adapt(task.support_x, task.support_y)
    assert not contexts.requires_grad
    by_hand = copy.deepcopy(learner).train()
    by_hand.inner_steps = 4
    torch.testing.assert_close(contexts, by_hand.adapt(task.support_x, task.support_y).detach())


# --- FiLMLearner ------------------------------------------------------------------------------


def film_learner(seed: int = 0) -> FiLMLearner:
    torch.manual_seed(seed)
    return FiLMLearner(mlp(1, 1, hidden=(16, 16)), input_shape=(1,), target_features=1, film_after=1,
                       channels=16, embed_dim=8, encoder_hidden=(16,)).double()


def test_film_embedding_ignores_the_order_of_the_support_set_and_needs_no_gradient():
    learner, task = film_learner(), sine_tasks(k_shot=7)
    order = torch.randperm(7)
    with torch.no_grad():
        z = learner.adapt(task.support_x, task.support_y)
        shuffled = learner.adapt(task.support_x[:, order], task.support_y[:, order])
    torch.testing.assert_close(z, shuffled)
    assert not FiLMLearner.needs_grad_to_adapt


def test_film_outputs_depend_on_the_support_set_and_the_encoder_gets_a_meta_gradient():
    learner, task = film_learner(), sine_tasks()
    other = sine_tasks(seed=1)
    same_query = Task(other.support_x, other.support_y, task.query_x, task.query_y)
    assert (learner(task) - learner(same_query)).abs().max() > 1e-3
    learner.meta_loss(task).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.encoder.parameters())


def test_film_with_a_zero_embedding_is_the_plain_network():
    learner, task = film_learner(), sine_tasks()
    zero = torch.zeros(len(task), 8, dtype=torch.float64)
    torch.testing.assert_close(learner.predict(zero, task.query_x), learner.model(task.query_x))


# --- they learn: below the error no fixed network can reach -------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["CAVIA", "FiLMLearner"])
def test_short_training_beats_every_unconditioned_network(kind):
    """One network for all sinusoids predicts at best the mean curve, whose MSE on new tasks is about
    2.9 (amplitude 0.1-5, phase 0-pi). A few hundred meta-steps of either learner go far below it."""
    torch.manual_seed(0)
    if kind == "CAVIA":
        learner = CAVIA(mlp(1 + 5, 1), num_context=5, inner_lr=1.0, inner_steps=1, strategy="vmap")
    else:
        learner = FiLMLearner(mlp(1, 1), input_shape=(1,), target_features=1, film_after=1, channels=40,
                              strategy="vmap")
    meta_train(learner, SinusoidTasks(10, 10, seed=1), steps=600, meta_batch_size=25, seed=2, progress=False)
    result = evaluate(learner, SinusoidTasks(10, 100, seed=3), 200)
    assert result.mean + result.ci95 < 1.5, result


def test_vmap_second_order_through_batch_norm_matches_the_loop():
    """Per-task batch norm in front of the FiLM layer: vmap and the loop give one meta-gradient."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, track_running_stats=False), nn.Tanh(), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 3))
    loop = CAVIA(net, num_context=2, inner_lr=0.5, inner_steps=2, film_after=1, channels=3, strategy="loop").double()
    vmap = copy.deepcopy(loop)
    vmap.strategy = "vmap"
    task = image_tasks(num_tasks=3)
    torch.testing.assert_close(meta_grad(vmap, task), meta_grad(loop, task))
