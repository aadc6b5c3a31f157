"""TaskPool: a fixed pool of tasks that every batch re-uses (the meta-overfitting run of Chapter 8)."""

import pytest
import torch

from conftest import make_dataset
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.samplers.wrappers import TaskPool


def _episodes(seed=0):
    return EpisodicSampler(make_dataset(), 3, 1, 2, seed=seed)


def _key(task):
    """One hashable fingerprint per task of a batch: its support and query images."""
    return [tuple(torch.cat([s.flatten(), q.flatten()]).tolist()) for s, _, q, _ in task.unbind()]


def test_batches_only_hold_pool_tasks_and_reuse_them():
    pool = TaskPool(_episodes(), 4, seed=1)
    assert len(pool) == 4 and len(pool.tasks) == 4
    members = set(_key(pool.tasks))
    assert len(members) == 4  # four different episodes were drawn
    drawn = [k for _ in range(30) for k in _key(pool.sample(3))]
    assert set(drawn) <= members
    assert len(set(drawn)) == 4  # 90 draws from 4 tasks reach all of them
    fresh = _episodes(seed=0)
    fresh.sample(4)
    assert not set(_key(fresh.sample(20))) <= members  # the sampler itself goes on to new episodes


def test_a_task_keeps_its_labels_across_draws():
    pool = TaskPool(_episodes(), 2, seed=3)
    for _ in range(10):
        batch = pool.sample(2)
        for i, key in enumerate(_key(batch)):
            j = _key(pool.tasks).index(key)
            assert torch.equal(batch.support_y[i], pool.tasks.support_y[j])
            assert torch.equal(batch.query_y[i], pool.tasks.query_y[j])


def test_seeded_pools_repeat_and_resume():
    a, b = TaskPool(_episodes(), 5, seed=7), TaskPool(_episodes(), 5, seed=7)
    assert _key(a.sample(6)) == _key(b.sample(6))
    state = a.state_dict()
    after = _key(a.sample(6))
    b.load_state_dict(state)
    assert _key(b.sample(6)) == after


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="size"):
        TaskPool(_episodes(), 0)
    with pytest.raises(TypeError, match="sampler"):
        TaskPool([1, 2, 3], 2)
