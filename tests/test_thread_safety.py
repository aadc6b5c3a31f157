"""One learner used from several user threads at once gives each thread its own answer (issue 24, item 2).

``functional_call`` swaps a module's weights for the fast weights while it runs; on one shared
module, concurrent calls used to see each other's fast weights and return wrong outputs.
"""

from __future__ import annotations

import sys
import threading

import pytest
import torch
from test_validation_table import LEARNERS as PACKAGE_LEARNERS
from test_validation_table import image_task

from mlhelpers.darts import SearchNetwork, architecture_gradient
from mlhelpers.learners import (
    ANIL,
    CAVIA,
    MAML,
    MANN,
    FiLMLearner,
    MetaSGD,
    ProtoMAML,
    ProtoNet,
    Reptile,
    SiameseNet,
)
from mlhelpers.learners.functional import module_for_this_thread
from mlhelpers.models import mlp
from mlhelpers.rl import GaussianPolicy, distribution
from mlhelpers.samplers.regression import SinusoidTasks

LEARNERS = {
    "MAML": lambda: MAML(mlp(1, 1, hidden=(32, 32)), inner_lr=0.05, inner_steps=3, strategy="loop"),
    "MetaSGD": lambda: MetaSGD(mlp(1, 1, hidden=(32, 32)), inner_steps=3, strategy="loop"),
    "ANIL": lambda: ANIL(mlp(1, 1, hidden=(32, 32)), inner_lr=0.05, inner_steps=3, strategy="loop"),
    "Reptile": lambda: Reptile(mlp(1, 1, hidden=(32, 32)), inner_steps=3, strategy="loop"),
    "MAML-vmap": lambda: MAML(mlp(1, 1, hidden=(32, 32)), inner_lr=0.05, inner_steps=3, strategy="vmap"),
    "ProtoNet": lambda: ProtoNet(mlp(1, 8, hidden=(32,))),
    "MANN": lambda: MANN(1, 2, controller=8, slots=6, width=4, heads=2),
    "CAVIA": lambda: CAVIA(mlp(3, 1, hidden=(32, 32)), num_context=2, inner_steps=3, strategy="loop"),
    "CAVIA-vmap": lambda: CAVIA(mlp(3, 1, hidden=(32, 32)), num_context=2, inner_steps=3, strategy="vmap"),
    "FiLMLearner": lambda: FiLMLearner(mlp(1, 1, hidden=(32, 32)), input_shape=(1,), target_features=1,
                                       film_after=1, channels=32),
    "ProtoMAML": lambda: ProtoMAML(mlp(1, 8, hidden=(32,)), inner_lr=0.05, inner_steps=3, strategy="loop"),
    "SiameseNet": lambda: SiameseNet(mlp(1, 8, hidden=(32,)), input_shape=(1,)),
}


