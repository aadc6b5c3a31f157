"""Chapter 7's helpers: the synthetic rating tasks, the MovieLens loader's download flag, and the RL kit."""

from __future__ import annotations

import math

import pytest
import torch

from mlhelpers.data.ratings import load_movielens
from mlhelpers.evaluation import evaluate
from mlhelpers.learners import MAML
from mlhelpers.models import mlp
from mlhelpers.rl import (
    GaussianPolicy,
    PointNavigation,
    adapt_policy,
    reinforce_loss,
    reward_to_go,
    rollout,
    sample_goals,
    task_params,
)
from mlhelpers.samplers.ratings import RatingTasks
from mlhelpers.training import meta_train

# --- ratings ---------------------------------------------------------------------------------


def test_rating_tasks_follow_the_generative_story():
    sampler = RatingTasks(3, 7, n_items=50, dim=2, noise_std=0.0, seed=0)
    task = sampler.sample(4)
    assert task.support_x.shape == (4, 3, 3) and task.query_y.shape == (4, 7, 1)
    items = task.info["items"]
    assert all(len(set(row.tolist())) == 10 for row in items), "items of a user must be distinct"
    # Without noise the ratings are exactly the expected ratings of the hidden user.
    y = torch.cat([task.support_y, task.query_y], 1)[..., 0]
    assert torch.allclose(y, sampler.expected_rating(task.info["user"], items), atol=1e-6)
    assert bool(((y > 1) & (y < 5)).all())
    # The features a model sees are the items' (v_j, b_j).
    assert torch.equal(task.support_x, sampler.item_features[items[:, :3]])


def test_rating_tasks_share_the_catalogue_and_are_reproducible():
    a, b = RatingTasks(3, 5, seed=0), RatingTasks(3, 5, seed=1)
    assert torch.equal(a.item_features, b.item_features)
    assert not torch.equal(a.sample(2).info["user"], b.sample(2).info["user"])
    assert torch.equal(RatingTasks(3, 5, seed=4).sample(3).query_y, RatingTasks(3, 5, seed=4).sample(3).query_y)
    assert not torch.equal(a.item_features, RatingTasks(3, 5, catalogue_seed=1).item_features)


def test_rating_tasks_reject_too_many_items_per_user():
    with pytest.raises(ValueError, match="n_items=5"):
        RatingTasks(3, 3, n_items=5)


@pytest.mark.slow
def test_rating_tasks_are_learnable_maml_beats_the_global_model(one_thread):
    """A short MAML run adapts to new users better than a model trained on all users pooled."""

    def net():
        m = mlp(4, 1, (32, 32))
        torch.nn.init.constant_(m[-1].bias, 3.0)
        return m

    torch.manual_seed(0)
    maml = MAML(net(), inner_lr=0.1, inner_steps=3)
    meta_train(maml, RatingTasks(5, 10, seed=0), steps=300, meta_batch_size=16, grad_clip=1.0, seed=0, progress=False)
    torch.manual_seed(0)
    pooled = MAML(net(), inner_lr=0.1, inner_steps=0)
    meta_train(pooled, RatingTasks(5, 10, seed=0), steps=300, meta_batch_size=16, grad_clip=1.0, seed=0, progress=False)
    m = evaluate(maml, RatingTasks(5, 10, seed=9), num_episodes=200).mean
    g = evaluate(pooled, RatingTasks(5, 10, seed=9), num_episodes=200).mean
    assert m < 0.9 * g, (m, g)


