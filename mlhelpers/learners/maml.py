"""MAML and its relatives: learn an initialisation that a few gradient steps adapt to a task.

Chapter 2 derives the bilevel problem and its meta-gradient; Chapter 3 builds MAML from scratch
with ``torch.func.functional_call``. The learners here wrap any ``nn.Module`` and work for
regression (MSE) and classification (cross-entropy), chosen by the label dtype
(:func:`~mlhelpers.learners.base.task_loss`):

- :class:`MAML` (Finn et al. 2017): second- or first-order meta-gradients, any number of steps.
- :class:`MetaSGD` (Li et al. 2017): a learned learning rate for every weight.
- :class:`ANIL` (Raghu et al. 2020): adapt only the head; the body's features are computed once.
- :class:`~mlhelpers.learners.reptile.Reptile` (Nichol et al. 2018) lives in its own module.

All share one inner loop (:func:`~mlhelpers.learners.functional.sgd_steps`).
``adapt(support_x, support_y)`` returns the **fast weights**: a dict ``name -> [tasks, *shape]``
holding the adapted parameters only (all of them for MAML, the head's for ANIL, named as in
``model.named_parameters()``); ``predict(fast, query_x)`` runs the model with them through
``functional_call`` and returns ``[tasks, n_query, out]``. Parameters with
``requires_grad=False`` are neither adapted nor meta-learned.

Modes. In training mode adapt takes ``inner_steps`` steps and, unless ``first_order``, keeps the
graph of the inner gradients (``create_graph=True``) so that ``meta_loss(task).backward()``
gives the exact second-order meta-gradient. In eval mode (what
:func:`~mlhelpers.evaluation.evaluate` uses) it takes ``eval_inner_steps`` steps (default:
``inner_steps``; Finn et al. train with 1 and test with 10) and treats inner gradients as
constants: same predictions, far less memory. Under ``torch.no_grad()`` the fast weights are
detached from the initial weights.

Batching over tasks (``strategy``):

- ``"loop"``: task after task in the calling thread, with native modules and
  ``torch.autograd.grad``; each kernel may use several cores (intra-op parallelism).
- ``"threads"``: the same per-task computation, with tasks spread over
  ``torch.get_num_threads()`` worker threads of one intra-op thread each
  (:mod:`~mlhelpers.learners.parallel`). ``meta_loss`` then computes each task's meta-gradient in
  its worker and frees the task's graph at once, so memory holds a few tasks, not the batch;
  ``forward`` (evaluation) adapts and predicts each task in a worker; ``adapt`` and ``predict``
  called directly run as ``"loop"``. Use it for large meta-batches or on a shared machine.
- ``"vmap"``: the whole inner loop of all tasks at once with ``torch.func.vmap`` and
  ``torch.func.grad``.
- ``"auto"`` (default): ``"loop"`` on the CPU, ``"vmap"`` on accelerators.

Measured on this book's 2-core CPU (torch 2.14, float32; ``bench/meta_step.py``, whose table
Chapter 3 shows), one meta-step of conv4 (64 channels) on 32 tasks of 5-way 1-shot, on an idle
machine: the loop was 12-15% faster than tasks in threads with one inner step, tasks in threads
18% faster with five, where the loop holds every task's graph until the backward pass (2.6 GB
against 0.2 GB); in earlier runs, with other jobs loading the cores, tasks in threads were the
faster strategy throughout. With one thread, ``"vmap"`` was slower than the loop and used more
memory (``norm="task"``, 8 tasks: loop 1.1 s / +0.6 GB, vmap 1.9 s / +1.4 GB). On a GPU, vmap
turns many small kernels into a few large ones.

Normalisation policy (explained in Chapter 3):

- **Running statistics are refused.** A norm layer with ``track_running_stats=True`` (plain
  ``nn.BatchNorm2d``, ``conv4(norm="batch")``) updates its running mean and variance in place at
  every forward pass, even inside ``functional_call``: one task's support set leaks into the next
  task and into evaluation. The learners raise a ValueError; use ``conv4(norm="task")``
  (batch statistics of the current set, as in the original MAML code) or ``norm="none"``.
- **The loop is the reference.** Per task, native batch norm gives exact meta-gradients of any
  order (each task's support and query set are normalised with their own statistics).
- **Under vmap, norms become plain tensor operations for second-order gradients.** Measured with
  torch 2.14 in float64: through ``vmap``, the second-order meta-gradient of the fused batch,
  instance and layer norm kernels is off by 0.1-5% (a conv bias in front of a batch norm, whose
  exact meta-gradient is 0, gets a nonzero one), while first-order gradients are right. So when ``strategy="vmap"`` builds a
  second-order graph, those layers run as means and products
  (:func:`~mlhelpers.learners.functional.plain_norms`), which is exact; first-order and
  evaluation passes keep the fused kernels. The tests check both strategies against each other
  with ``conv4(norm="task")``.
"""

