"""Gradient-based meta-learners: meta-gradients against finite differences and closed forms,
loop against vmap and threads (with and without batch norm), and the behaviour the chapters rely on."""

from __future__ import annotations

import copy
import time
import weakref
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.func import functional_call

from conftest import make_dataset
from mlhelpers.evaluation import evaluate
from mlhelpers.learners import ANIL, MAML, MetaSGD, Reptile, parallel, task_loss
from mlhelpers.learners import maml as maml_module
from mlhelpers.learners.functional import PlainNorm, resolve_strategy, with_plain_norms
from mlhelpers.models import conv4, mlp
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.samplers.regression import SinusoidTasks
from mlhelpers.tasks import Task
from mlhelpers.training import meta_train

# Tiny tensors gain nothing from threads, and on a shared CPU spinning threads cost 10-50x.
pytestmark = pytest.mark.usefixtures("one_thread")


LEARNERS = {
    "maml": lambda m, **kw: MAML(m, inner_lr=0.1, inner_steps=2, **kw),
    "fomaml": lambda m, **kw: MAML(m, inner_lr=0.1, inner_steps=2, first_order=True, **kw),
    "metasgd": lambda m, **kw: MetaSGD(m, inner_lr_init=0.1, inner_steps=2, **kw),
    "anil": lambda m, **kw: ANIL(m, inner_lr=0.1, inner_steps=2, **kw),
    "reptile": lambda m, **kw: Reptile(m, inner_lr=0.1, inner_steps=2, **kw),
}


def tiny_mlp(seed: int = 0) -> nn.Sequential:
    """1 -> 4 -> 1 with tanh (smooth, so finite differences are accurate), float64."""
    torch.manual_seed(seed)
    return mlp(1, 1, hidden=(4,), activation=nn.Tanh).double()


def double(task: Task) -> Task:
    f = lambda t: t.double() if t.is_floating_point() else t  # noqa: E731
    return Task(f(task.support_x), f(task.support_y), f(task.query_x), f(task.query_y), task.info)


def sine_tasks(num_tasks: int = 3, seed: int = 0, k_shot: int = 5) -> Task:
    return double(SinusoidTasks(k_shot, 6, seed=seed).sample(num_tasks))


def image_tasks(num_tasks: int = 3, seed: int = 0) -> Task:
    """3-way 2-shot 3-query episodes of random 8x8 images, float64."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3)
    return Task(
        torch.randn(num_tasks, 6, 1, 8, 8, generator=g, dtype=torch.float64),
        labels.repeat_interleave(2).repeat(num_tasks, 1),
        torch.randn(num_tasks, 9, 1, 8, 8, generator=g, dtype=torch.float64),
        labels.repeat_interleave(3).repeat(num_tasks, 1),
    )


def small_conv(norm: str, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return conv4(1, 4, out_features=3, num_blocks=2, norm=norm, image_size=8).double()


def meta_grad(learner: nn.Module, task: Task, params: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The gradient of ``meta_loss`` with respect to ``params`` (default: all), flattened."""
    params = list(learner.parameters()) if params is None else params
    grads = torch.autograd.grad(learner.meta_loss(task), params, allow_unused=True)
    return torch.cat([torch.zeros_like(p).flatten() if g is None else g.flatten() for p, g in zip(params, grads)])


def finite_differences(learner: nn.Module, task: Task, params: list[torch.Tensor], h: float = 1e-6) -> torch.Tensor:
    """Central differences of the meta-loss with respect to every entry of ``params``."""
    out = []
    with torch.no_grad():
        for p in params:
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


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    error = float((actual - expected).norm() / expected.norm())
    assert error < rtol, f"relative error {error:.2e} >= {rtol:.0e}"


# --- meta-gradients are the derivatives they claim to be ---------------------------------------


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("steps", [1, 3])
def test_maml_meta_gradient_matches_finite_differences(steps, strategy):
    learner = MAML(tiny_mlp(), inner_lr=0.3, inner_steps=steps, strategy=strategy)
    task = sine_tasks()
    params = list(learner.parameters())
    assert_rel_close(meta_grad(learner, task), finite_differences(learner, task, params), 1e-6)


