"""Reptile (Nichol et al. 2018): move the initialisation towards the weights each task adapts to.

Per task, ``inner_steps`` steps of plain full-batch SGD (MAML's inner loop, where Nichol et al. use
Adam) from ``theta`` give ``phi_i``; the meta-update is ``theta <- theta + eps * (mean_i phi_i -
theta)``, first order by construction (Chapter 3 compares it with first-order MAML).
:meth:`Reptile.batch_meta_loss` is a surrogate whose gradient is exactly ``theta - mean_i phi_i``
and whose value is the query loss after adaptation, so ``meta_train(...,
optimizer=torch.optim.SGD(learner.parameters(), lr=eps))`` performs the Reptile update.
``use_query=True`` also adapts on the query set during meta-training, as the original does.
``inner_optimizer="adam"`` and ``inner_batch_size`` give the inner loop of Nichol et al.'s code:
Adam with ``beta1 = 0`` on mini-batches drawn in turn from a shuffled copy of the task's examples.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlhelpers.learners.base import task_loss
from mlhelpers.learners.functional import Params, gradients
from mlhelpers.learners.maml import GradientLearner
from mlhelpers.tasks import Task
from mlhelpers.validation import check_bool, check_positive, check_positive_int

INNER_OPTIMIZERS = ("sgd", "adam")
ADAM_BETA2, ADAM_EPS = 0.999, 1e-8
"""Adam's second-moment decay and epsilon in the inner loop (TensorFlow's defaults, which Nichol et al. keep)."""


class Reptile(GradientLearner):
    """Reptile: first-order meta-learning of an initialisation by averaging adapted weights.

    Args:
        model: any module ``[batch, *x_shape] -> [batch, out]`` without running statistics.
        inner_lr: SGD step size of the inner loop.
        inner_steps: SGD steps per task in training (``k`` in the paper).
        eval_inner_steps: steps in eval mode (None: ``inner_steps``).
        use_query: also train the inner loop on the query set during meta-training.
        strategy: ``"loop"``, ``"threads"``, ``"vmap"`` or ``"auto"``, as in :class:`~mlhelpers.learners.maml.MAML`.
        inner_optimizer: ``"sgd"`` (plain steps of ``inner_lr``, MAML's inner loop) or ``"adam"``
            (Adam with step ``inner_lr`` and ``beta1 = 0``, as in Nichol et al.'s code; its moments
            start from zero for every task, where that code resets them only between evaluation
            tasks and carries them from task to task in training).
        inner_batch_size: examples per inner step, taken in turn from a shuffled copy of the task's
            examples (reshuffled once all are used, as that code does; drawn from torch's global
            generator); None: every step sees them all. With ``"adam"`` or a mini-batch size the
            inner loop runs task after task, whatever the ``strategy``.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.02,
        inner_steps: int = 5,
        eval_inner_steps: int | None = None,
        use_query: bool = False,
        strategy: str = "auto",
        inner_optimizer: str = "sgd",
        inner_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, inner_steps=inner_steps, first_order=True,
                         eval_inner_steps=eval_inner_steps, strategy=strategy)
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.use_query = check_bool("use_query", use_query)
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f"inner_optimizer must be one of {INNER_OPTIMIZERS}, got {inner_optimizer!r}")
        self.inner_optimizer = inner_optimizer
        self.inner_batch_size = None if inner_batch_size is None else check_positive_int(
            "inner_batch_size", inner_batch_size)

    def inner_loop(
        self, support_x: Tensor, support_y: Tensor, *, steps: int, create_graph: bool, track: bool
    ) -> Params:
        """MAML's inner loop, or with ``inner_optimizer="adam"`` or mini-batches the loop of
        :meth:`_own_inner_loop`; first order either way, so ``create_graph`` is never set here."""
        if self.inner_optimizer == "sgd" and self.inner_batch_size is None:
            return super().inner_loop(support_x, support_y, steps=steps, create_graph=create_graph, track=track)
        fast = self._own_inner_loop(support_x, support_y, steps)
        if not track:
            return fast
        # First order: the identity path from theta, as MAML's first-order inner loop keeps it.
        theta = dict(self.model.named_parameters())
        return {n: theta[n] + (p - theta[n].detach()) for n, p in fast.items()}

    def _own_inner_loop(self, support_x: Tensor, support_y: Tensor, steps: int) -> Params:
        """Fast weights ``name -> [tasks, *shape]``, detached: per task, ``steps`` steps of SGD or of
        Adam (``beta1 = 0``: the step is ``g / (sqrt(v_hat) + eps)``) on mini-batches of
        ``[inner_batch_size]`` examples of ``[tasks, n, ...]`` inputs."""
        names = self.adapt_names()
        n = support_x.shape[1]
        batch = n if self.inner_batch_size is None else min(self.inner_batch_size, n)
        adapted = []
        for sx, sy in zip(support_x, support_y):
            fast = {k: p.detach() for k, p in self.model.named_parameters() if k in names}
            second_moment = {k: torch.zeros_like(p) for k, p in fast.items()}
            order = torch.randperm(n, device=sx.device) if batch < n else torch.arange(n, device=sx.device)
            used = 0
            for step in range(1, steps + 1):
                if used + batch > n:
                    order, used = torch.randperm(n, device=sx.device), 0
                index = order[used:used + batch]
                used += batch
                leaves = {k: p.requires_grad_() for k, p in fast.items()}
                x, y = self.features(sx[index]), sy[index]
                with torch.enable_grad():
                    grads = gradients(lambda f, x=x, y=y: task_loss(self.forward_adapted(f, x)[None], y[None]), leaves,
                                      create_graph=False, functional=False)
                with torch.no_grad():
                    if self.inner_optimizer == "sgd":
                        fast = {k: p - self.inner_lr * grads[k] for k, p in leaves.items()}
                    else:
                        for k in names:
                            second_moment[k] = ADAM_BETA2 * second_moment[k] + (1 - ADAM_BETA2) * grads[k] ** 2
                        correction = 1 - ADAM_BETA2 ** step
                        fast = {k: p - self.inner_lr * grads[k] / ((second_moment[k] / correction).sqrt() + ADAM_EPS)
                                for k, p in leaves.items()}
            adapted.append(fast)
        return {k: torch.stack([f[k] for f in adapted]) for k in names}

    def batch_meta_loss(self, task: Task) -> Tensor:
        """Surrogate: value = query loss after adaptation, gradient = ``theta - mean_i phi_i``."""
        x, y = task.support_x, task.support_y
        if self.use_query:
            x, y = torch.cat([x, task.query_x], dim=1), torch.cat([y, task.query_y], dim=1)
        phi = self.inner_loop(x, y, steps=self.inner_steps, create_graph=False, track=False)
        params = dict(self.model.named_parameters())
        # 0.5 * ||theta - phi_bar||^2 has gradient theta - phi_bar with respect to theta.
        pull = sum(0.5 * (params[n] - p.mean(dim=0)).pow(2).sum() for n, p in phi.items())
        with torch.no_grad():
            query_loss = task_loss(self._predict(phi, task.query_x), task.query_y)
        return query_loss + (pull - pull.detach())

    def extra_repr(self) -> str:
        own = "" if self.inner_optimizer == "sgd" else f", inner_optimizer={self.inner_optimizer!r}"
        own += "" if self.inner_batch_size is None else f", inner_batch_size={self.inner_batch_size}"
        return f"inner_lr={self.inner_lr}, use_query={self.use_query}{own}, " + super().extra_repr()