from __future__ import annotations

import contextlib
from typing import Mapping

import torch
from torch import Tensor, nn

from mlhelpers.learners.base import MetaLearner, task_loss
from mlhelpers.learners.functional import (
    Params,
    check_no_running_stats,
    check_strategy,
    map_tasks,
    plain_norms,
    resolve_strategy,
    sgd_steps,
)
from mlhelpers.learners.parallel import threaded_forward, threaded_meta_loss
from mlhelpers.tasks import Task
from mlhelpers.validation import check_positive, check_steps


class GradientLearner(MetaLearner):
    """Base of the gradient-based learners: adapt by gradient steps from meta-learned weights.

    Subclasses choose which parameters adapt (:meth:`adapt_names`), with which learning rates
    (:meth:`inner_lrs`), and how inputs reach them (:meth:`features`, :meth:`forward_adapted`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_steps: int,
        first_order: bool,
        eval_inner_steps: int | None,
        strategy: str,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        check_no_running_stats(model)
        self.model = model
        self.inner_steps = check_steps("inner_steps", inner_steps)
        self.eval_inner_steps = None if eval_inner_steps is None else check_steps("eval_inner_steps", eval_inner_steps)
        if not isinstance(first_order, bool):
            raise TypeError(f"first_order must be a bool, got {type(first_order).__name__} {first_order!r}")
        self.first_order = first_order
        self.strategy = check_strategy(strategy)

    # --- what subclasses choose ---------------------------------------------------------------

    def adapt_names(self) -> list[str]:
        """Names of the parameters the inner loop adapts (default: all trainable ones)."""
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def inner_lrs(self) -> Mapping[str, float | Tensor]:
        """Learning rate of each adapted parameter: a float or a tensor of its shape."""
        raise NotImplementedError

    def features(self, x: Tensor) -> Tensor:
        """What the adapted parameters see, for one task's inputs ``[n, *x_shape]`` (default: x)."""
        return x

    def forward_adapted(self, fast: Params, h: Tensor) -> Tensor:
        """Outputs ``[n, out]`` of one task from its fast weights and :meth:`features` ``h``."""
        return torch.func.functional_call(self.model, fast, (h,))

    # --- shared machinery ---------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Inner steps of the current mode: ``inner_steps`` in training, else ``eval_inner_steps``."""
        if self.training or self.eval_inner_steps is None:
            return self.inner_steps
        return self.eval_inner_steps

    def resolved_strategy(self, device: torch.device) -> str:
        """``"loop"`` or ``"vmap"``: the strategy, with ``"auto"`` decided by ``device``."""
        return resolve_strategy(self.strategy, device)

    def _threaded(self, task: Task) -> bool:
        return len(task) > 1 and self.resolved_strategy(task.device) == "threads"

    def forward(self, task: Task) -> Tensor:
        """Adapt on each support set and predict the query set: ``[tasks, n_query, out]``."""
        if self._threaded(task):
            return threaded_forward(self, task, workers=torch.get_num_threads())
        return super().forward(task)

    def meta_loss(self, task: Task) -> Tensor:
        """Scalar query loss after adaptation, averaged over the batch of tasks.

        With ``strategy="threads"`` and autograd on, the tasks' meta-gradients are computed in
        worker threads; ``backward()`` on the result delivers their mean (the same gradient).
        """
        if self._threaded(task) and torch.is_grad_enabled():
            return threaded_meta_loss(self, task, workers=torch.get_num_threads())
        return self.batch_meta_loss(task)

    def batch_meta_loss(self, task: Task) -> Tensor:
        """The meta-loss of a batch of tasks, computed in the calling thread (override this)."""
        return super().meta_loss(task)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Params:
        """Fast weights ``name -> [tasks, *shape]`` after :attr:`steps` steps on each support set."""
        track = torch.is_grad_enabled()
        create_graph = track and self.training and not self.first_order
        return self._adapt(support_x, support_y, steps=self.steps, create_graph=create_graph, track=track)

    def _adapt(self, support_x: Tensor, support_y: Tensor, *, steps: int, create_graph: bool, track: bool) -> Params:
        """The inner loop of every task. ``track=False`` detaches the result from the initial weights."""
        if support_x.dim() < 2 or support_y.dim() < 2 or support_x.shape[:2] != support_y.shape[:2]:
            raise ValueError(
                "support_x and support_y must be [tasks, n_support, ...] with the same first two "
                f"dimensions, got {tuple(support_x.shape)} and {tuple(support_y.shape)}"
            )
        vectorise = self.resolved_strategy(support_x.device) == "vmap"
        params = dict(self.model.named_parameters())
        theta = {n: params[n] if track else params[n].detach() for n in self.adapt_names()}
        lrs = {n: lr if track or not isinstance(lr, Tensor) else lr.detach() for n, lr in self.inner_lrs().items()}

        def one_task(sx: Tensor, sy: Tensor) -> Params:
            h = self.features(sx)

            def support_loss(fast: Params) -> Tensor:
                return task_loss(self.forward_adapted(fast, h)[None], sy[None])

            return sgd_steps(support_loss, theta, lrs, steps, create_graph=create_graph, functional=vectorise)

        swap = plain_norms(self.model) if vectorise and create_graph else contextlib.nullcontext()
        with torch.enable_grad(), swap:
            fast = map_tasks(one_task, (support_x, support_y), vectorise=vectorise)
        if not track:
            fast = {n: p.detach() for n, p in fast.items()}
        return fast

    def predict(self, adapted: Params, query_x: Tensor) -> Tensor:
        """Outputs ``[tasks, n_query, out]`` of the model with each task's fast weights."""
        names = self.adapt_names()
        if not isinstance(adapted, Mapping) or set(adapted) != set(names):
            got = sorted(adapted) if isinstance(adapted, Mapping) else type(adapted).__name__
            raise ValueError(f"adapted must be the fast-weight dict returned by adapt() with keys {names}, got {got}")
        tasks = {p.shape[0] for p in adapted.values()}
        if tasks != {query_x.shape[0]}:
            raise ValueError(
                f"adapted holds fast weights of {sorted(tasks)} tasks but query_x holds {query_x.shape[0]}"
            )
        vectorise = self.resolved_strategy(query_x.device) == "vmap"

        def one_task(fast: Params, qx: Tensor) -> Tensor:
            return self.forward_adapted(fast, self.features(qx))

        return map_tasks(one_task, (dict(adapted), query_x), vectorise=vectorise)

    def extra_repr(self) -> str:
        eval_steps = "" if self.eval_inner_steps is None else f", eval_inner_steps={self.eval_inner_steps}"
        return f"inner_steps={self.inner_steps}{eval_steps}, first_order={self.first_order}, strategy={self.strategy!r}"


