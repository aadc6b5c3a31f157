"""Reptile (Nichol et al. 2018): move the initialisation towards the weights each task adapts to.

Per task, ``inner_steps`` steps of plain full-batch SGD (MAML's inner loop, where Nichol et al. use
Adam) from ``theta`` give ``phi_i``; the meta-update is ``theta <- theta + eps * (mean_i phi_i -
theta)``, first order by construction (Chapter 3 compares it with first-order MAML).
:meth:`Reptile.batch_meta_loss` is a surrogate whose gradient is exactly ``theta - mean_i phi_i``
and whose value is the query loss after adaptation, so ``meta_train(...,
optimizer=torch.optim.SGD(learner.parameters(), lr=eps))`` performs the Reptile update.
``use_query=True`` also adapts on the query set during meta-training, as the original does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlhelpers.learners.base import task_loss
from mlhelpers.learners.maml import GradientLearner
from mlhelpers.tasks import Task
from mlhelpers.validation import check_bool, check_positive


class Reptile(GradientLearner):
    """Reptile: first-order meta-learning of an initialisation by averaging adapted weights.

    Args:
        model: any module ``[batch, *x_shape] -> [batch, out]`` without running statistics.
        inner_lr: SGD step size of the inner loop.
        inner_steps: SGD steps per task in training (``k`` in the paper).
        eval_inner_steps: steps in eval mode (None: ``inner_steps``).
        use_query: also train the inner loop on the query set during meta-training.
        strategy: ``"loop"``, ``"threads"``, ``"vmap"`` or ``"auto"``, as in :class:`~mlhelpers.learners.maml.MAML`.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.02,
        inner_steps: int = 5,
        eval_inner_steps: int | None = None,
        use_query: bool = False,
        strategy: str = "auto",
    ) -> None:
        super().__init__(model, inner_steps=inner_steps, first_order=True,
                         eval_inner_steps=eval_inner_steps, strategy=strategy)
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.use_query = check_bool("use_query", use_query)

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
        return f"inner_lr={self.inner_lr}, use_query={self.use_query}, " + super().extra_repr()
