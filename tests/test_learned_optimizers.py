"""Learned optimisers (Chapter 9): the meta-gradient through an unroll against finite differences,
permutation equivariance, the meta-learner LSTM with fixed gates against SGD, a short meta-training
run against the untrained optimiser, and errors that name the bad argument."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlhelpers.evaluation import evaluate
from mlhelpers.learned_optimizers import (
    CoordinatewiseLSTM,
    MetaLearnerLSTM,
    Problem,
    model_problem,
    optimise_with,
    preprocess_gradients,
    quadratic_loss,
    quadratic_problem,
    train_optimizer,
    unroll,
)
from mlhelpers.learners import MAML
from mlhelpers.models import mlp
from mlhelpers.samplers.regression import SinusoidTasks
from mlhelpers.tasks import Task
from mlhelpers.training import meta_train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_preprocessing_follows_the_paper():
    g = torch.tensor([1.0, -1e-2, 1e-6, -1e-6, 0.0], dtype=torch.float64)
    out = preprocess_gradients(g, p=10.0)
    assert out.shape == (5, 2)
    assert torch.allclose(out[0], torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(out[1], torch.tensor([torch.log(torch.tensor(1e-2)).item() / 10, -1.0], dtype=torch.float64))
    # below exp(-10) ~ 4.5e-5: (-1, exp(10) g), which keeps the sign and the size of tiny gradients
    assert torch.allclose(out[2], torch.tensor([-1.0, 1e-6 * torch.e**10], dtype=torch.float64))
    assert out[3, 1] < 0 and out[4].tolist() == [-1.0, 0.0]


def meta_gradient(opt: CoordinatewiseLSTM, steps: int = 3) -> list[torch.Tensor]:
    problem = quadratic_problem(2, dim=3, generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                                init_std=1.0)
    opt.zero_grad()
    unroll(opt, problem, steps, second_order=True).losses.mean().backward()
    return [p.grad.clone() for p in opt.parameters()]


@pytest.mark.parametrize("preprocess", [True, False])
def test_meta_gradient_matches_central_finite_differences(preprocess):
    torch.manual_seed(0)
    opt = CoordinatewiseLSTM(hidden_size=4, num_layers=2, preprocess=preprocess, output_scale=0.1).double()
    grads = meta_gradient(opt)
    problem = quadratic_problem(2, dim=3, generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                                init_std=1.0)
    eps = 1e-6
    checked = 0
    with torch.no_grad():
        for p, g in zip(opt.parameters(), grads):
            for index in [0, p.numel() // 2, p.numel() - 1]:
                flat = p.view(-1)
                old = flat[index].item()
                flat[index] = old + eps
                plus = unroll(opt, problem, 3, meta_grad=False).losses.mean().item()
                flat[index] = old - eps
                minus = unroll(opt, problem, 3, meta_grad=False).losses.mean().item()
                flat[index] = old
                fd = (plus - minus) / (2 * eps)
                assert abs(fd - g.view(-1)[index].item()) <= 1e-6 * max(1.0, abs(fd)), (p.shape, index)
                checked += 1
    assert checked == 3 * len(grads)


def test_first_order_meta_gradient_drops_the_second_derivatives():
    torch.manual_seed(0)
    opt = CoordinatewiseLSTM(hidden_size=4, preprocess=False).double()
    exact = meta_gradient(opt)
    problem = quadratic_problem(2, dim=3, generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                                init_std=1.0)
    opt.zero_grad()
    unroll(opt, problem, 3).losses.mean().backward()
    first = [p.grad for p in opt.parameters()]
    assert max((a - b).abs().max().item() for a, b in zip(exact, first)) > 1e-6


def test_coordinatewise_optimizer_is_permutation_equivariant():
    torch.manual_seed(0)
    opt = CoordinatewiseLSTM().double()
    g = torch.randn(12, dtype=torch.float64)
    perm = torch.randperm(12)
    state = opt.initial_state(12, dtype=torch.float64)
    state = [(torch.randn_like(h), torch.randn_like(c)) for h, c in state]
    update, new = opt(g, state)
    update_p, new_p = opt(g[perm], [(h[perm], c[perm]) for h, c in state])
    assert torch.allclose(update[perm], update_p)
    assert all(torch.allclose(h[perm], hp) and torch.allclose(c[perm], cp) for (h, c), (hp, cp) in zip(new, new_p))
    # and a whole unroll: permuting the quadratic's coordinates permutes the trajectory
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(1, 5, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(1, 5, generator=gen, dtype=torch.float64)
    theta = torch.randn(1, 5, generator=gen, dtype=torch.float64)
    p5 = torch.randperm(5)
    a = unroll(opt, Problem({"theta": theta}, lambda ps, t: quadratic_loss(w, y, ps["theta"])), 4, meta_grad=False)
    b = unroll(opt, Problem({"theta": theta[:, p5]}, lambda ps, t: quadratic_loss(w[:, :, p5], y, ps["theta"])), 4,
               meta_grad=False)
    assert torch.allclose(a.losses, b.losses)
    assert torch.allclose(a.params["theta"][:, p5], b.params["theta"])


def sine_task(num_tasks: int = 2) -> Task:
    t = SinusoidTasks(5, 5, seed=0).sample(num_tasks)
    return Task(*(x.double() for x in (t.support_x, t.support_y, t.query_x, t.query_y)), t.info)


def test_meta_learner_lstm_with_fixed_gates_is_sgd():
    torch.manual_seed(0)
    model = mlp(1, 1, hidden=(8,), activation=nn.Tanh).double()
    task = sine_task()
    lstm = MetaLearnerLSTM(model, inner_steps=3, fixed_gates=(0.05, 1.0)).double()
    maml = MAML(model, inner_lr=0.05, inner_steps=3, first_order=True, strategy="loop").double()
    a, b = lstm.adapt(task.support_x, task.support_y), maml.adapt(task.support_x, task.support_y)
    assert set(a) == set(b)
    assert all(torch.allclose(a[n], b[n]) for n in a)
    # a forget gate below 1 is weight decay: c <- f c - i g
    decayed = MetaLearnerLSTM(model, inner_steps=1, fixed_gates=(0.05, 0.9)).double()
    one = MAML(model, inner_lr=0.05, inner_steps=1, first_order=True, strategy="loop").double()
    fast, sgd = decayed.adapt(task.support_x, task.support_y), one.adapt(task.support_x, task.support_y)
    for n, p in model.named_parameters():
        assert torch.allclose(fast[n], sgd[n] - 0.1 * p.detach())


class FixedTasks:
    """A sampler that always returns the same batch: training on it must lower its loss."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def sample(self, num_tasks: int) -> Task:
        return self.task