@pytest.fixture(autouse=True)
def frequent_thread_switches():
    """Switch threads every microsecond (not every 5 ms), so calls interleave in every test run."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _concurrently(fn, inputs, threads: int = 4, rounds: int = 2) -> list[list[torch.Tensor]]:
    """``fn(inputs[i])`` from ``threads`` threads at once, ``rounds`` times each; results per thread."""
    results = [[] for _ in range(threads)]
    errors = []
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        try:
            start.wait()
            for _ in range(rounds):
                results[i].append(fn(inputs[i]))
        except BaseException as error:  # reported by the test, not lost in the thread
            errors.append(error)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_concurrent_calls_on_one_learner_match_sequential_ones(name):
    torch.manual_seed(0)
    learner = LEARNERS[name]()
    if name in ("ProtoNet", "MANN", "ProtoMAML", "SiameseNet"):  # classifiers: the sign of y as the label
        tasks = [SinusoidTasks(5, 5, seed=i).sample(2) for i in range(4)]
        tasks = [type(t)(t.support_x, (t.support_y[..., 0] > 0).long(), t.query_x, (t.query_y[..., 0] > 0).long())
                 for t in tasks]
    else:
        tasks = [SinusoidTasks(5, 5, seed=i).sample(2) for i in range(4)]
    learner.eval()
    expected = [learner(task).detach() for task in tasks]
    results = _concurrently(lambda task: learner(task).detach(), tasks)
    for i, outputs in enumerate(results):
        for output in outputs:
            torch.testing.assert_close(output, expected[i], rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(PACKAGE_LEARNERS))
def test_every_learner_gives_each_thread_its_own_outputs_and_meta_gradients(name):
    """Every learner the package exports (the list is kept complete by test_validation_table.py), on
    image tasks: forward from four threads at once, and meta-gradients from four threads at once,
    equal the sequential ones bit for bit."""
    torch.manual_seed(0)
    make, shape = PACKAGE_LEARNERS[name]
    learner = make()
    tasks = [image_task(x_shape=shape, seed=i) for i in range(4)]
    params = [p for p in learner.parameters() if p.requires_grad]

    def outputs_and_grads(task):
        outputs = learner(task)
        return outputs.detach(), torch.autograd.grad(learner.meta_loss(task), params, allow_unused=True)

    expected = [outputs_and_grads(task) for task in tasks]
    for i, results in enumerate(_concurrently(outputs_and_grads, tasks)):
        for outputs, grads in results:
            torch.testing.assert_close(outputs, expected[i][0], rtol=0, atol=0)
            for got, want in zip(grads, expected[i][1]):
                assert (got is None) == (want is None), name
                if got is not None:
                    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_concurrent_meta_gradients_match_sequential_ones():
    torch.manual_seed(0)
    learner = MAML(mlp(1, 1, hidden=(32, 32)), inner_lr=0.05, inner_steps=3, strategy="loop")
    tasks = [SinusoidTasks(5, 5, seed=i).sample(2) for i in range(4)]
    params = list(learner.parameters())

    def grads(task):
        return torch.autograd.grad(learner.meta_loss(task), params)

    expected = [grads(task) for task in tasks]
    for i, outputs in enumerate(_concurrently(grads, tasks, rounds=3)):
        for output in outputs:
            for got, want in zip(output, expected[i]):
                torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_concurrent_architecture_gradients_match_sequential_ones():
    """DARTS' second-order step runs ``functional_call`` with per-call fast weights too."""
    torch.manual_seed(0)
    network = SearchNetwork(1, 3, hidden_channels=4, cells=1, nodes=2)
    def batch():
        return torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))

    batches = [(batch(), batch()) for _ in range(4)]
    alphas = [network.init_alphas(scale=0.5, generator=torch.Generator().manual_seed(i)) for i in range(4)]

    def gradient(i):
        return architecture_gradient(network, alphas[i], *batches[i], xi=0.1)[1]

    expected = [gradient(i) for i in range(4)]
    for i, outputs in enumerate(_concurrently(gradient, list(range(4)))):
        for output in outputs:
            torch.testing.assert_close(output, expected[i], rtol=0, atol=0)


def test_policy_with_per_task_weights_is_safe_in_threads():
    torch.manual_seed(0)
    policy = GaussianPolicy(hidden=(16,))
    obs = torch.randn(3, 5, 2)
    fast = [{n: p.detach()[None].expand(3, *p.shape) + 0.1 * i for n, p in policy.named_parameters()}
            for i in range(4)]
    expected = [distribution(policy, obs, f).mean for f in fast]
    for i, outputs in enumerate(_concurrently(lambda f: distribution(policy, obs, f).mean, fast)):
        for output in outputs:
            torch.testing.assert_close(output, expected[i], rtol=0, atol=0)


def test_module_for_this_thread_shares_the_weights_and_follows_changes():
    model = mlp(1, 1, hidden=(4,))
    assert module_for_this_thread(model) is model  # the main thread uses the module itself
    seen = {}

    def in_thread():
        replica = module_for_this_thread(model)
        seen["same object"] = replica is model
        seen["same weights"] = all(a is b for a, b in zip(replica.parameters(), model.parameters()))
        seen["cached"] = module_for_this_thread(model) is replica
        model.eval()
        seen["mode followed"] = not module_for_this_thread(model).training

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == {"same object": False, "same weights": True, "cached": True, "mode followed": True}