def test_first_order_maml_is_the_query_gradient_at_the_adapted_weights():
    model, task, lr, steps = tiny_mlp(), sine_tasks(), 0.3, 2
    names = [n for n, _ in model.named_parameters()]
    # By hand: SGD from theta on each support set, then the query-loss gradient at phi_i.
    expected = []
    for sx, sy, qx, qy in task.unbind():
        phi = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
        for _ in range(steps):
            loss = ((functional_call(model, phi, (sx,)) - sy) ** 2).mean()
            grads = torch.autograd.grad(loss, list(phi.values()))
            phi = {n: (phi[n] - lr * g).detach().requires_grad_() for n, g in zip(names, grads)}
        query = ((functional_call(model, phi, (qx,)) - qy) ** 2).mean()
        expected.append(torch.cat([g.flatten() for g in torch.autograd.grad(query, list(phi.values()))]))
    expected = torch.stack(expected).mean(dim=0)

    first = meta_grad(MAML(model, inner_lr=lr, inner_steps=steps, first_order=True), task)
    second = meta_grad(MAML(model, inner_lr=lr, inner_steps=steps), task)
    torch.testing.assert_close(first, expected, rtol=1e-10, atol=1e-12)
    assert float((second - first).norm()) > 1e-2 * float(first.norm()), "second order must differ"


def test_meta_sgd_learning_rate_gradient_matches_finite_differences():
    learner = MetaSGD(tiny_mlp(), inner_lr_init=0.2, inner_steps=2)
    with torch.no_grad():  # distinct rates, so that a mix-up between entries would show
        for lr in learner.learned_lrs.values():
            lr.uniform_(0.05, 0.4)
    task = sine_tasks()
    lrs = list(learner.learned_lrs.parameters())
    assert len(lrs) == len(list(learner.model.parameters()))
    grad = meta_grad(learner, task, lrs)
    assert float(grad.norm()) > 0
    assert_rel_close(grad, finite_differences(learner, task, lrs), 1e-6)
    assert_rel_close(meta_grad(learner, task, list(learner.model.parameters())),
                     finite_differences(learner, task, list(learner.model.parameters())), 1e-6)


# --- ANIL ----------------------------------------------------------------------------------------


