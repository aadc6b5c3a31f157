"""Conditioning a shared network on the task (Chapter 3, section 3.5): CAVIA and FiLM.

Both learners keep one meta-learned network for all tasks and give it a small task-specific input:

- :class:`CAVIA` (Zintgraf et al. 2019): a context vector ``c`` of ``num_context`` numbers, zero at
  the start of every task, is the only thing the inner loop adapts, by gradient steps on the support
  loss; the outer loop meta-learns the network (second order by default, through the inner steps).
  For an MLP the context is concatenated to the input; for a conv net it modulates one layer's
  channels through :class:`FiLM`, as the paper does for its image experiments.
- :class:`FiLMLearner` (Perez et al. 2018, as TADAM and CNAPs use it): a task encoder embeds every
  support pair ``(x, y)``, averages the embeddings and maps the mean to a per-channel scale and shift
  of one layer. Adaptation is a forward pass: no gradient steps.

Neither learner swaps weights inside the network (the network's parameters are never fast weights),
so both are safe to call from several threads at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlhelpers.learners.base import MetaLearner, task_loss
from mlhelpers.learners.functional import (
    check_no_running_stats,
    map_tasks,
    resolve_strategy,
    sgd_steps,
    with_plain_norms,
)
from mlhelpers.models import mlp
from mlhelpers.validation import (
    check_bool,
    check_labels,
    check_module,
    check_positive,
    check_positive_int,
    check_shape,
    check_steps,
)

CONDITIONING_STRATEGIES: tuple[str, ...] = ("auto", "loop", "vmap")


def _check_strategy(strategy: Any) -> str:
    if strategy not in CONDITIONING_STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(map(repr, CONDITIONING_STRATEGIES))}, got {strategy!r}")
    return strategy


class FiLM(nn.Module):
    """Feature-wise linear modulation (Perez et al. 2018) of ``channels`` channels from a vector.

    ``forward(h, z)``: ``h`` ``[n, channels, *spatial]`` (or ``[n, channels]``), ``z`` ``[cond_features]``
    for one task; returns ``h * (1 + gamma) + beta`` with ``(gamma, beta) = linear(z)``, one scale and
    one shift per channel (CAVIA's own code writes ``gamma * h + beta``; the ``1 +`` only moves the
    scale's origin). The biases start at zero, so a zero ``z`` gives the identity (the weights
    keep PyTorch's default initialisation: zero weights would leave CAVIA's context without gradient).
    """

    def __init__(self, cond_features: int, channels: int) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.linear = nn.Linear(check_positive_int("cond_features", cond_features), 2 * channels)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: Tensor, z: Tensor) -> Tensor:
        if h.dim() < 2 or h.shape[1] != self.channels:
            raise ValueError(f"FiLM modulates {self.channels} channels: the features must be "
                             f"[n, {self.channels}, ...], got shape {tuple(h.shape)}")
        gamma, beta = self.linear(z).chunk(2, dim=-1)
        shape = (1, self.channels) + (1,) * (h.dim() - 2)
        return h * (1 + gamma.reshape(shape)) + beta.reshape(shape)


def _check_film_after(model: nn.Module, film_after: Any) -> int:
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential to modulate one of its children (film_after), "
                        f"got {type(model).__name__}")
    if isinstance(film_after, bool) or not isinstance(film_after, int) or not 0 <= film_after < len(model) - 1:
        raise ValueError(f"film_after must be the index of a child of model before its last one, "
                         f"0..{len(model) - 2}, got {film_after!r}")
    return film_after


def film_forward(model: nn.Sequential, film_after: int, film: FiLM, x: Tensor, z: Tensor) -> Tensor:
    """One task through ``model`` with the output of child ``film_after`` modulated by ``film(., z)``:
    ``x`` ``[n, *x_shape]``, ``z`` ``[cond_features]``; returns ``[n, out]``."""
    h = model[: film_after + 1](x)
    return model[film_after + 1:](film(h, z))


class CAVIA(MetaLearner):
    """CAVIA (Zintgraf et al. 2019): adapt only a context vector, meta-learn the network.

    Args:
        model: the shared network. Without ``film_after``: any module ``[n, d + num_context] -> [n, out]``
            for flattened examples of ``d`` numbers, the context concatenated to each (for the sinusoid
            MLP, ``mlp(1 + num_context, 1)``). With ``film_after``: an ``nn.Sequential`` whose child
            ``film_after`` outputs ``[n, channels, ...]``, modulated by :class:`FiLM` from the context.
        num_context: the context's size (the paper uses 5 for sinusoids in its code's default).
        inner_lr: step size of the inner gradient steps on the context (the code's default: 1.0).
        inner_steps: inner steps in training mode (0: the network with a zero context).
        first_order: treat the inner gradients as constants.
        eval_inner_steps: inner steps in eval mode (None: ``inner_steps``).
        film_after, channels: where FiLM modulates the network, and how many channels it has there.
        strategy: ``"loop"`` over tasks, ``"vmap"``, or ``"auto"`` (loop on the CPU).

    ``adapt`` returns the adapted contexts ``[tasks, num_context]``; each starts at zero.
    """

    def __init__(
        self,
        model: nn.Module,
        num_context: int = 5,
        inner_lr: float = 1.0,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
        film_after: int | None = None,
        channels: int | None = None,
        strategy: str = "auto",
    ) -> None:
        super().__init__()
        check_no_running_stats(check_module("model", model))
        self.model = model
        self.num_context = check_positive_int("num_context", num_context)
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.inner_steps = check_steps("inner_steps", inner_steps)
        self.eval_inner_steps = None if eval_inner_steps is None else check_steps("eval_inner_steps", eval_inner_steps)
        self.first_order = check_bool("first_order", first_order)
        self.strategy = _check_strategy(strategy)
        self.film_after = None if film_after is None else _check_film_after(model, film_after)
        if film_after is None and channels is not None:
            raise ValueError("channels is the width FiLM modulates: give it with film_after, or leave both None")
        self.film = None if film_after is None else FiLM(self.num_context, check_positive_int("channels", channels))

    @property
    def steps(self) -> int:
        """Inner steps of the current mode: ``inner_steps`` in training, else ``eval_inner_steps``."""
        if self.training or self.eval_inner_steps is None:
            return self.inner_steps
        return self.eval_inner_steps

    def conditioned(self, model: nn.Module, context: Tensor, x: Tensor) -> Tensor:
        """Outputs ``[n, out]`` of one task's inputs ``[n, *x_shape]`` with its context ``[num_context]``."""
        if self.film is None:
            return model(torch.cat([x.flatten(1), context.expand(x.shape[0], -1)], dim=1))
        return film_forward(model, self.film_after, self.film, x, context)

    def _vectorise(self, device: torch.device) -> bool:
        return resolve_strategy(self.strategy, device) == "vmap"

    def _adapt(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        """Contexts ``[tasks, num_context]`` after :attr:`steps` gradient steps from zero on each support set."""
        track = torch.is_grad_enabled()
        create_graph = track and self.training and not self.first_order
        vectorise = self._vectorise(support_x.device)
        # vmap's second order through fused norm kernels is wrong (Chapter 3, pitfall 4): plain ops instead.
        model = with_plain_norms(self.model) if vectorise and create_graph else self.model
        zero = support_x.new_zeros(self.num_context)

        def one_task(sx: Tensor, sy: Tensor) -> Tensor:
            def support_loss(fast: dict[str, Tensor]) -> Tensor:
                return task_loss(self.conditioned(model, fast["context"], sx)[None], sy[None])

            fast = sgd_steps(support_loss, {"context": zero}, {"context": self.inner_lr}, self.steps,
                             create_graph=create_graph, functional=vectorise)
            return fast["context"]

        with torch.enable_grad():
            contexts = map_tasks(one_task, (support_x, support_y), vectorise=vectorise)
        return contexts if track else contexts.detach()

    def _predict(self, adapted: Tensor, query_x: Tensor) -> Tensor:
        """Outputs ``[tasks, n_query, out]`` of the network with each task's adapted context."""
        if not isinstance(adapted, Tensor) or adapted.dim() != 2 or adapted.shape[1] != self.num_context:
            got = tuple(adapted.shape) if isinstance(adapted, Tensor) else type(adapted).__name__
            raise ValueError(f"adapted must be the contexts [tasks, {self.num_context}] returned by adapt(), got {got}")
        return map_tasks(lambda c, x: self.conditioned(self.model, c, x), (adapted, query_x),
                         vectorise=self._vectorise(query_x.device))

    def extra_repr(self) -> str:
        film = "" if self.film is None else f", film_after={self.film_after}"
        eval_steps = "" if self.eval_inner_steps is None else f", eval_inner_steps={self.eval_inner_steps}"
        return (f"num_context={self.num_context}, inner_lr={self.inner_lr}, inner_steps={self.inner_steps}"
                f"{eval_steps}, first_order={self.first_order}{film}, strategy={self.strategy!r}")


class FiLMLearner(MetaLearner):
    """A network modulated by a task embedding of the support set (FiLM; TADAM, CNAPs): no inner loop.

    The task encoder is an MLP ``[prod(input_shape) + target_features] -> [embed_dim]`` applied to every
    support pair (flattened ``x`` joined to ``y``: regression targets as they are, class labels one-hot
    over ``target_features`` classes); the task embedding is the mean over the support set (so it does
    not depend on the order of the pairs), and a :class:`FiLM` layer turns it into a scale and a shift
    of each of the ``channels`` channels of child ``film_after`` of ``model``. Everything is meta-learned
    by the query loss; ``adapt`` returns the embeddings ``[tasks, embed_dim]``.

    Args:
        model: an ``nn.Sequential`` ``[n, *x_shape] -> [n, out]`` without running statistics.
        input_shape: the shape of one example (``(1,)`` for sinusoids, ``(1, 28, 28)`` for Omniglot).
        target_features: the width of a regression target, or the number of classes.
        film_after, channels: as in :class:`CAVIA`.
        embed_dim, encoder_hidden: the task encoder's output width and hidden layers.
        strategy: ``"loop"``, ``"vmap"`` or ``"auto"``.
    """

    needs_grad_to_adapt = False

    def __init__(
        self,
        model: nn.Sequential,
        *,
        input_shape: Sequence[int],
        target_features: int,
        film_after: int,
        channels: int,
        embed_dim: int = 32,
        encoder_hidden: Sequence[int] = (64, 64),
        strategy: str = "auto",
    ) -> None:
        super().__init__()
        check_no_running_stats(check_module("model", model))
        self.model = model
        self.film_after = _check_film_after(model, film_after)
        self.input_shape = check_shape("input_shape", input_shape)
        self.target_features = check_positive_int("target_features", target_features)
        embed_dim = check_positive_int("embed_dim", embed_dim)
        self.encoder = mlp(math.prod(self.input_shape) + self.target_features, embed_dim, hidden=encoder_hidden)
        self.film = FiLM(embed_dim, channels)
        self.strategy = _check_strategy(strategy)

    def embed(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        """Task embeddings ``[tasks, embed_dim]``: the mean of the encoded support pairs."""
        self._check_examples("support_x", support_x)
        if support_y.is_floating_point():
            targets = support_y.flatten(2)
            if targets.shape[-1] != self.target_features:
                raise ValueError(f"support_y holds regression targets of {targets.shape[-1]} numbers (shape "
                                 f"{tuple(support_y.shape)}) but target_features={self.target_features}")
        else:
            check_labels("support_y", support_y, self.target_features)
            targets = F.one_hot(support_y.long(), self.target_features).to(support_x.dtype)
        return self.encoder(torch.cat([support_x.flatten(2), targets], dim=-1)).mean(dim=1)

    def _check_examples(self, name: str, x: Tensor) -> None:
        if tuple(x.shape[2:]) != self.input_shape:
            shape = ", ".join(map(str, self.input_shape))
            raise ValueError(f"{name} must be [tasks, n, *input_shape] = [tasks, n, {shape}], got {tuple(x.shape)}")

    def _adapt(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        return self.embed(support_x, support_y)

    def _predict(self, adapted: Tensor, query_x: Tensor) -> Tensor:
        width = self.film.linear.in_features
        if not isinstance(adapted, Tensor) or adapted.dim() != 2 or adapted.shape[1] != width:
            got = tuple(adapted.shape) if isinstance(adapted, Tensor) else type(adapted).__name__
            raise ValueError(f"adapted must be the task embeddings [tasks, {width}] returned by adapt(), got {got}")
        self._check_examples("query_x", query_x)
        vectorise = resolve_strategy(self.strategy, query_x.device) == "vmap"
        return map_tasks(lambda z, x: film_forward(self.model, self.film_after, self.film, x, z),
                         (adapted, query_x), vectorise=vectorise)

    def extra_repr(self) -> str:
        return f"film_after={self.film_after}, strategy={self.strategy!r}"
