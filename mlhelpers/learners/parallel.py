"""Tasks in parallel threads: how the gradient-based learners use several CPU cores.

A meta-batch is a sum of independent per-task computations. PyTorch's usual way to use several
cores is *intra-op* parallelism: every convolution, batch norm and pooling is split across all
cores. For few-shot tasks those operations are small (5 support images, 75 query images), so
the cores spend much of their time waiting for each other at the end of each operation, and far
more so when another process shares the machine. The ``"threads"`` strategy parallelises
*across tasks* instead: each of ``workers`` Python threads takes whole tasks, one at a time, and
runs them with a single intra-op thread (PyTorch's kernels release the GIL, so the threads run at
the same time). On an idle machine intra-op parallelism is as fast or faster; on a machine that
other jobs share, tasks in threads are several times faster. Chapter 3 measures both
(``bench/meta_step.py``).

- :func:`threaded_meta_loss`: per task, the meta-loss *and its gradient* with respect to the
  learner's parameters are computed in a worker (``torch.autograd.grad``), and each task's graph
  is freed as soon as its gradient is known. The returned scalar is the mean loss, and its
  ``backward()`` delivers the mean of the precomputed gradients: the same meta-gradient as
  ``learner.meta_loss(batch).backward()`` on the whole batch, to float rounding, with the memory of
  ``workers`` tasks instead of all of them.
- :func:`threaded_forward`: outputs ``[tasks, n_query, out]`` computed task by task in workers,
  for evaluation.

``torch.func.functional_call`` substitutes fast weights by swapping attributes of the module
objects, which two threads must not do on the same module; so every worker runs its own
:func:`~mlhelpers.learners.functional.shallow_replica` of the learner: new module objects that share the original's parameter
and buffer tensors, so that gradients still reach the original parameters.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import torch
from torch import Tensor, nn

from mlhelpers.learners.base import MetaLearner
from mlhelpers.learners.functional import shallow_replica
from mlhelpers.tasks import Task
from mlhelpers.validation import check_positive_int

M = TypeVar("M", bound=nn.Module)
R = TypeVar("R")


def map_tasks_in_threads(fn: Callable[[M, Task], R], module: M, task: Task, workers: int) -> list[R]:
    """``[fn(replica, task[i:i + 1]) for i in range(len(task))]``, computed by ``workers`` threads.

    Each thread owns one :func:`shallow_replica` of ``module`` and runs with one intra-op thread
    and the caller's grad mode. The intra-op thread count of the caller is restored afterwards.
    """
    check_positive_int("workers", workers)
    workers = min(workers, len(task))
    replicas = [shallow_replica(module) for _ in range(workers)]
    grad_enabled = torch.is_grad_enabled()
    caller_threads = torch.get_num_threads()
    claimed = iter(replicas)
    lock = threading.Lock()
    local = threading.local()

    def start_worker() -> None:
        torch.set_num_threads(1)
        with lock:
            local.replica = next(claimed)

    def run(i: int) -> R:
        with torch.set_grad_enabled(grad_enabled):
            return fn(local.replica, task[i : i + 1])

    try:
        with ThreadPoolExecutor(workers, initializer=start_worker) as pool:
            return list(pool.map(run, range(len(task))))
    finally:
        torch.set_num_threads(caller_threads)


class _PrecomputedGradient(torch.autograd.Function):
    """Identity on a detached scalar ``value`` whose gradient w.r.t. ``params`` is ``grads``."""

    @staticmethod
    def forward(ctx, value: Tensor, grads: Sequence[Tensor], *params: Tensor) -> Tensor:
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        return (None, None, *(grad_output * g for g in ctx.grads))


def threaded_meta_loss(learner: MetaLearner, task: Task, workers: int) -> Tensor:
    """Mean over tasks of ``learner._meta_loss(task[i:i+1])``, gradients computed task by task in threads.

    Returns a scalar whose ``backward()`` accumulates into the parameters' ``.grad`` the mean
    of the per-task gradients (which equals the gradient of the batched meta-loss when every task
    has the same number of query points). The learner's ``_meta_loss`` on one task must not call
    this function again (the learners dispatch here only for batches of more than one task).
    """
    params = [p for p in learner.parameters() if p.requires_grad]

    def one_task(replica: MetaLearner, single: Task) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        loss = replica._meta_loss(single)  # the batch was checked by the caller's meta_loss
        return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

    results = map_tasks_in_threads(one_task, learner, task, workers)
    value = torch.stack([loss for loss, _ in results]).mean()
    grads = []
    for j, p in enumerate(params):
        per_task = [g[j] for _, g in results if g[j] is not None]
        grads.append(torch.stack(per_task).sum(0) / len(results) if per_task else torch.zeros_like(p))
    if not torch.is_grad_enabled():
        return value
    return _PrecomputedGradient.apply(value, grads, *params)


def threaded_forward(learner: MetaLearner, task: Task, workers: int) -> Tensor:
    """``learner._forward(task)`` ``[tasks, n_query, out]``, each task adapted and predicted in a worker thread."""
    outputs = map_tasks_in_threads(lambda replica, single: replica._forward(single), learner, task, workers)
    return torch.cat(outputs)