def test_anil_adapts_only_the_head_and_computes_body_features_once():
    model, task = tiny_mlp(), sine_tasks(num_tasks=3)
    learner = ANIL(model, inner_lr=0.3, inner_steps=4, strategy="loop")
    body_calls = []
    model[0].register_forward_hook(lambda *_: body_calls.append(1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fast = learner.adapt(task.support_x, task.support_y)
    assert sorted(fast) == ["2.bias", "2.weight"]
    assert len(body_calls) == len(task), "the body must run once per task, not once per inner step"
    for n, p in fast.items():
        assert p.shape == (len(task), *before[n].shape)
        assert not torch.allclose(p, before[n].expand_as(p)), f"head parameter {n} did not adapt"
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), "adapt must not modify the model in place"


def test_anil_meta_gradient_matches_finite_differences_and_reaches_the_body():
    learner = ANIL(tiny_mlp(), inner_lr=0.3, inner_steps=2)
    task = sine_tasks()
    params = list(learner.parameters())
    grad = meta_grad(learner, task)
    body = grad[: learner.model[0].weight.numel() + learner.model[0].bias.numel()]
    assert float(body.norm()) > 1e-3, "the body must get a meta-gradient"
    assert_rel_close(grad, finite_differences(learner, task, params), 1e-6)


def test_anil_equals_meta_sgd_with_zero_body_rates():
    model, task = tiny_mlp(), sine_tasks()
    anil = ANIL(model, inner_lr=0.25, inner_steps=3)
    metasgd = MetaSGD(model, inner_lr_init=0.25, inner_steps=3)
    with torch.no_grad():
        metasgd.learned_lrs["0-weight"].zero_()
        metasgd.learned_lrs["0-bias"].zero_()
    params = list(model.parameters())
    torch.testing.assert_close(meta_grad(anil, task, params), meta_grad(metasgd, task, params), rtol=1e-10, atol=1e-12)
    # ... and differs from MAML, which also adapts the body.
    maml = meta_grad(MAML(model, inner_lr=0.25, inner_steps=3), task, params)
    assert float((maml - meta_grad(anil, task, params)).norm()) > 1e-3


# --- Reptile -------------------------------------------------------------------------------------


class DoubleSampler:
    """Float64 batches from a seeded SinusoidTasks."""

    def __init__(self, seed: int) -> None:
        self.sampler = SinusoidTasks(5, 6, seed=seed)

    def sample(self, num_tasks: int) -> Task:
        return double(self.sampler.sample(num_tasks))


@pytest.mark.parametrize("use_query", [False, True])
def test_reptile_update_is_its_definition(use_query):
    model, lr, steps, eps = tiny_mlp(), 0.1, 3, 0.5
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    task = DoubleSampler(seed=7).sample(4)
    phis, query_losses = [], []
    for sx, sy, qx, qy in task.unbind():
        x, y = (torch.cat([sx, qx]), torch.cat([sy, qy])) if use_query else (sx, sy)
        phi = {n: p.clone().requires_grad_() for n, p in theta.items()}
        for _ in range(steps):
            loss = ((functional_call(model, phi, (x,)) - y) ** 2).mean()
            grads = torch.autograd.grad(loss, list(phi.values()))
            phi = {n: (p - lr * g).detach().requires_grad_() for (n, p), g in zip(phi.items(), grads)}
        phis.append(phi)
        query_losses.append(((functional_call(model, phi, (qx,)) - qy) ** 2).mean().item())

    learner = Reptile(model, inner_lr=lr, inner_steps=steps, use_query=use_query)
    history = meta_train(learner, DoubleSampler(seed=7), steps=1, meta_batch_size=4,
                         optimizer=torch.optim.SGD(learner.parameters(), lr=eps), progress=False)
    for n, p in model.named_parameters():
        phi_bar = torch.stack([phi[n] for phi in phis]).mean(dim=0)
        expected = theta[n] + eps * (phi_bar - theta[n])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)
        assert not torch.allclose(p, theta[n])
    assert history.train_loss[0] == pytest.approx(sum(query_losses) / len(query_losses), rel=1e-10)


def test_reptile_adam_inner_loop_is_torch_adam_with_beta1_zero_on_its_mini_batches():
    """The own inner loop: Adam (beta1 = 0) on mini-batches taken in turn from a shuffled copy,
    reshuffled when they run out; checked against torch.optim.Adam on the same batches."""
    model, lr, steps, batch = tiny_mlp(), 0.05, 4, 4
    task = DoubleSampler(seed=3).sample(2)
    learner = Reptile(model, inner_lr=lr, inner_steps=steps, inner_optimizer="adam", inner_batch_size=batch)
    torch.manual_seed(11)
    fast = learner.adapt(task.support_x, task.support_y)
    torch.manual_seed(11)  # the same draws: a permutation per pass, per task
    n = task.support_x.shape[1]
    for i, (sx, sy) in enumerate(zip(task.support_x, task.support_y)):
        clone = copy.deepcopy(model)
        optimizer = torch.optim.Adam(clone.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-8)
        order, used = torch.randperm(n), 0
        for _ in range(steps):
            if used + batch > n:
                order, used = torch.randperm(n), 0
            index = order[used:used + batch]
            used += batch
            optimizer.zero_grad()
            ((clone(sx[index]) - sy[index]) ** 2).mean().backward()
            optimizer.step()
        for name, p in clone.named_parameters():
            torch.testing.assert_close(fast[name][i], p.detach(), rtol=1e-10, atol=1e-12)
    assert n % batch != 0  # the reshuffle after a partial pass was exercised
    assert all(not torch.allclose(fast[name][0], p) for name, p in model.named_parameters())