class MAML(GradientLearner):
    """Model-Agnostic Meta-Learning (Finn et al. 2017): meta-learn the initial weights.

    Args:
        model: any module ``[batch, *x_shape] -> [batch, out]`` without running statistics.
        inner_lr: step size ``alpha`` of the inner gradient steps.
        inner_steps: inner steps in training mode (0 = no adaptation).
        first_order: treat inner gradients as constants (FOMAML): the meta-gradient becomes the
            query-loss gradient at the adapted weights, applied to the initial weights.
        eval_inner_steps: inner steps in eval mode (None: ``inner_steps``).
        strategy: ``"loop"``, ``"threads"``, ``"vmap"`` or ``"auto"`` (see the module docstring).

    ``meta_loss(task)`` is the query loss after adaptation; its gradient is the MAML
    meta-gradient (Chapter 2 derives it, Chapter 3 builds it).
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
        strategy: str = "auto",
    ) -> None:
        super().__init__(model, inner_steps=inner_steps, first_order=first_order,
                         eval_inner_steps=eval_inner_steps, strategy=strategy)
        self.inner_lr = check_positive("inner_lr", inner_lr)

    def inner_lrs(self) -> dict[str, float]:
        return {n: self.inner_lr for n in self.adapt_names()}

    def extra_repr(self) -> str:
        return f"inner_lr={self.inner_lr}, " + super().extra_repr()


def _lr_key(name: str) -> str:
    return name.replace(".", "-")  # ParameterDict keys cannot hold dots


class MetaSGD(GradientLearner):
    """Meta-SGD (Li et al. 2017): MAML whose every weight has its own learned learning rate.

    The rates live in ``learned_lrs``, a ``ParameterDict`` with one tensor of each adapted
    parameter's shape (key: its name with dots as dashes), all initialised to ``inner_lr_init``
    and meta-learned with the initial weights; an inner step is ``phi <- phi - lr * grad``
    elementwise. The rates may turn negative. Other arguments as in :class:`MAML`; parameters
    frozen at construction get no rate and do not adapt.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr_init: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
        strategy: str = "auto",
    ) -> None:
        super().__init__(model, inner_steps=inner_steps, first_order=first_order,
                         eval_inner_steps=eval_inner_steps, strategy=strategy)
        lr = check_positive("inner_lr_init", inner_lr_init)
        self._names = super().adapt_names()
        self.learned_lrs = nn.ParameterDict(
            {_lr_key(n): nn.Parameter(torch.full_like(p.detach(), lr))
             for n, p in self.model.named_parameters() if n in self._names}
        )

    def adapt_names(self) -> list[str]:
        return list(self._names)

    def inner_lrs(self) -> dict[str, Tensor]:
        return {n: self.learned_lrs[_lr_key(n)] for n in self._names}


