"""The same seed gives the same numbers on the CPU: samplers, training, evaluation, resumed runs.

Every comparison is exact (``torch.equal`` / ``==`` on floats), in this process and in a fresh one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from conftest import assert_same_state, synthetic_dataset
from mlhelpers.checkpoint import load_checkpoint
from mlhelpers.data.omniglot import load_omniglot
from mlhelpers.evaluation import evaluate
from mlhelpers.learners import MAML, ProtoNet, Reptile
from mlhelpers.models import mlp
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.samplers.regression import LinearTasks, SinusoidTasks
from mlhelpers.tasks import Task
from mlhelpers.training import meta_train

DATA = synthetic_dataset()


def same_tasks(a: Task, b: Task) -> bool:
    fields = ("support_x", "support_y", "query_x", "query_y")
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in fields) and (
        a.info.keys() == b.info.keys() and all(torch.equal(a.info[k], b.info[k]) for k in a.info)
    )


# --- samplers ---------------------------------------------------------------------------------

SAMPLERS = {
    "omniglot": lambda seed: EpisodicSampler(load_omniglot(), 5, 1, 3, split="train", rotations=True, seed=seed),
    "omniglot-within-alphabet": lambda seed: EpisodicSampler(load_omniglot(), 20, 1, 1, split="test",
                                                             within_group=True, seed=seed),
    "sinusoid": lambda seed: SinusoidTasks(5, 10, seed=seed),
    "linear": lambda seed: LinearTasks(4, 5, 5, noise_std=0.1, seed=seed),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_same_seed_same_task_stream(name):
    make = SAMPLERS[name]
    a, b, other = make(11), make(11), make(12)
    for _ in range(3):  # the whole stream, not only the first batch
        batch_a, batch_b = a.sample(4), b.sample(4)
        assert same_tasks(batch_a, batch_b)
    assert not same_tasks(make(11).sample(4), other.sample(4))


def test_sampler_does_not_depend_on_the_global_generators():
    torch.manual_seed(0)
    first = SinusoidTasks(5, 5, seed=3).sample(2)
    torch.manual_seed(1)
    torch.rand(100)
    assert same_tasks(first, SinusoidTasks(5, 5, seed=3).sample(2))


# --- training ---------------------------------------------------------------------------------


def protonet() -> ProtoNet:
    return ProtoNet(nn.Sequential(nn.Flatten(), mlp(64, 16, hidden=(32,)), nn.Dropout(0.1)))


def maml() -> MAML:
    return MAML(mlp(1, 1, hidden=(16, 16)), inner_lr=0.01, inner_steps=2, strategy="loop")


def reptile() -> Reptile:
    return Reptile(mlp(1, 1, hidden=(16,)), inner_steps=2, strategy="loop")


RUNS = {
    "protonet": (protonet, lambda: EpisodicSampler(DATA, 4, 2, 3, split="train", seed=5),
                 lambda: EpisodicSampler(DATA, 4, 1, 2, split="test", seed=6)),
    "maml": (maml, lambda: SinusoidTasks(5, 5, seed=5), lambda: SinusoidTasks(5, 5, seed=6)),
    "reptile": (reptile, lambda: SinusoidTasks(5, 5, seed=5), lambda: SinusoidTasks(5, 5, seed=6)),
}


def run(name: str, steps: int, **kwargs):
    make_learner, make_train, make_val = RUNS[name]
    torch.manual_seed(1234)  # the learner's initial weights; meta_train's seed decides the rest
    learner = make_learner()
    history = meta_train(learner, make_train(), steps=steps, meta_batch_size=3, val_sampler=make_val(),
                         val_every=3, val_episodes=4, progress=False, seed=21, **kwargs)
    return learner, history


@pytest.mark.parametrize("name", RUNS)
def test_same_seed_same_training_run(name):
    a, history_a = run(name, steps=6)
    torch.manual_seed(999)  # unrelated global state must not matter
    b, history_b = run(name, steps=6)
    assert_same_state(a, b)
    assert history_a.train_loss == history_b.train_loss
    assert history_a.val_metric == history_b.val_metric and history_a.val_ci == history_b.val_ci


@pytest.mark.parametrize("name", ["maml", "protonet"])
def test_resumed_run_equals_the_uninterrupted_one(name, tmp_path):
    straight, history = run(name, steps=7)
    path = tmp_path / f"{name}.pt"
    run(name, steps=4, checkpoint_path=path, checkpoint_every=2)
    assert load_checkpoint(path)["step"] == 4
    torch.manual_seed(5)  # as if in a new process
    resumed, resumed_history = run(name, steps=7, checkpoint_path=path, checkpoint_every=2)
    assert_same_state(straight, resumed)
    assert resumed_history.train_loss == history.train_loss
    assert resumed_history.val_metric == history.val_metric


def test_checkpoint_carries_config_seed_and_version(tmp_path):
    import mlhelpers

    path = tmp_path / "run.pt"
    run("protonet", steps=2, checkpoint_path=path, config={"backbone": "mlp", "lr": 1e-3})
    saved = load_checkpoint(path, expected_config={"backbone": "mlp", "lr": 1e-3, "meta_batch_size": 3,
                                                   "grad_clip": None, "optimizer": "Adam"})
    assert saved["seed"] == 21
    assert saved["version"] == mlhelpers.__version__
    assert saved["config"]["backbone"] == "mlp" and saved["step"] == 2


# --- evaluation -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["protonet", "maml"])
def test_same_seed_same_evaluation(name):
    make_learner, _, make_val = RUNS[name]
    torch.manual_seed(0)
    learner = make_learner()
    a = evaluate(learner, make_val(), num_episodes=9, batch_size=4)
    torch.manual_seed(77)
    b = evaluate(learner, make_val(), num_episodes=9, batch_size=4)
    assert torch.equal(a.values, b.values) and a.mean == b.mean and a.ci95 == b.ci95


# --- across processes -------------------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import hashlib, torch
    from torch import nn
    from mlhelpers.evaluation import evaluate
    from mlhelpers.learners import MAML
    from mlhelpers.models import mlp
    from mlhelpers.samplers.regression import SinusoidTasks
    from mlhelpers.seeding import seed_everything
    from mlhelpers.training import meta_train

    seed_everything(3)
    learner = MAML(mlp(1, 1, hidden=(8,)), inner_steps=1, strategy="loop")
    meta_train(learner, SinusoidTasks(5, 5, seed=1), steps=3, meta_batch_size=2, progress=False, seed=4)
    result = evaluate(learner, SinusoidTasks(5, 5, seed=2), num_episodes=4)
    digest = hashlib.sha256()
    for value in learner.state_dict().values():
        digest.update(value.numpy().tobytes())
    digest.update(result.values.numpy().tobytes())
    digest.update(SinusoidTasks(3, 3, seed=9).sample(2).query_y.numpy().tobytes())
    print(digest.hexdigest())
    """
)


def test_a_fresh_process_gives_the_same_numbers():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == _digest_in_this_process()


def _digest_in_this_process() -> str:
    """SCRIPT's digest computed here; its ``seed_everything`` is undone by conftest's ``global_rng_restored``."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(SCRIPT, {})
    return buffer.getvalue().strip()
