"""Proto-MAML (Triantafillou et al. 2020): MAML whose output layer starts as the ProtoNet classifier.

For each task the embedding ``f`` (the meta-learned initial weights) computes the class
prototypes ``c_n`` of the support set, and a linear head is initialised to

    W_n = 2 c_n,    b_n = -||c_n||^2,

so that ``W_n . f(x) + b_n = -||f(x) - c_n||^2 + ||f(x)||^2``: ProtoNet's logits up to a constant
per query, the same class probabilities (Chapter 4 derives it). The inner loop then fine-tunes
the embedding and the head together on the support set, as MAML does. The head depends on the
initial weights through the prototypes, and the meta-gradient flows through that dependence too
(also with ``first_order=True``, which drops only the inner gradients' second derivatives, as
the paper's fo-Proto-MAML).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlhelpers.learners.base import task_loss
from mlhelpers.learners.functional import (
    Params,
    map_tasks,
    module_for_this_thread,
    sgd_steps,
    with_plain_norms,
)
from mlhelpers.learners.maml import MAML
from mlhelpers.learners.matching import support_one_hot

HEAD_WEIGHT, HEAD_BIAS = "proto_head.weight", "proto_head.bias"
"""Keys of the task's linear head ``[n_way, D]``, ``[n_way]`` in Proto-MAML's fast weights."""


def prototype_head(embeddings: Tensor, one_hot: Tensor) -> tuple[Tensor, Tensor]:
    """The linear layer equal to ProtoNet's classifier: ``W = 2 c``, ``b = -||c||^2``.

    ``embeddings`` ``[n_support, D]`` and float ``one_hot`` labels ``[n_support, n_way]`` of one
    task; returns ``W`` ``[n_way, D]`` and ``b`` ``[n_way]``, with ``c`` the class means.
    """
    prototypes = (one_hot.T @ embeddings) / one_hot.sum(0)[:, None]
    return 2 * prototypes, -prototypes.pow(2).sum(-1)


class ProtoMAML(MAML):
    """MAML with a prototype-initialised output layer, fine-tuned in the inner loop with the embedding.

    Args:
        model: the embedding ``[batch, *x_shape] -> [batch, D]`` (e.g. ``conv4(norm="task")``), without
            a classification head and without running statistics; any number of ways works.
        inner_lr, inner_steps, first_order, eval_inner_steps, strategy: as in
            :class:`~mlhelpers.learners.maml.MAML`. With zero inner steps the predictions are
            ProtoNet's (logits differ by ``-||f(x)||^2`` per query).

    ``adapt`` returns fast weights: the adapted parameters of ``model`` (``[tasks, *shape]``) and the
    task's head under :data:`HEAD_WEIGHT` ``[tasks, n_way, D]`` and :data:`HEAD_BIAS` ``[tasks, n_way]``;
    ``predict`` returns logits ``[tasks, n_query, n_way]``.
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
        super().__init__(model, inner_lr, inner_steps, first_order, eval_inner_steps, strategy)
        clash = {HEAD_WEIGHT, HEAD_BIAS} & {n for n, _ in model.named_parameters()}
        if clash:
            raise ValueError(f"model has parameters named {sorted(clash)}, which ProtoMAML uses for its head")

    def embed(self, fast: Params, x: Tensor) -> Tensor:
        """``[n, *x_shape]`` -> ``[n, D]`` with the model's parameters replaced by those of ``fast``."""
        body = {n: p for n, p in fast.items() if n not in (HEAD_WEIGHT, HEAD_BIAS)}
        return torch.func.functional_call(module_for_this_thread(self.model), body, (x,))

    def forward_adapted(self, fast: Params, h: Tensor) -> Tensor:
        """Logits ``[n, n_way]``: the task's head on the embedding, both from ``fast``."""
        return self.embed(fast, h) @ fast[HEAD_WEIGHT].T + fast[HEAD_BIAS]

    def inner_loop(
        self, support_x: Tensor, support_y: Tensor, *, steps: int, create_graph: bool, track: bool
    ) -> Params:
        """Per task: the head from the prototypes of the initial embedding, then ``steps`` SGD steps
        on embedding and head together. Arguments as in :meth:`~mlhelpers.learners.maml.GradientLearner.inner_loop`."""
        vectorise = self.resolved_strategy(support_x.device) == "vmap"
        params = dict(self.model.named_parameters())
        theta = {n: params[n] if track else params[n].detach() for n in self.adapt_names()}
        lrs = {n: self.inner_lr for n in (*theta, HEAD_WEIGHT, HEAD_BIAS)}
        # Norms as plain tensor ops for second order: torch.func.grad below, like vmap, needs them.
        runner = with_plain_norms(self) if create_graph else self
        dtype = next(iter(params.values())).dtype if params else support_x.dtype
        # outside vmap (one_hot has no batching rule); checks the labels and that every class has an example
        one_hot = support_one_hot(support_y, dtype=dtype)

        def one_task(sx: Tensor, sy: Tensor, labels: Tensor) -> Params:
            weight, bias = prototype_head(runner.embed(theta, sx), labels)
            start = {**theta, HEAD_WEIGHT: weight, HEAD_BIAS: bias}

            def support_loss(fast: Params) -> Tensor:
                return task_loss(runner.forward_adapted(fast, sx)[None], sy[None])

            # functional=True (torch.func.grad): the inner gradient treats the head and the embedding
            # as separate variables, although the head was computed from the embedding's weights;
            # torch.autograd.grad would add the path through the prototypes to the embedding's gradient.
            return sgd_steps(support_loss, start, lrs, steps, create_graph=create_graph, functional=True)

        with torch.enable_grad():
            fast = map_tasks(one_task, (support_x, support_y, one_hot), vectorise=vectorise)
        if not track:
            fast = {n: p.detach() for n, p in fast.items()}
        return fast

    def _predict(self, adapted: Params, query_x: Tensor) -> Tensor:
        names = {*self.adapt_names(), HEAD_WEIGHT, HEAD_BIAS}
        if not isinstance(adapted, dict) or set(adapted) != names:
            got = sorted(adapted) if isinstance(adapted, dict) else type(adapted).__name__
            raise ValueError(f"adapted must be the fast-weight dict returned by adapt() with keys {sorted(names)}, "
                             f"got {got}")
        tasks = {p.shape[0] for p in adapted.values()}
        if tasks != {query_x.shape[0]}:
            raise ValueError(
                f"adapted holds fast weights of {sorted(tasks)} tasks but query_x holds {query_x.shape[0]}"
            )
        vectorise = self.resolved_strategy(query_x.device) == "vmap"
        return map_tasks(self.forward_adapted, (dict(adapted), query_x), vectorise=vectorise)
