"""Tasks one at a time or in parallel threads: how the gradient-based learners keep memory small
and use several CPU cores (Chapter 3).

Few-shot operations are small, so splitting each one across cores (PyTorch's intra-op parallelism)
spends much time waiting, more so on a shared machine. The ``"threads"`` strategy runs whole tasks
in ``workers`` Python threads of one intra-op thread each (kernels release the GIL); the appendix
"Under the hood" and ``bench/meta_step.py`` measure both.

- :func:`per_task_meta_loss`: each task's meta-loss and its gradient are computed (in a worker,
  or in the calling thread with ``workers=1``) and its graph freed at once; ``backward()`` on the
  returned mean delivers the mean gradient (the same meta-gradient, with the memory of
  ``workers`` tasks). The ``"loop"`` and ``"threads"`` strategies of the gradient learners use it.
- :func:`threaded_forward`: outputs ``[tasks, n_query, out]`` computed task by task in workers.
- :func:`fastest`: which of a few ways of computing the same thing took the least wall-clock time
  here and now; ``strategy="auto"`` on a CPU with several threads chooses between the loop and
  threads by it.

Every worker runs its own :func:`~mlhelpers.learners.functional.shallow_replica` of the learner
(``functional_call`` swaps module attributes, which two threads must not do on one module).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch import Tensor, nn

from mlhelpers.learners.base import MetaLearner
from mlhelpers.learners.functional import claim_for_this_thread, shallow_replica
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
        claim_for_this_thread(local.replica)  # its own: functional_call may run on it directly

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
        if torch.is_grad_enabled():  # backward(create_graph=True): the result would silently lack a term
            raise RuntimeError(
                "this meta-loss's gradient was computed task by task (strategy 'loop' or 'threads') and "
                "cannot be differentiated again (create_graph=True): build the learner with strategy='vmap', "
                "whose meta-loss keeps its whole graph"
            )
        return (None, None, *(grad_output * g for g in ctx.grads))


def per_task_meta_loss(learner: MetaLearner, task: Task, workers: int) -> Tensor:
    """Mean over tasks of ``learner._meta_loss(task[i:i+1])``, each task's gradient taken at once.

    Each task's graph is freed as soon as its gradient is computed, so memory holds ``workers``
    tasks, not the batch. ``workers=1``: task after task in the calling thread; more: in that many
    worker threads (:func:`map_tasks_in_threads`). Returns a scalar whose ``backward()`` accumulates
    into the parameters' ``.grad`` the mean of the per-task gradients (which equals the gradient of
    the batched meta-loss: every task of a batch has the same number of query points); it cannot be
    differentiated twice. The learner's ``_meta_loss`` on one task must not call this function again
    (the learners dispatch here only for batches of more than one task).
    """
    params = [p for p in learner.parameters() if p.requires_grad]

    def one_task(replica: MetaLearner, single: Task) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        loss = replica._meta_loss(single)  # the batch was checked by the caller's meta_loss
        return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

    check_positive_int("workers", workers)
    if workers == 1:
        results = [one_task(learner, task[i : i + 1]) for i in range(len(task))]
    else:
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


def fastest(runs: Mapping[str, Callable[[], R]], rounds: int = 2) -> tuple[str, R]:
    """The name of the quickest of ``runs`` (zero-argument callables) and the result of its last run.

    The runs are taken in turn, ``rounds`` times over (so that a one-off cost of the first run,
    such as the allocator's, or a burst of load from another program, does not decide alone); each
    run's time is its smallest wall-clock time.
    """
    check_positive_int("rounds", rounds)
    if not runs:
        raise ValueError("runs must name at least one callable to time, got none")
    best: dict[str, float] = {}
    results: dict[str, R] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    name = min(best, key=best.__getitem__)
    return name, results[name]