def test_movielens_refuses_to_download_without_the_flag(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_movielens(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_movielens_reads_files_on_disk(tmp_path, no_network):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "movies.csv").write_text("movieId,title,genres\n1,A,Comedy|Drama\n7,B,Drama\n")
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n5,7,4.5,0\n5,1,3.0,0\n9,1,1.0,0\n")
    data = load_movielens(tmp_path)
    assert data["user"].tolist() == [0, 0, 1] and data["item"].tolist() == [1, 0, 0]
    assert data["rating"].tolist() == [4.5, 3.0, 1.0]
    assert data["genres"].tolist() == [[1.0, 1.0], [0.0, 1.0]]


# --- reinforcement learning --------------------------------------------------------------------


def test_point_navigation_dynamics_and_reward():
    env = PointNavigation(torch.tensor([[0.3, 0.0], [0.0, -0.2]]), horizon=5, step_size=0.1)
    p = env.reset(2)
    assert p.shape == (2, 2, 2) and not p.any()
    action = torch.tensor([[[1.0, 0.0], [5.0, -5.0]], [[0.0, -0.5], [0.0, 0.0]]])
    new, reward = env.step(p, action)
    # Actions are clipped to [-1, 1] and scaled by step_size.
    assert torch.allclose(new, torch.tensor([[[0.1, 0.0], [0.1, -0.1]], [[0.0, -0.05], [0.0, 0.0]]]))
    assert torch.allclose(reward, torch.tensor([[-0.2, -math.hypot(0.2, 0.1)], [-0.15, -0.2]]))


def test_rollout_shapes_and_reproducibility():
    policy = GaussianPolicy(hidden=(8,))
    env = PointNavigation(sample_goals(3, torch.Generator().manual_seed(0)), horizon=4)
    a = rollout(policy, env, 5, torch.Generator().manual_seed(1))
    b = rollout(policy, env, 5, torch.Generator().manual_seed(1), task_params(policy, 3))
    assert a.observations.shape == (3, 5, 4, 2) and a.rewards.shape == (3, 5, 4)
    assert torch.allclose(a.actions, b.actions, atol=1e-6), "shared and per-task copies of the same weights agree"
    assert a.returns().shape == (3, 5)


def test_reward_to_go():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    assert reward_to_go(r).tolist() == [[6.0, 5.0, 3.0]]
    assert torch.allclose(reward_to_go(r, 0.5), torch.tensor([[1 + 1 + 0.75, 2 + 1.5, 3.0]]))


def test_reinforce_matches_the_true_gradient_in_expectation(one_thread):
    """One step from the origin: E[REINFORCE gradient] equals the pathwise gradient of E[reward]."""
    torch.manual_seed(0)
    policy = GaussianPolicy(hidden=(4,), init_std=0.6)
    goal = torch.tensor([[0.05, -0.08]])
    env = PointNavigation(goal, horizon=1, step_size=0.1)
    g = torch.Generator().manual_seed(0)
    episodes = 200_000
    traj = rollout(policy, env, episodes, g)
    loss = reinforce_loss(policy, traj).sum()
    pg = torch.autograd.grad(loss, list(policy.parameters()))
    # Pathwise (reparameterised) gradient of -E[reward] with fresh noise: also unbiased.
    mean, log_std = policy(torch.zeros(1, 2))
    eps = torch.randn(episodes, 2, generator=g)
    action = mean + log_std.exp() * eps
    _, reward = env.step(torch.zeros(1, episodes, 2), action[None])
    true = torch.autograd.grad(-reward.mean(), list(policy.parameters()), allow_unused=True)
    flat_pg = torch.cat([p.flatten() for p in pg])
    flat_true = torch.cat([(t if t is not None else torch.zeros_like(p)).flatten()
                           for t, p in zip(true, policy.parameters())])
    cos = torch.nn.functional.cosine_similarity(flat_pg, flat_true, dim=0)
    assert cos > 0.95, cos
    assert torch.allclose(flat_pg.norm(), flat_true.norm(), rtol=0.15)


def test_reinforce_loss_needs_two_episodes_for_the_baseline():
    policy = GaussianPolicy(hidden=(4,))
    env = PointNavigation(torch.zeros(1, 2), horizon=2)
    traj = rollout(policy, env, 1, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="at least 2 episodes"):
        reinforce_loss(policy, traj)


def test_one_adaptation_step_improves_the_return(one_thread):
    """Even from random weights, a policy-gradient step per task moves each point towards its goal."""
    torch.manual_seed(0)
    policy = GaussianPolicy(hidden=(16,))
    goals = sample_goals(16, torch.Generator().manual_seed(0))
    env = PointNavigation(goals, horizon=10)
    g = torch.Generator().manual_seed(1)
    before, after = adapt_policy(policy, env, inner_lr=0.05, steps=1, num_episodes=40, generator=g, normalize=False)
    r0 = rollout(policy, env, 200, g, {k: v.detach() for k, v in before.items()}).returns().mean()
    r1 = rollout(policy, env, 200, g, {k: v.detach() for k, v in after.items()}).returns().mean()
    assert r1 > r0 + 0.1, (float(r0), float(r1))


def test_adapt_policy_is_differentiable_only_with_create_graph():
    policy = GaussianPolicy(hidden=(4,))
    env = PointNavigation(sample_goals(2, torch.Generator().manual_seed(0)), horizon=3)
    g = torch.Generator().manual_seed(0)
    fast = adapt_policy(policy, env, inner_lr=0.1, steps=1, num_episodes=4, generator=g, create_graph=True)[-1]
    loss = reinforce_loss(policy, rollout(policy, env, 4, g, fast), fast).sum()
    grads = torch.autograd.grad(loss, list(policy.parameters()))
    assert all(torch.isfinite(x).all() for x in grads)
    detached = adapt_policy(policy, env, inner_lr=0.1, steps=1, num_episodes=4, generator=g)[-1]
    assert all(v.grad_fn is None for v in detached.values())


def test_switches_take_only_bools():
    """A string is truthy: normalize='no' used to switch normalisation on."""
    policy, env = GaussianPolicy(), PointNavigation(sample_goals(2, torch.Generator().manual_seed(0)))
    trajectories = rollout(policy, env, 3, torch.Generator().manual_seed(1))
    with pytest.raises(TypeError, match="normalize must be a bool, got str 'no'"):
        reinforce_loss(policy, trajectories, normalize="no")
    with pytest.raises(TypeError, match="deterministic must be a bool"):
        rollout(policy, env, 3, torch.Generator().manual_seed(1), deterministic="yes")
    with pytest.raises(TypeError, match="create_graph must be a bool"):
        adapt_policy(policy, env, inner_lr=0.1, steps=1, num_episodes=3, generator=torch.Generator(),
                     create_graph=1)