def test_reptile_own_loop_with_full_batch_sgd_is_the_shared_inner_loop():
    model = tiny_mlp()
    task = DoubleSampler(seed=5).sample(3)
    shared = Reptile(model, inner_lr=0.1, inner_steps=3).adapt(task.support_x, task.support_y)
    own = Reptile(model, inner_lr=0.1, inner_steps=3, inner_batch_size=task.support_x.shape[1])
    for name, p in own.adapt(task.support_x, task.support_y).items():
        torch.testing.assert_close(p, shared[name], rtol=1e-10, atol=1e-12)


def test_reptile_adam_update_is_still_theta_minus_the_mean_of_phi():
    model, eps = tiny_mlp(), 0.5
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner = Reptile(model, inner_lr=0.05, inner_steps=3, inner_optimizer="adam", use_query=True)
    task = DoubleSampler(seed=9).sample(3)
    with torch.no_grad():
        learner.train()
        x, y = torch.cat([task.support_x, task.query_x], 1), torch.cat([task.support_y, task.query_y], 1)
        phi = learner._own_inner_loop(x, y, learner.inner_steps)  # full batch: no randomness
    meta_train(learner, SimpleNamespace(sample=lambda num_tasks: task), steps=1, meta_batch_size=3,
               optimizer=torch.optim.SGD(learner.parameters(), lr=eps), progress=False)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), theta[n] + eps * (phi[n].mean(0) - theta[n]), rtol=1e-10, atol=1e-12)


# --- loop and vmap agree, with batch norm too ------------------------------------------------------


@pytest.mark.parametrize("kind", list(LEARNERS))
@pytest.mark.parametrize("backbone", ["mlp", "conv-none", "conv-task"])
def test_vmap_and_loop_give_the_same_meta_gradient(kind, backbone):
    if backbone == "mlp":
        model, task = mlp(1, 1, hidden=(8, 8)).double(), sine_tasks()
    else:
        model, task = small_conv(backbone.split("-")[1]), image_tasks()
    loop = LEARNERS[kind](model, strategy="loop")
    vmap = LEARNERS[kind](copy.deepcopy(model), strategy="vmap")
    if kind == "metasgd":  # same distinct rates in both
        torch.manual_seed(1)
        for a, b in zip(loop.learned_lrs.values(), vmap.learned_lrs.values()):
            with torch.no_grad():
                a.uniform_(0.05, 0.2)
                b.copy_(a)
    a, b = meta_grad(loop, task), meta_grad(vmap, task)
    assert float(a.norm()) > 0
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8 * float(a.norm()))
    loop.eval(), vmap.eval()
    torch.testing.assert_close(vmap(task), loop(task), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("norm", [
    lambda: nn.BatchNorm2d(3, track_running_stats=False),
    lambda: nn.InstanceNorm2d(3, affine=True),
    lambda: nn.LayerNorm([3, 4, 4]),
    lambda: nn.GroupNorm(1, 3),
], ids=["batch", "instance", "layer", "group"])
def test_vmap_second_order_is_exact_with_other_norms(norm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), norm(), nn.Tanh(), nn.Flatten(), nn.Linear(48, 2)).double()
    with torch.no_grad():  # non-trivial affine parameters
        for p in model[1].parameters():
            p.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(0)
    task = Task(torch.randn(3, 4, 1, 4, 4, generator=g, dtype=torch.float64), torch.tensor([[0, 1, 0, 1]] * 3),
                torch.randn(3, 5, 1, 4, 4, generator=g, dtype=torch.float64), torch.tensor([[0, 1, 1, 0, 1]] * 3))
    loop = MAML(model, inner_lr=0.5, strategy="loop")
    vmap = MAML(model, inner_lr=0.5, strategy="vmap")
    a = meta_grad(loop, task)
    assert_rel_close(meta_grad(vmap, task), a, 1e-10)
    # The loop is the reference: check it along a random direction with central differences.
    params, h = list(model.parameters()), 1e-6
    direction = [torch.randn_like(p) for p in params]
    with torch.no_grad():
        shifted = []
        for sign in (1, -1):
            for p, d in zip(params, direction):
                p.add_(sign * h * d)
            shifted.append(loop.meta_loss(task).item())
            for p, d in zip(params, direction):
                p.sub_(sign * h * d)
    slope = (shifted[0] - shifted[1]) / (2 * h)
    assert float(a @ torch.cat([d.flatten() for d in direction])) == pytest.approx(slope, rel=1e-6)


