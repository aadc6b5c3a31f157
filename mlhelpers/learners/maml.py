"""MAML and its relatives: learn an initialisation that a few gradient steps adapt to a task.

Chapter 2 derives the bilevel problem and its meta-gradient; Chapter 3 builds MAML from scratch.
:class:`MAML` (Finn et al. 2017), :class:`MetaSGD` (Li et al. 2017, a learned rate per weight) and
:class:`ANIL` (Raghu et al. 2020, adapt only the head) wrap any ``nn.Module`` without running
statistics (:func:`~mlhelpers.learners.functional.check_no_running_stats`) and share one inner loop
(:func:`~mlhelpers.learners.functional.sgd_steps`); Reptile is in :mod:`~mlhelpers.learners.reptile`.

``adapt`` returns the fast weights ``name -> [tasks, *shape]`` (the adapted parameters only);
``predict(fast, query_x)`` returns ``[tasks, n_query, out]``. In training mode the inner loop takes
``inner_steps`` steps and keeps the inner gradients' graph unless ``first_order``; in eval mode it
takes ``eval_inner_steps`` steps with the inner gradients as constants.

``strategy`` batches over tasks, all with the same meta-gradient: ``"loop"`` (task after task, each
task's graph freed once its meta-gradient is taken), ``"threads"`` (the same over worker threads,
:mod:`~mlhelpers.learners.parallel`), ``"vmap"`` (``torch.func.vmap``; the whole batch's
graph is kept, so the meta-loss can be differentiated again; second order runs the norms as plain
tensor operations, :func:`~mlhelpers.learners.functional.with_plain_norms`) or ``"auto"``: vmap off
the CPU; on the CPU the loop with one intra-op thread, and with more, whichever of the loop and
threads was faster when the learner timed both on its first meta-batch in training
(:attr:`GradientLearner.measured_strategy`; timed again if the thread count changes). Which one
wins depends on the CPU, its load and the task sizes, so it is measured, not assumed; the two
differ only in the order of floating-point sums, so for runs reproducible bit for bit name the
strategy.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mlhelpers.learners.base import MetaLearner, task_loss
from mlhelpers.learners.functional import (
    Params,
    check_no_running_stats,
    check_strategy,
    map_tasks,
    module_for_this_thread,
    resolve_strategy,
    sgd_steps,
    with_plain_norms,
)
from mlhelpers.learners.parallel import fastest, per_task_meta_loss, threaded_forward
from mlhelpers.tasks import Task
from mlhelpers.validation import check_bool, check_module, check_positive, check_positive_int, check_steps


class GradientLearner(MetaLearner):
    """Base of the gradient-based learners: adapt by gradient steps from meta-learned weights.

    Subclasses choose which parameters adapt (:meth:`adapt_names`), with which learning rates
    (:meth:`inner_lrs`), and how inputs reach them (:meth:`features`, :meth:`forward_adapted`).
    """

    inner_lr: float
    """The fixed step size of the inner loop (MAML, ANIL, Reptile; Meta-SGD learns its rates)."""

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
        check_no_running_stats(check_module("model", model))
        self.model = model
        self.inner_steps = check_steps("inner_steps", inner_steps)
        self.eval_inner_steps = None if eval_inner_steps is None else check_steps("eval_inner_steps", eval_inner_steps)
        self.first_order = check_bool("first_order", first_order)
        self.strategy = check_strategy(strategy)
        self._measured: tuple[int, str] | None = None  # (intra-op threads, strategy) timed by "auto"

    # --- what subclasses choose ---------------------------------------------------------------

    def adapt_names(self) -> list[str]:
        """Names of the parameters the inner loop adapts (default: all trainable ones)."""
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def inner_lrs(self) -> Mapping[str, float | Tensor]:
        """Learning rate of each adapted parameter: a float or a tensor of its shape.

        Default: the fixed ``inner_lr`` that MAML, ANIL and Reptile set; Meta-SGD learns them.
        """
        return {n: self.inner_lr for n in self.adapt_names()}

    def features(self, x: Tensor) -> Tensor:
        """What the adapted parameters see, for one task's inputs ``[n, *x_shape]`` (default: x)."""
        return x

    def forward_adapted(self, fast: Params, h: Tensor) -> Tensor:
        """Outputs ``[n, out]`` of one task from its fast weights and :meth:`features` ``h``."""
        return torch.func.functional_call(module_for_this_thread(self.model), fast, (h,))

    # --- shared machinery ---------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Inner steps of the current mode: ``inner_steps`` in training, else ``eval_inner_steps``."""
        if self.training or self.eval_inner_steps is None:
            return self.inner_steps
        return self.eval_inner_steps

    @property
    def measured_strategy(self) -> str | None:
        """``"loop"`` or ``"threads"``: what ``strategy="auto"`` measured to be faster on the CPU at the
        current intra-op thread count, or None if it has not timed them (yet, or ever)."""
        if self._measured is None or self._measured[0] != torch.get_num_threads():
            return None
        return self._measured[1]

    def resolved_strategy(self, device: torch.device) -> str:
        """``"loop"``, ``"threads"`` or ``"vmap"``: the strategy, with ``"auto"`` decided by ``device``
        (and on the CPU by :attr:`measured_strategy` once it is known)."""
        if self.strategy == "auto" and device.type == "cpu" and self.measured_strategy is not None:
            return self.measured_strategy
        return resolve_strategy(self.strategy, device)

    def _should_time_strategies(self, task: Task) -> bool:
        return (self.strategy == "auto" and task.device.type == "cpu" and len(task) > 1 and self.training
                and torch.is_grad_enabled() and torch.get_num_threads() > 1 and self.measured_strategy is None)

    def _threaded(self, task: Task) -> bool:
        return len(task) > 1 and self.resolved_strategy(task.device) == "threads"

    def _forward(self, task: Task) -> Tensor:
        if self._threaded(task):
            return threaded_forward(self, task, workers=torch.get_num_threads())
        return super()._forward(task)

    def _meta_loss(self, task: Task) -> Tensor:
        """With ``"loop"`` or ``"threads"`` and autograd on, each task's meta-gradient is computed at
        once and its graph freed (task after task, or in worker threads): memory holds one task's
        graph per worker, as a hand-written per-task loop. ``backward()`` on the result delivers the
        same meta-gradient; a second differentiation (``create_graph=True``) needs ``"vmap"``."""
        if self._should_time_strategies(task):
            workers = torch.get_num_threads()
            choice, loss = fastest({"loop": lambda: per_task_meta_loss(self, task, workers=1),
                                    "threads": lambda: per_task_meta_loss(self, task, workers=workers)})
            self._measured = (workers, choice)
            return loss
        strategy = self.resolved_strategy(task.device)
        if len(task) > 1 and torch.is_grad_enabled() and strategy in ("loop", "threads"):
            workers = torch.get_num_threads() if strategy == "threads" else 1
            return per_task_meta_loss(self, task, workers=workers)
        return self.batch_meta_loss(task)

    def batch_meta_loss(self, task: Task) -> Tensor:
        """The meta-loss of a batch of tasks, computed in the calling thread (override this)."""
        return super()._meta_loss(task)

    def _adapt(self, support_x: Tensor, support_y: Tensor) -> Params:
        """Fast weights ``name -> [tasks, *shape]`` after :attr:`steps` steps on each support set."""
        track = torch.is_grad_enabled()
        create_graph = track and self.training and not self.first_order
        return self.inner_loop(support_x, support_y, steps=self.steps, create_graph=create_graph, track=track)

    def inner_loop(
        self, support_x: Tensor, support_y: Tensor, *, steps: int, create_graph: bool, track: bool
    ) -> Params:
        """The inner loop of every task of ``[tasks, n, ...]`` inputs and targets, checked already.

        ``create_graph`` keeps the inner gradients' graph (second order); ``track=False`` detaches
        the result from the initial weights. Returns fast weights ``name -> [tasks, *shape]``.
        """
        if not self.adapt_names():
            raise ValueError(
                f"model has no trainable parameters for {type(self).__name__}'s inner loop to adapt (it has none, "
                "or all have requires_grad=False); unfreeze some, or use a learner that adapts something else "
                "(ProtoNet, CAVIA)")
        vectorise = self.resolved_strategy(support_x.device) == "vmap"
        params = dict(self.model.named_parameters())
        theta = {n: params[n] if track else params[n].detach() for n in self.adapt_names()}
        lrs = {n: lr if track or not isinstance(lr, Tensor) else lr.detach() for n, lr in self.inner_lrs().items()}
        # Same parameters, norms as plain tensor ops: vmap's second order through fused norms is wrong.
        runner = with_plain_norms(self) if vectorise and create_graph else self

        def one_task(sx: Tensor, sy: Tensor) -> Params:
            h = runner.features(sx)

            def support_loss(fast: Params) -> Tensor:
                return task_loss(runner.forward_adapted(fast, h)[None], sy[None])

            return sgd_steps(support_loss, theta, lrs, steps, create_graph=create_graph, functional=vectorise)

        with torch.enable_grad():
            fast = map_tasks(one_task, (support_x, support_y), vectorise=vectorise)
        if not track:
            fast = {n: p.detach() for n, p in fast.items()}
        return fast

    def _predict(self, adapted: Params, query_x: Tensor) -> Tensor:
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

    The body's features are computed once per ``adapt`` and ``predict``, so inner steps run only
    the head; the fast weights hold the head's parameters. The body gets a meta-gradient through
    the features.
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
        if check_positive_int("head", head) > len(model):
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

    def features(self, x: Tensor) -> Tensor:
        return self.model[: self.split](x) if self.split > 0 else x

    def forward_adapted(self, fast: Params, h: Tensor) -> Tensor:
        return torch.func.functional_call(module_for_this_thread(self.model)[self.split:], fast, (h,))

    def extra_repr(self) -> str:
        return f"head={self.head}, inner_lr={self.inner_lr}, " + super().extra_repr()
