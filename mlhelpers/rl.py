"""A tiny meta-reinforcement-learning kit, without external simulators (Chapter 7).

The 2-D point navigation of Finn et al. (2017, section 5.3): a point starts at the origin, each task
has a goal in ``[-0.5, 0.5]^2`` that the agent (seeing only its position) finds from rewards
``-||p' - goal||`` (Finn et al. square it; the distance keeps a gradient near the goal). Batched::

    positions, actions  [tasks, episodes, horizon, 2]     rewards  [tasks, episodes, horizon]

:class:`PointNavigation` (dynamics ``p' = p + step_size * clip(a, -1, 1)``), :class:`GaussianPolicy`,
:func:`rollout`, :func:`reinforce_loss` (REINFORCE with a leave-one-out baseline, differentiable in
the parameters) and :func:`adapt_policy` (MAML's inner loop for RL). Per-task parameters are dicts
``name -> [tasks, *shape]`` (:func:`task_params`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Normal
from torch.func import functional_call, vmap

from mlhelpers.learners.functional import Params, module_for_this_thread, sgd_steps
from mlhelpers.models import mlp
from mlhelpers.validation import check_bool, check_positive, check_positive_int, check_steps, describe


def sample_goals(num_tasks: int, generator: torch.Generator, low: float = -0.5, high: float = 0.5) -> Tensor:
    """``num_tasks`` goals uniform in the square ``[low, high]^2``, ``[num_tasks, 2]``."""
    check_positive_int("num_tasks", num_tasks)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {describe(generator)}")
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and low < high):
        raise ValueError(f"need numbers low < high, got low={low!r}, high={high!r}")
    return low + (high - low) * torch.rand(num_tasks, 2, generator=generator)


class PointNavigation:
    """A batch of point-navigation tasks, one goal each.

    Args:
        goals: ``[tasks, 2]`` goal positions.
        horizon: steps per episode.
        step_size: how far the largest action (``|a_i| = 1``) moves the point per step.
    """

    def __init__(self, goals: Tensor, horizon: int = 20, step_size: float = 0.1) -> None:
        if not isinstance(goals, Tensor) or goals.dim() != 2 or goals.shape[1] != 2:
            shape = tuple(goals.shape) if isinstance(goals, Tensor) else describe(goals)
            raise ValueError(f"goals must be a [tasks, 2] tensor, got {shape}")
        if not bool(torch.isfinite(goals).all()):
            raise ValueError("goals must be finite numbers, got NaN or infinity")
        self.goals = goals
        self.horizon = check_positive_int("horizon", horizon)
        self.step_size = check_positive("step_size", step_size)

    def __len__(self) -> int:
        return self.goals.shape[0]

    def reset(self, num_episodes: int) -> Tensor:
        """Start positions (the origin), ``[tasks, num_episodes, 2]``."""
        check_positive_int("num_episodes", num_episodes)
        return self.goals.new_zeros(len(self), num_episodes, 2)

    def step(self, position: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Move every point by its clipped action; return the new positions and the rewards ``[tasks, episodes]``."""
        if position.shape != action.shape or position.dim() != 3 or position.shape[0] != len(self):
            raise ValueError(
                f"position and action must both be [tasks={len(self)}, episodes, 2], got "
                f"{tuple(position.shape)} and {tuple(action.shape)}"
            )
        new = position + self.step_size * action.clamp(-1.0, 1.0)
        reward = -(new - self.goals[:, None, :]).norm(dim=-1)
        return new, reward


class GaussianPolicy(nn.Module):
    """``a ~ N(mlp(position), diag(exp(log_std))^2)``: a Gaussian MLP policy, as in Finn et al. (2017)."""

    def __init__(
        self, obs_dim: int = 2, act_dim: int = 2, hidden: Sequence[int] = (64, 64), init_std: float = 0.5
    ) -> None:
        super().__init__()
        self.mean = mlp(obs_dim, act_dim, hidden, activation=nn.Tanh)
        init_std = check_positive("init_std", init_std)
        self.log_std = nn.Parameter(torch.full((check_positive_int("act_dim", act_dim),), math.log(init_std)))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """The mean ``[..., act_dim]`` and the log standard deviation broadcast to it."""
        mean = self.mean(obs)
        return mean, self.log_std.expand_as(mean)


def task_params(policy: nn.Module, num_tasks: int) -> Params:
    """The policy's parameters repeated per task, ``name -> [tasks, *shape]`` (differentiable in them)."""
    check_positive_int("num_tasks", num_tasks)
    return {n: p.unsqueeze(0).expand(num_tasks, *p.shape) for n, p in policy.named_parameters()}


def distribution(policy: nn.Module, obs: Tensor, params: Params | None = None) -> Normal:
    """The action distribution at ``obs`` ``[tasks, ...]``: shared weights, or per-task ``params``."""
    if params is None:
        mean, log_std = policy(obs)
    else:
        here = module_for_this_thread(policy)  # functional_call swaps its weights: one module per thread
        mean, log_std = vmap(lambda p, o: functional_call(here, p, (o,)))(params, obs)
    return Normal(mean, log_std.exp())