def test_plain_norms_compute_what_the_fused_kernels_compute():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False), nn.InstanceNorm2d(3, affine=True),
                          nn.LayerNorm([3, 5, 5]), nn.GroupNorm(1, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(0.5, 1.5)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    plain = with_plain_norms(model)
    # group norm is exact under vmap and stays fused
    assert [type(m) for m in plain] == [PlainNorm, PlainNorm, PlainNorm, nn.GroupNorm]
    assert [type(m) for m in model] == [nn.BatchNorm2d, nn.InstanceNorm2d, nn.LayerNorm, nn.GroupNorm], \
        "the model itself must be left alone"
    params = dict(model.named_parameters())
    assert all(params[n] is p for n, p in plain.named_parameters()) and len(params) == len(list(plain.parameters())), \
        "same names, same tensors"
    torch.testing.assert_close(plain(x), model(x))


@pytest.fixture
def two_threads():
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)


@pytest.mark.parametrize("kind", list(LEARNERS))
@pytest.mark.parametrize("backbone", ["mlp", "conv-task"])
def test_threads_and_loop_give_the_same_meta_gradient(kind, backbone, two_threads):
    if backbone == "mlp":
        model, task = mlp(1, 1, hidden=(8, 8)).double(), sine_tasks(num_tasks=5)
    else:
        model, task = small_conv("task"), image_tasks(num_tasks=5)
    loop = LEARNERS[kind](model, strategy="loop")
    threads = LEARNERS[kind](copy.deepcopy(model), strategy="threads")
    threads.load_state_dict(loop.state_dict())
    a = meta_grad(loop, task)
    loss = threads.meta_loss(task)
    assert loss.item() == pytest.approx(loop.meta_loss(task).item(), rel=1e-12)
    loss.backward()
    b = torch.cat([p.grad.flatten() for p in threads.parameters()])
    assert float(a.norm()) > 0
    assert_rel_close(b, a, 1e-10)
    threads.meta_loss(task).backward()  # gradients accumulate like any other backward
    assert_rel_close(torch.cat([p.grad.flatten() for p in threads.parameters()]), 2 * a, 1e-10)
    assert torch.get_num_threads() == 2, "the caller's intra-op thread count must come back"
    loop.eval(), threads.eval()
    torch.testing.assert_close(threads(task), loop(task), rtol=1e-10, atol=1e-12)


def test_threads_leave_the_learner_and_its_parameters_in_place(two_threads):
    model = small_conv("task")
    learner = MAML(model, inner_lr=0.1, strategy="threads")
    before = {n: p for n, p in learner.named_parameters()}
    learner.meta_loss(image_tasks(num_tasks=4)).backward()
    after = dict(learner.named_parameters())
    assert all(after[n] is p for n, p in before.items())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in after.items() if "bias" not in n)


def test_auto_strategy_follows_the_device():
    assert resolve_strategy("auto", torch.device("cpu")) == "loop"
    assert resolve_strategy("auto", torch.device("cuda", 0)) == "vmap"
    assert resolve_strategy("vmap", torch.device("cpu")) == "vmap"
    assert resolve_strategy("threads", torch.device("cpu")) == "threads"
    assert MAML(mlp(1, 1)).resolved_strategy(torch.device("cpu")) == "loop"