def test_meta_learner_lstm_trains_with_meta_train_and_evaluate():
    torch.manual_seed(0)
    learner = MetaLearnerLSTM(mlp(1, 1, hidden=(16,)), inner_steps=2, inner_lr_init=0.05)
    task = SinusoidTasks(5, 10, seed=0).sample(4)
    before = [p.detach().clone() for p in learner.input_gate.parameters()]
    history = meta_train(learner, FixedTasks(task), steps=30, meta_batch_size=4, progress=False, seed=0,
                         optimizer=torch.optim.Adam(learner.parameters(), lr=1e-2))
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.input_gate.parameters()))
    assert history.train_loss[-1] < 0.7 * history.train_loss[0], history.train_loss
    result = evaluate(learner, FixedTasks(task), num_episodes=8, batch_size=4)
    assert result.metric == "mse" and result.values.shape == (8,)


def test_short_meta_training_beats_the_untrained_optimizer():
    torch.manual_seed(0)
    opt = CoordinatewiseLSTM()
    gen = torch.Generator().manual_seed(0)
    held_out = quadratic_problem(100, generator=torch.Generator().manual_seed(123))
    before = unroll(opt, held_out, 20, meta_grad=False).losses.mean().item()
    train_optimizer(opt, lambda: quadratic_problem(32, generator=gen), problems=30, horizon=20, truncation=10, lr=3e-3)
    after = unroll(opt, held_out, 20, meta_grad=False).losses.mean().item()
    assert after < 0.5 * before, (before, after)


def test_optimise_with_gives_one_curve_per_function():
    problem = quadratic_problem(7, generator=torch.Generator().manual_seed(0))
    curves = optimise_with(lambda ps: torch.optim.SGD(ps, lr=0.01), problem, 5)
    assert curves.shape == (6, 7)
    assert (curves[-1] < curves[0]).float().mean() > 0.5


def test_model_problem_runs_any_module():
    torch.manual_seed(0)
    model = mlp(4, 3, hidden=(5,))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    problem = model_problem(model, lambda t: (x, y))
    run = unroll(CoordinatewiseLSTM(), problem, 3, meta_grad=False)
    assert run.losses.shape == (3, 1)
    assert set(run.params) == {n for n, _ in model.named_parameters()}


def test_errors_name_the_argument():
    opt = CoordinatewiseLSTM()
    problem = quadratic_problem(2)
    with pytest.raises(ValueError, match="steps"):
        unroll(opt, problem, 0)
    with pytest.raises(ValueError, match="model"):
        model_problem(nn.ReLU(), lambda t: (torch.zeros(1), torch.zeros(1)))
    with pytest.raises(ValueError, match="model"):
        MetaLearnerLSTM(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="state"):
        opt(torch.zeros(5), opt.initial_state(4))
    with pytest.raises(ValueError, match="grad"):
        opt(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="y must"):
        quadratic_loss(torch.zeros(2, 3, 3), torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="theta must"):
        quadratic_loss(torch.zeros(2, 3, 3), torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="truncation"):
        train_optimizer(opt, lambda: problem, problems=1, horizon=5, truncation=10)
    with pytest.raises(TypeError, match="optimizer"):
        unroll(lambda g, s: g, problem, 3)
    with pytest.raises(ValueError, match="inner_lr_init"):
        MetaLearnerLSTM(mlp(1, 1), inner_lr_init=1.5)
