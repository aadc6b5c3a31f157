"""A training script for tests/test_distributed.py: run under ``torchrun`` (2 ranks) and in the test's
own process (the 1-process reference). Float64 throughout, so the two agree to rounding.

    torchrun --standalone --nproc_per_node=2 tests/distributed_worker.py maml,protonet OUT_DIR --steps 3

Rank 0 writes ``OUT_DIR/<learner>.pt`` (final weights and history) for each learner.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest's synthetic data under torchrun

from conftest import synthetic_dataset  # noqa: E402
from mlhelpers import distributed  # noqa: E402
from mlhelpers.learners import MAML, ProtoNet  # noqa: E402
from mlhelpers.models import mlp  # noqa: E402
from mlhelpers.samplers.base import TaskSampler  # noqa: E402
from mlhelpers.samplers.episodic import EpisodicSampler  # noqa: E402
from mlhelpers.samplers.regression import SinusoidTasks  # noqa: E402
from mlhelpers.samplers.wrappers import SamplerWrapper  # noqa: E402
from mlhelpers.tasks import Task  # noqa: E402
from mlhelpers.training import History, meta_train  # noqa: E402

META_BATCH = 4


class Float64(SamplerWrapper):
    """The inner sampler's tasks with float64 inputs and regression targets."""

    def _sample(self, num_tasks: int) -> Task:
        task = self.sampler.sample(num_tasks)
        cast = lambda t: t.double() if t.is_floating_point() else t  # noqa: E731
        return Task(cast(task.support_x), cast(task.support_y), cast(task.query_x), cast(task.query_y),
                    {k: cast(v) for k, v in task.info.items()})


def build(kind: str) -> tuple[nn.Module, TaskSampler, TaskSampler]:
    """A float64 learner with its train and validation samplers (seeded: every call builds the same)."""
    torch.manual_seed(0)
    if kind == "maml":
        learner = MAML(mlp(1, 1, hidden=(16, 16)).double(), inner_lr=0.01, inner_steps=2)
        return learner, Float64(SinusoidTasks(5, 5, seed=1)), Float64(SinusoidTasks(5, 5, seed=2))
    if kind == "protonet":
        data = synthetic_dataset()
        learner = ProtoNet(nn.Sequential(nn.Flatten(), mlp(64, 8, hidden=(16,)))).double()
        return (learner, Float64(EpisodicSampler(data, 5, 2, 3, split="train", seed=1)),
                Float64(EpisodicSampler(data, 5, 2, 3, split="test", seed=2)))
    raise ValueError(f"unknown learner {kind!r}")


def train(kind: str, steps: int, checkpoint: str | None = None, fail_rank: int | None = None,
          fail_step: int | None = None, hang: bool = False) -> tuple[nn.Module, History]:
    """Meta-train ``kind`` for ``steps``; rank ``fail_rank`` raises (or, with ``hang``, sleeps) in its
    ``fail_step``-th meta-loss."""
    learner, train_sampler, val_sampler = build(kind)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-2)
    if fail_rank is not None:  # this rank's meta-loss raises at fail_step
        original, calls = learner.meta_loss, [0]

        def meta_loss(task: Task) -> torch.Tensor:
            calls[0] += 1
            if distributed.rank() == fail_rank and calls[0] == fail_step:
                if hang:
                    time.sleep(600)
                raise RuntimeError(f"rank {fail_rank} broke at step {fail_step} on purpose")
            return original(task)

        learner.meta_loss = meta_loss
    history = meta_train(learner, train_sampler, steps=steps, meta_batch_size=META_BATCH, optimizer=optimizer,
                         val_sampler=val_sampler, val_every=2, val_episodes=4, checkpoint_path=checkpoint,
                         checkpoint_every=2, seed=0, progress=False)
    return learner, history


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kinds", help="comma-separated: maml, protonet")
    parser.add_argument("out", help="a directory: rank 0 saves each learner's final weights and history there")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--checkpoint")
    parser.add_argument("--fail-rank", type=int)
    parser.add_argument("--fail-step", type=int, default=2)
    parser.add_argument("--hang", action="store_true", help="the failing rank sleeps instead of raising")
    args = parser.parse_args()
    for kind in args.kinds.split(","):
        learner, history = train(kind, args.steps, args.checkpoint, args.fail_rank, args.fail_step, args.hang)
        if distributed.is_main():
            torch.save({"state": learner.state_dict(), "history": history.to_dict(),
                        "world": distributed.world_size(), "pid": os.getpid()}, Path(args.out) / f"{kind}.pt")


if __name__ == "__main__":
    main()