def test_auto_times_loop_and_threads_once_and_keeps_the_meta_gradient(two_threads, monkeypatch):
    """On a CPU with two intra-op threads, "auto" times the loop against threads on its first training
    meta-batch (batch norm in the model), delivers the same meta-gradient, and does not time again."""
    timed = []

    def spy(runs, rounds=2):
        timed.append(sorted(runs))
        return parallel.fastest(runs, rounds)

    monkeypatch.setattr(maml_module, "fastest", spy)
    model, task = small_conv("task"), image_tasks(num_tasks=5)
    auto = MAML(model, inner_lr=0.1, inner_steps=2)
    loop = MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=2, strategy="loop")
    assert auto.measured_strategy is None
    a = meta_grad(auto, task)
    assert timed == [["loop", "threads"]]
    assert auto.measured_strategy in ("loop", "threads")
    assert auto.resolved_strategy(torch.device("cpu")) == auto.measured_strategy
    assert_rel_close(a, meta_grad(loop, task), 1e-10)
    meta_grad(auto, task)
    assert len(timed) == 1, "the choice is kept for the learner's later meta-batches"
    torch.set_num_threads(1)
    assert auto.measured_strategy is None and auto.resolved_strategy(torch.device("cpu")) == "loop", \
        "with one intra-op thread there is nothing to choose: the loop"
    meta_grad(auto, task)
    assert len(timed) == 1, "one thread: no timing"


def test_auto_does_not_time_evaluation_or_single_tasks(two_threads, monkeypatch):
    monkeypatch.setattr(maml_module, "fastest", lambda runs, rounds=2: pytest.fail("timed strategies"))
    learner = MAML(small_conv("task"), inner_lr=0.1)
    learner.meta_loss(image_tasks(num_tasks=1)).backward()  # one task: nothing to batch
    learner.eval()
    learner.meta_loss(image_tasks(num_tasks=3))  # evaluation mode
    with torch.no_grad():
        learner.train().meta_loss(image_tasks(num_tasks=3))  # no autograd
    assert learner.measured_strategy is None


def test_fastest_chooses_the_quicker_run_and_returns_its_result():
    calls = []

    def slow():
        calls.append("slow")
        time.sleep(0.02)
        return "slow result"

    def quick():
        calls.append("quick")
        return "quick result"

    assert parallel.fastest({"slow": slow, "quick": quick}, rounds=3) == ("quick", "quick result")
    assert calls == ["slow", "quick"] * 3, "the runs are taken in turn"
    with pytest.raises(ValueError, match="rounds must be at least 1, got 0"):
        parallel.fastest({"quick": quick}, rounds=0)
    with pytest.raises(ValueError, match="runs must name at least one callable"):
        parallel.fastest({})


# --- adaptation and meta-training do their job ---------------------------------------------------


def test_adaptation_lowers_the_support_loss_on_sinusoids():
    torch.manual_seed(0)
    learner = MAML(mlp(1, 1), inner_lr=0.01, inner_steps=1, eval_inner_steps=5).eval()
    task = SinusoidTasks(10, 10, seed=0).sample(6)
    before = task_loss(learner.model(task.support_x), task.support_y)  # the initial weights
    after = task_loss(learner.predict(learner.adapt(task.support_x, task.support_y), task.support_x), task.support_y)
    assert after.item() < 0.9 * before.item()