@dataclass
class Trajectories:
    """Episodes of a batch of tasks: ``observations`` and ``actions`` ``[tasks, episodes, horizon, 2]``,
    ``rewards`` ``[tasks, episodes, horizon]``."""

    observations: Tensor
    actions: Tensor
    rewards: Tensor

    def returns(self) -> Tensor:
        """Undiscounted return of every episode, ``[tasks, episodes]``."""
        return self.rewards.sum(-1)


@torch.no_grad()
def rollout(
    policy: nn.Module,
    env: PointNavigation,
    num_episodes: int,
    generator: torch.Generator,
    params: Params | None = None,
    deterministic: bool = False,
) -> Trajectories:
    """Run ``num_episodes`` episodes per task of ``env`` with ``policy`` (per-task ``params`` if given).

    Actions are drawn with ``generator``, so a rollout is reproducible; ``deterministic`` takes the
    mean action instead. No gradient is recorded: :func:`reinforce_loss` recomputes log-probabilities.
    """
    if not isinstance(env, PointNavigation):
        raise TypeError(f"env must be a PointNavigation, got {describe(env)}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {describe(generator)}")
    check_bool("deterministic", deterministic)
    position = env.reset(num_episodes)
    obs, acts, rews = [], [], []
    for _ in range(env.horizon):
        dist = distribution(policy, position, params)
        noise = torch.randn(dist.mean.shape, generator=generator)
        action = dist.mean if deterministic else dist.mean + dist.stddev * noise
        obs.append(position)
        acts.append(action)
        position, reward = env.step(position, action)
        rews.append(reward)
    return Trajectories(torch.stack(obs, 2), torch.stack(acts, 2), torch.stack(rews, 2))


def reward_to_go(rewards: Tensor, gamma: float = 1.0) -> Tensor:
    """``G_t = sum_{s >= t} gamma^(s - t) r_s`` along the last dimension."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + gamma * running
        out[..., t] = running
    return out


def reinforce_loss(
    policy: nn.Module, trajectories: Trajectories, params: Params | None = None, *, gamma: float = 1.0,
    baseline: bool = True, normalize: bool = False,
) -> Tensor:
    """The REINFORCE surrogate loss of each task, ``[tasks]``; its gradient estimates ``-grad E[return]``.

    ``-mean_episodes sum_t log pi(a_t | s_t) (G_t - b_t)`` with the reward-to-go ``G_t``. The
    baseline ``b_t`` is the mean ``G_t`` of the task's *other* episodes (leave-one-out), which keeps
    the estimator unbiased while cancelling most of its variance; it needs at least 2 episodes.
    ``normalize`` rescales each task's advantages to unit standard deviation (biased in scale, but
    makes one step size fit tasks whose rewards differ in scale).
    """
    if not isinstance(trajectories, Trajectories):
        raise TypeError(f"trajectories must be Trajectories from rollout(), got {describe(trajectories)}")
    if not (isinstance(gamma, (int, float)) and 0.0 <= gamma <= 1.0):
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
    G = reward_to_go(trajectories.rewards, float(gamma))
    episodes = G.shape[1]
    if check_bool("baseline", baseline):
        if episodes < 2:
            raise ValueError(f"a leave-one-out baseline needs at least 2 episodes per task, got {episodes}")
        G = G - (G.sum(1, keepdim=True) - G) / (episodes - 1)
    if check_bool("normalize", normalize):
        G = G / (G.std(dim=(1, 2), keepdim=True) + 1e-8)
    dist = distribution(policy, trajectories.observations, params)
    log_prob = dist.log_prob(trajectories.actions).sum(-1)
    return -(log_prob * G.detach()).sum(-1).mean(-1)


def adapt_policy(
    policy: nn.Module, env: PointNavigation, *, inner_lr: float, steps: int, num_episodes: int,
    generator: torch.Generator, params: Params | None = None, create_graph: bool = False, normalize: bool = False,
) -> list[Params]:
    """``steps`` policy-gradient steps per task: the per-task parameters before and after each step.

    Each step samples ``num_episodes`` episodes with the current per-task parameters, and moves
    them by ``-inner_lr`` times the gradient of :func:`reinforce_loss` (``normalize`` is passed to
    it). With ``create_graph`` the steps stay differentiable in the starting parameters (the MAML
    meta-gradient); without, each step starts from detached parameters. Returns ``steps + 1``
    dicts ``name -> [tasks, *shape]``.

    Each is one :func:`~mlhelpers.learners.functional.sgd_steps` step on a loss that samples fresh
    rollouts first (REINFORCE needs them, so RL does not go through ``MetaLearner``). The per-task
    losses are summed: task ``t``'s parameters get the gradient of its own loss.
    """
    check_positive("inner_lr", inner_lr)
    check_steps("steps", steps)
    check_bool("create_graph", create_graph)
    check_bool("normalize", normalize)
    current = params if params is not None else task_params(policy, len(env))
    out = [current]
    for _ in range(steps):
        traj = rollout(policy, env, num_episodes, generator, current)

        def loss(fast: Params, traj: Trajectories = traj) -> Tensor:
            return reinforce_loss(policy, traj, fast, normalize=normalize).sum()

        current = sgd_steps(loss, current, dict.fromkeys(current, inner_lr), 1, create_graph=create_graph,
                            functional=False)
        if not create_graph:
            current = {n: v.detach().requires_grad_() for n, v in current.items()}
        out.append(current)
    return out