class ANIL(GradientLearner):
    """Almost No Inner Loop (Raghu et al. 2020): adapt only the head, meta-learn everything.

    Args:
        model: an ``nn.Sequential`` whose last ``head`` children form the head; the children
            before it form the body (wrap your own modules as ``nn.Sequential(body, head)``).
        head: how many trailing children of ``model`` adapt (default 1: for ``mlp`` and
            ``conv4(out_features=...)`` that is the final ``nn.Linear``).
        inner_lr, inner_steps, first_order, eval_inner_steps, strategy: as in :class:`MAML`.

    The body's features of each task's support set are computed once per ``adapt`` (they do not
    change during the inner loop, so every inner step runs only the head); the query features
    once per ``predict``. The fast weights hold the head's parameters only. The body still gets
    a meta-gradient, through the features (and, second order, through the inner gradients).
    """

    def __init__(
        self,
        model: nn.Sequential,
        head: int = 1,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
        strategy: str = "auto",
    ) -> None:
        if not isinstance(model, nn.Sequential):
            raise TypeError(
                f"model must be an nn.Sequential whose last children form the head, got "
                f"{type(model).__name__}; wrap it as nn.Sequential(body, head)"
            )
        super().__init__(model, inner_steps=inner_steps, first_order=first_order,
                         eval_inner_steps=eval_inner_steps, strategy=strategy)
        if isinstance(head, bool) or not isinstance(head, int) or not 1 <= head <= len(model):
            raise ValueError(f"head must be an int between 1 and len(model)={len(model)}, got {head!r}")
        self.head = head
        self.inner_lr = check_positive("inner_lr", inner_lr)
        names = self.adapt_names()
        if not names:
            raise ValueError(f"the last {head} children of model have no trainable parameters to adapt")

    @property
    def split(self) -> int:
        """Index of the first head child in ``model``."""
        return len(self.model) - self.head

    def adapt_names(self) -> list[str]:
        return [n for n, p in self.model[self.split:].named_parameters() if p.requires_grad]

    def inner_lrs(self) -> dict[str, float]:
        return {n: self.inner_lr for n in self.adapt_names()}

    def features(self, x: Tensor) -> Tensor:
        return self.model[: self.split](x) if self.split > 0 else x

    def forward_adapted(self, fast: Params, h: Tensor) -> Tensor:
        return torch.func.functional_call(self.model[self.split:], fast, (h,))

    def extra_repr(self) -> str:
        return f"head={self.head}, inner_lr={self.inner_lr}, " + super().extra_repr()