def test_adaptation_lowers_the_support_loss_on_few_shot_classification():
    torch.manual_seed(0)
    model = conv4(1, 8, out_features=3, num_blocks=2, norm="task", image_size=6)
    task = EpisodicSampler(make_dataset(), n_way=3, k_shot=2, q_query=2, seed=0).sample(4)
    for learner in (MAML(model, inner_lr=0.05, inner_steps=3), ANIL(model, inner_lr=0.05, inner_steps=3),
                    MetaSGD(model, inner_lr_init=0.05, inner_steps=3), Reptile(model, inner_lr=0.05, inner_steps=3)):
        logits0 = model(task.support_x.flatten(0, 1)).unflatten(0, (4, 6))
        before = torch.nn.functional.cross_entropy(logits0.transpose(1, 2), task.support_y, reduction="none").mean(1)
        logits = learner.predict(learner.adapt(task.support_x, task.support_y), task.support_x)
        after = torch.nn.functional.cross_entropy(logits.transpose(1, 2), task.support_y, reduction="none").mean(1)
        assert (after < before).all(), f"{type(learner).__name__}: {before.tolist()} -> {after.tolist()}"


def test_eval_mode_takes_eval_inner_steps():
    model, task = tiny_mlp(), sine_tasks()
    learner = MAML(model, inner_lr=0.3, inner_steps=1, eval_inner_steps=4)
    three = MAML(model, inner_lr=0.3, inner_steps=4)
    train_fast = learner.adapt(task.support_x, task.support_y)
    eval_fast = learner.eval().adapt(task.support_x, task.support_y)
    for n in eval_fast:
        torch.testing.assert_close(eval_fast[n], three.adapt(task.support_x, task.support_y)[n])
        assert not torch.allclose(eval_fast[n], train_fast[n])
    with torch.no_grad():
        detached = learner.adapt(task.support_x, task.support_y)
    assert all(not p.requires_grad for p in detached.values())
    torch.testing.assert_close(detached, {n: p.detach() for n, p in eval_fast.items()})


def test_meta_training_maml_on_sinusoids_lowers_the_query_loss_on_new_tasks():
    torch.manual_seed(0)
    learner = MAML(mlp(1, 1), inner_lr=0.01, inner_steps=1)
    test = lambda: evaluate(learner, SinusoidTasks(10, 10, seed=123), num_episodes=100, batch_size=50).mean  # noqa: E731
    before = test()
    meta_train(learner, SinusoidTasks(10, 10, seed=1), steps=300, meta_batch_size=4,
               optimizer=torch.optim.Adam(learner.parameters(), lr=5e-3), progress=False)
    after = test()
    assert after < 0.6 * before, f"MSE after adaptation {before:.3f} -> {after:.3f}"


# --- the initial weights get a gradient ------------------------------------------------------------


@pytest.mark.parametrize("kind", list(LEARNERS))
def test_every_initial_weight_gets_a_nonzero_meta_gradient(kind):
    model = mlp(1, 1, hidden=(8,)).double()
    learner = LEARNERS[kind](model)
    learner.meta_loss(sine_tasks()).backward()
    for n, p in learner.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, f"{n} got no meta-gradient"


