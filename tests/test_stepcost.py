"""measure_meta_step: the cost of one meta-step, measured in a fresh process (Chapter 3)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest
import torch

from mlhelpers.learners import MAML
from mlhelpers.models import mlp
from mlhelpers.samplers.regression import SinusoidTasks
from mlhelpers.stepcost import StepCost, cpu_model, measure_meta_step

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def _batches(q_query: int, tasks: int = 4, count: int = 2):
    sampler = SinusoidTasks(k_shot=5, q_query=q_query, seed=0)
    return [sampler.sample(tasks) for _ in range(count)]


@pytest.mark.slow
def test_memory_grows_with_the_activations_a_step_keeps():
    # one hidden layer of 1000 units: a task of 5000 query points keeps ~20 MB per saved activation
    # (the default loop frees each task's graph once its gradient is taken: one task's at a time)
    learner = MAML(mlp(1, 1, hidden=(1000,)), inner_lr=0.01)
    small = measure_meta_step(learner, _batches(q_query=10))
    large = measure_meta_step(learner, _batches(q_query=5000))
    assert isinstance(small, StepCost)
    assert small.cpu_seconds > 0 and small.wall_seconds > 0
    assert small.peak_mb < 30
    assert large.peak_mb > small.peak_mb + 40


def test_the_learner_is_not_changed():
    learner = MAML(mlp(1, 1), inner_lr=0.01)
    before = [p.detach().clone() for p in learner.parameters()]
    measure_meta_step(learner, _batches(q_query=10))
    assert all(torch.equal(a, b) for a, b in zip(before, learner.parameters()))


def test_bad_arguments_are_named():
    learner = MAML(mlp(1, 1), inner_lr=0.01)
    with pytest.raises(ValueError, match="batches"):
        measure_meta_step(learner, _batches(q_query=10, count=1))
    with pytest.raises(TypeError, match="learner"):
        measure_meta_step(mlp(1, 1), _batches(q_query=10))
    with pytest.raises(ValueError, match="threads"):
        measure_meta_step(learner, _batches(q_query=10), threads=0)


def test_cpu_model_is_the_name_proc_cpuinfo_gives():
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    expected = names[0] if names else (platform.processor() or platform.machine())
    assert cpu_model() == expected and cpu_model()