def test_deepcopy_and_inner_optimiser_bug_gives_no_meta_gradient():
    """Documentation: the popular 'copy the model, step an optimiser, backprop' MAML is broken."""
    model, task = mlp(1, 1, hidden=(8,)).double(), sine_tasks(num_tasks=1)
    fast = copy.deepcopy(model)
    inner = torch.optim.SGD(fast.parameters(), lr=0.1)
    task_loss(fast(task.support_x[0])[None], task.support_y[0][None]).backward()
    inner.step()  # in-place, outside the graph: the copy forgets where its weights came from
    task_loss(fast(task.query_x[0])[None], task.query_y[0][None]).backward()
    assert all(p.grad is None for p in model.parameters())
    # The functional inner loop of MAML does reach them.
    MAML(model, inner_lr=0.1).meta_loss(task[0]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# --- bad inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MAML, MetaSGD, ANIL, Reptile])
def test_running_statistics_are_refused_with_the_reason(cls):
    with pytest.raises(ValueError, match=r"track_running_stats=True.*leak.*norm='task'"):
        cls(conv4(hidden_channels=4, out_features=2, norm="batch"))
    cls(conv4(hidden_channels=4, out_features=2, norm="task"))  # per-task statistics are fine


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="inner_steps must be an int >= 0, got -1"):
        MAML(mlp(1, 1), inner_steps=-1)
    with pytest.raises(TypeError, match="inner_steps must be an int >= 0, got float 1.5"):
        MAML(mlp(1, 1), inner_steps=1.5)
    with pytest.raises(ValueError, match="eval_inner_steps"):
        Reptile(mlp(1, 1), eval_inner_steps=-2)
    with pytest.raises(ValueError, match="strategy must be one of 'auto', 'loop', 'threads', 'vmap', got 'jit'"):
        MetaSGD(mlp(1, 1), strategy="jit")
    with pytest.raises(ValueError, match="inner_lr must be a finite number > 0, got 0"):
        MAML(mlp(1, 1), inner_lr=0)
    with pytest.raises(TypeError, match="first_order must be a bool"):
        MAML(mlp(1, 1), first_order="yes")
    with pytest.raises(TypeError, match="nn.Sequential"):
        ANIL(nn.Linear(1, 1))
    with pytest.raises(ValueError, match=r"head must be an int between 1 and len\(model\)=3, got 4"):
        ANIL(mlp(1, 1, hidden=(4,)), head=4)
    with pytest.raises(TypeError, match="head must be an int, got float 1.0"):
        ANIL(mlp(1, 1, hidden=(4,)), head=1.0)
    learner = MAML(mlp(1, 1))
    task = SinusoidTasks(3, 3, seed=0).sample(2)
    fast = learner.adapt(task.support_x, task.support_y)
    with pytest.raises(ValueError, match="fast-weight dict returned by adapt"):
        learner.predict({"0.weight": fast["0.weight"]}, task.query_x)
    with pytest.raises(ValueError, match="fast weights of \\[2\\] tasks but query_x holds 1"):
        learner.predict(fast, task.query_x[:1])
    with pytest.raises(ValueError, match="support_x and support_y"):
        learner.adapt(task.support_x, task.support_y[:1])


def saved_tensor_bytes_alive(learner: MAML, task, loss_fn) -> int:
    """Bytes of the tensors autograd saved during ``loss_fn(task)`` that are still alive after it
    returns (parameters and the task's own tensors left out): the graph the loss still holds."""
    refs = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        refs.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(task)
    keep = {id(t) for t in (*learner.parameters(), task.support_x, task.query_x, task.support_y, task.query_y)}
    alive = {id(t): t for t in (r() for r in refs) if t is not None and id(t) not in keep}
    del loss
    return sum(t.numel() * t.element_size() for t in alive.values())


def test_loop_meta_loss_frees_each_tasks_graph():
    """The default strategy holds no task's graph once meta_loss returns (each task's gradient was
    taken at once), as a hand-written per-task loop; the batched meta-loss holds every task's."""
    model, task = small_conv("task"), image_tasks(num_tasks=6)
    learner = MAML(model, inner_lr=0.1, strategy="loop")
    batched = saved_tensor_bytes_alive(learner, task, learner.batch_meta_loss)
    default = saved_tensor_bytes_alive(learner, task, learner.meta_loss)
    assert batched > 0
    assert default < 0.05 * batched, (default, batched)


def test_a_second_differentiation_of_a_loop_meta_loss_is_refused():
    learner = MAML(tiny_mlp(), inner_lr=0.1, strategy="loop")
    loss = learner.meta_loss(sine_tasks(num_tasks=3))
    with pytest.raises(RuntimeError, match="strategy='vmap'"):
        torch.autograd.grad(loss, list(learner.parameters()), create_graph=True)
    vmap = MAML(tiny_mlp(), inner_lr=0.1, strategy="vmap")  # keeps the graph: a Hessian-vector product works
    (g,) = torch.autograd.grad(vmap.meta_loss(sine_tasks(num_tasks=3)), [vmap.model[0].weight], create_graph=True)
    (hv,) = torch.autograd.grad(g.sum(), [vmap.model[0].weight])
    assert hv.abs().sum() > 0
