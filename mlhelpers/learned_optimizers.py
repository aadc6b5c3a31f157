"""Learned optimisers (Chapter 9): learn the update rule instead of the start or the step size.

- :class:`CoordinatewiseLSTM`: the optimiser of Andrychowicz et al. 2016, a small LSTM applied to
  every coordinate of the optimisee separately (one set of weights, one hidden state per
  coordinate), with the log/sign gradient preprocessing of :func:`preprocess_gradients`.
- :class:`Problem`, :func:`quadratic_problem`, :func:`model_problem`: what an optimiser optimises:
  start parameters and a loss ``loss(params, t) -> [batch]`` (``t``: the step, to pick a minibatch).
  :func:`model_problem` wraps any ``nn.Module`` through ``torch.func.functional_call``.
- :func:`unroll`: run the learned optimiser for some steps, keeping the graph for the meta-gradient;
  :func:`train_optimizer`: meta-train it by truncated backpropagation through time;
  :func:`optimise_with`: the same problem under a hand-designed ``torch.optim`` optimiser.
- :class:`MetaLearnerLSTM`: Ravi & Larochelle 2017's meta-learner, whose cell state is the
  learner's weights and whose input and forget gates are a learned step size and weight decay,
  as a :class:`~mlhelpers.learners.base.MetaLearner` that ``meta_train`` and ``evaluate`` drive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mlhelpers.learners.base import task_loss
from mlhelpers.learners.functional import Params
from mlhelpers.learners.maml import GradientLearner
from mlhelpers.validation import check_bool, check_module, check_positive, check_positive_int, check_steps

__all__ = [
    "CoordinatewiseLSTM",
    "MetaLearnerLSTM",
    "Problem",
    "Unrolled",
    "model_problem",
    "optimise_with",
    "preprocess_gradients",
    "quadratic_problem",
    "train_optimizer",
    "unroll",
]

LSTMState = list[tuple[Tensor, Tensor]]
"""One ``(h, c)`` pair per layer, each ``[n, hidden_size]`` (``n``: coordinates)."""


def preprocess_gradients(grad: Tensor, p: float = 10.0) -> Tensor:
    """``[...] -> [..., 2]``: Andrychowicz et al.'s appendix A, ``(log|g| / p, sign g)`` if
    ``|g| >= exp(-p)``, else ``(-1, exp(p) g)``. Both features lie in [-1, 1] for gradients up to
    ``exp(p)``, whatever their scale, and the second keeps the sign of tiny gradients."""
    check_positive("p", p)
    big = grad.abs() >= math.exp(-p)
    # clamp inside the log: its gradient at the unused branch must stay finite
    log = torch.where(big, grad.abs().clamp_min(math.exp(-p)).log() / p, -torch.ones_like(grad))
    sign = torch.where(big, torch.sign(grad), math.exp(p) * grad)
    return torch.stack([log, sign], dim=-1)


class CoordinatewiseLSTM(nn.Module):
    """The coordinatewise LSTM optimiser of Andrychowicz et al. 2016: gradient in, update out.

    Every coordinate of the optimisee is a row of one batch: the LSTM's weights are shared by all
    coordinates and each coordinate keeps its own state, so the optimiser works for any number of
    parameters and is equivariant to permuting them. ``forward(grad [n], state)`` returns the
    update ``[n]`` (``output_scale`` times a linear read-out of the top layer) and the new state.

    Args:
        hidden_size: units per layer (the paper: 20). num_layers: stacked LSTM layers (2).
        preprocess: feed :func:`preprocess_gradients` (2 features) instead of the raw gradient (1).
        p: the preprocessing's threshold ``exp(-p)``. output_scale: the update's scale (0.1).
    """

    def __init__(
        self,
        hidden_size: int = 20,
        num_layers: int = 2,
        preprocess: bool = True,
        p: float = 10.0,
        output_scale: float = 0.1,
    ) -> None:
        super().__init__()
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.preprocess = check_bool("preprocess", preprocess)
        self.p = check_positive("p", p)
        self.output_scale = check_positive("output_scale", output_scale)
        inputs = 2 if preprocess else 1
        self.cells = nn.ModuleList(
            [nn.LSTMCell(inputs if i == 0 else hidden_size, hidden_size) for i in range(num_layers)]
        )
        self.head = nn.Linear(hidden_size, 1)

    def initial_state(
        self, n: int, *, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> LSTMState:
        """Zero state for ``n`` coordinates: ``num_layers`` pairs ``(h, c)`` of ``[n, hidden_size]``."""
        check_positive_int("n", n)
        dtype = dtype or self.head.weight.dtype
        device = device or self.head.weight.device
        zeros = lambda: torch.zeros(n, self.hidden_size, dtype=dtype, device=device)  # noqa: E731
        return [(zeros(), zeros()) for _ in range(self.num_layers)]

    def forward(self, grad: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """``grad [n]`` (one row per coordinate) -> ``(update [n], new state)``."""
        if not isinstance(grad, Tensor) or grad.dim() != 1:
            got = tuple(grad.shape) if isinstance(grad, Tensor) else type(grad).__name__
            raise ValueError(f"grad must be a 1-D tensor [n] of coordinates, got {got}")
        if state is None:
            state = self.initial_state(grad.shape[0], dtype=grad.dtype, device=grad.device)
        expected = (grad.shape[0], self.hidden_size)
        if len(state) != self.num_layers or any(h.shape != expected or c.shape != expected for h, c in state):
            shapes = [(tuple(h.shape), tuple(c.shape)) for h, c in state]
            raise ValueError(
                f"state must hold {self.num_layers} pairs (h, c) of shape {expected} for grad of "
                f"{grad.shape[0]} coordinates, got {shapes}"
            )
        x = preprocess_gradients(grad, self.p) if self.preprocess else grad[:, None]
        new_state = []
        for cell, (h, c) in zip(self.cells, state):
            h, c = cell(x, (h, c))
            new_state.append((h, c))
            x = h
        return self.output_scale * self.head(x).squeeze(-1), new_state

    def extra_repr(self) -> str:
        return f"preprocess={self.preprocess}, p={self.p}, output_scale={self.output_scale}"


# --- problems: what an optimiser optimises ------------------------------------------------------


@dataclass
class Problem:
    """Start parameters ``name -> tensor`` and ``loss(params, t) -> [batch]`` (or a scalar).

    ``t`` is the step (0, 1, ...), so a loss can draw minibatch ``t``. A problem may hold a batch
    of independent functions (:func:`quadratic_problem`): an optimiser steps on the gradient of the
    sum, so each function's coordinates see their own function's gradient.
    """

    params: dict[str, Tensor]
    loss: Callable[[Mapping[str, Tensor], int], Tensor]


def quadratic_problem(
    num_functions: int,
    dim: int = 10,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    init_std: float = 0.01,
) -> Problem:
    """``num_functions`` random quadratics ``f(theta) = ||W theta - y||^2`` (Andrychowicz et al. 3.1):
    ``W [dim, dim]`` and ``y [dim]`` standard normal, the start ``theta [num_functions, dim]`` normal
    with standard deviation ``init_std``. The loss returns ``[num_functions]``."""
    check_positive_int("num_functions", num_functions)
    check_positive_int("dim", dim)
    w = torch.randn(num_functions, dim, dim, generator=generator, dtype=dtype)
    y = torch.randn(num_functions, dim, generator=generator, dtype=dtype)
    theta = check_positive("init_std", init_std) * torch.randn(num_functions, dim, generator=generator, dtype=dtype)
    return Problem({"theta": theta}, lambda params, t: quadratic_loss(w, y, params["theta"]))


def quadratic_loss(w: Tensor, y: Tensor, theta: Tensor) -> Tensor:
    """``[batch]`` values ``||W_b theta_b - y_b||^2`` for ``w [batch, m, d]``, ``y [batch, m]``,
    ``theta [batch, d]``; a ValueError names the argument whose shape does not fit."""
    if w.dim() != 3:
        raise ValueError(f"w must be [batch, m, d], got {tuple(w.shape)}")
    if y.shape != w.shape[:2]:
        raise ValueError(f"y must be [batch, m] = {tuple(w.shape[:2])} to match w, got {tuple(y.shape)}")
    if theta.shape != (w.shape[0], w.shape[2]):
        raise ValueError(f"theta must be [batch, d] = {(w.shape[0], w.shape[2])} to match w, got {tuple(theta.shape)}")
    return (torch.einsum("bmd,bd->bm", w, theta) - y).pow(2).sum(-1)


def model_problem(
    model: nn.Module,
    batches: Callable[[int], tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
) -> Problem:
    """Training ``model`` as a problem: start at its current weights; the loss at step ``t`` is
    ``loss_fn(model(x_t), y_t)`` with ``(x_t, y_t) = batches(t)``, run through ``functional_call``."""
    check_module("model", model)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    if not params:
        raise ValueError(f"model has no parameters to optimise: {type(model).__name__}")

    def loss(p: Mapping[str, Tensor], t: int) -> Tensor:
        x, y = batches(t)
        return loss_fn(functional_call(model, dict(p), (x,)), y)

    return Problem(params, loss)


# --- unrolled optimisation ----------------------------------------------------------------------


@dataclass
class Unrolled:
    """What :func:`unroll` returns: ``losses [steps, batch]`` (the loss after each update, with the
    meta-gradient's graph if asked), the final ``params`` and optimiser ``state``."""

    losses: Tensor
    params: dict[str, Tensor]
    state: LSTMState


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unroll(
    optimizer: CoordinatewiseLSTM,
    problem: Problem,
    steps: int,
    *,
    params: Mapping[str, Tensor] | None = None,
    state: LSTMState | None = None,
    start: int = 0,
    meta_grad: bool = True,
    second_order: bool = False,
) -> Unrolled:
    """Run ``optimizer`` on ``problem`` for ``steps`` steps from ``params`` (default: the problem's
    start) and ``state``, the first step being step ``start``: ``theta_{t+1} = theta_t + g_t``.

    ``meta_grad=True`` keeps the graph from the optimiser's weights to the losses. As in the paper,
    the optimisee's gradients enter as constants (no second derivatives) unless ``second_order``,
    which makes the meta-gradient exact (what the finite-difference test checks).
    """
    check_module("optimizer", optimizer)
    check_positive_int("steps", steps)
    check_bool("meta_grad", meta_grad)
    check_bool("second_order", second_order)
    params = dict(problem.params if params is None else params)
    if not params:
        raise ValueError("params must hold at least one tensor to optimise")
    names = list(params)
    current = {n: p.detach().requires_grad_() for n, p in params.items()}
    if state is not None:
        state = [(h.detach(), c.detach()) for h, c in state] if not meta_grad else state
    with torch.enable_grad():  # the optimisee's gradient needs autograd even under no_grad()
        loss = torch.atleast_1d(problem.loss(current, start))
    losses = []
    for k in range(steps):
        with torch.enable_grad():
            grads = torch.autograd.grad(loss.sum(), [current[n] for n in names], allow_unused=True,
                                        create_graph=meta_grad and second_order, retain_graph=meta_grad)
        grads = [torch.zeros_like(current[n]) if g is None else g for n, g in zip(names, grads)]
        if not (meta_grad and second_order):
            grads = [g.detach() for g in grads]
        with torch.set_grad_enabled(meta_grad):
            update, state = optimizer(_flat(grads), state)
        offset, nxt = 0, {}
        with torch.enable_grad():
            for n in names:
                size = current[n].numel()
                nxt[n] = current[n] + update[offset:offset + size].view_as(current[n])
                offset += size
        if not meta_grad:
            nxt = {n: p.detach().requires_grad_() for n, p in nxt.items()}
            state = [(h.detach(), c.detach()) for h, c in state]
        current = nxt
        with torch.enable_grad():
            loss = torch.atleast_1d(problem.loss(current, start + k + 1))
        losses.append(loss if meta_grad else loss.detach())
    return Unrolled(torch.stack(losses), current, state)


def train_optimizer(
    optimizer: CoordinatewiseLSTM,
    sample_problem: Callable[[], Problem],
    *,
    problems: int,
    horizon: int = 100,
    truncation: int = 20,
    lr: float = 1e-3,
    grad_clip: float | None = None,
    second_order: bool = False,
    log_loss: bool = False,
) -> list[float]:
    """Meta-train ``optimizer`` by truncated backpropagation through time (Andrychowicz et al. 2016).

    For each of ``problems`` problems drawn by ``sample_problem()``, optimise it for ``horizon``
    steps in windows of ``truncation`` steps; after each window, Adam (``lr``) takes one step on
    the mean loss of the window's steps, and the window's end (parameters, state) starts the next
    one with its graph cut. Returns the mean loss of every problem's ``horizon`` steps.

    ``log_loss=True`` minimises the mean of ``log f(theta_t)`` instead (the paper: of
    ``f(theta_t)``), which weights a halving of the loss the same early and late in the run.
    """
    check_module("optimizer", optimizer)
    check_positive_int("problems", problems)
    check_positive_int("horizon", horizon)
    check_positive_int("truncation", truncation)
    check_bool("log_loss", log_loss)
    if truncation > horizon:
        raise ValueError(f"truncation must be at most horizon={horizon}, got {truncation}")
    meta_opt = torch.optim.Adam(optimizer.parameters(), lr=check_positive("lr", lr))
    if grad_clip is not None:
        check_positive("grad_clip", grad_clip)
    history = []
    for _ in range(problems):
        problem = sample_problem()
        params, state, total, start = problem.params, None, 0.0, 0
        while start < horizon:
            window = min(truncation, horizon - start)
            run = unroll(optimizer, problem, window, params=params, state=state, start=start,
                         second_order=second_order)
            meta_loss = run.losses.clamp_min(1e-12).log().mean() if log_loss else run.losses.mean()
            meta_opt.zero_grad()
            meta_loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(optimizer.parameters(), grad_clip)
            meta_opt.step()
            total += float(run.losses.detach().sum(0).mean())
            params = {n: p.detach() for n, p in run.params.items()}
            state = [(h.detach(), c.detach()) for h, c in run.state]
            start += window
        history.append(total / horizon)
    return history


def optimise_with(
    make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer], problem: Problem, steps: int
) -> Tensor:
    """Losses ``[steps + 1, batch]`` (the start, then after each step) of ``problem`` under a
    ``torch.optim`` optimiser built by ``make_optimizer(parameters)``, e.g.
    ``lambda ps: torch.optim.Adam(ps, lr=0.1)``. Each batch member sees its own gradient."""
    check_positive_int("steps", steps)
    params = {n: p.detach().clone().requires_grad_() for n, p in problem.params.items()}
    opt = make_optimizer(list(params.values()))
    losses = []
    for t in range(steps + 1):
        loss = torch.atleast_1d(problem.loss(params, t))
        losses.append(loss.detach())
        if t == steps:
            break
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    return torch.stack(losses)


# --- Ravi & Larochelle 2017: the learner's weights as the LSTM's cell state ------------------


class MetaLearnerLSTM(GradientLearner):
    """The meta-learner LSTM of Ravi & Larochelle 2017: ``c_t = f_t * c_{t-1} - i_t * grad_t``.

    The cell state ``c`` is the learner's weights, starting at the meta-learned initialisation
    (``model``'s parameters). For every coordinate, the input gate ``i_t`` (a step size) and the
    forget gate ``f_t`` (one minus a weight decay) are sigmoids of a linear map of the preprocessed
    gradient and loss (:func:`preprocess_gradients`), the weight itself and the gate's previous
    value; the maps' 6 + 1 weights each are shared by all coordinates. Biases start at
    ``logit(inner_lr_init)`` for ``i`` and ``forget_bias`` for ``f`` (``f`` near 1). Simplified from
    the paper: no first LSTM layer feeding the gates. As in the paper, the gradients and losses
    the gates read are constants of the meta-gradient (``first_order=True``).

    ``fixed_gates=(i, f)`` replaces the learned gates by constants: ``(alpha, 1.0)`` is plain
    SGD with step size ``alpha``. Other arguments as in :class:`~mlhelpers.learners.MAML`;
    ``adapt`` returns fast weights ``name -> [tasks, *shape]``.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_steps: int = 5,
        inner_lr_init: float = 0.1,
        forget_bias: float = 5.0,
        first_order: bool = True,
        eval_inner_steps: int | None = None,
        fixed_gates: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(model, inner_steps=inner_steps, first_order=first_order,
                         eval_inner_steps=eval_inner_steps, strategy="loop")
        lr = check_positive("inner_lr_init", inner_lr_init)
        if lr >= 1:
            raise ValueError(f"inner_lr_init must be below 1 (it is a sigmoid's value), got {lr}")
        if not self.adapt_names():
            raise ValueError(f"model has no trainable parameters to adapt: {type(model).__name__}")
        if fixed_gates is not None:
            if not (isinstance(fixed_gates, tuple) and len(fixed_gates) == 2):
                raise TypeError(f"fixed_gates must be a pair (input, forget) of numbers, got {fixed_gates!r}")
            check_positive("fixed_gates[0]", fixed_gates[0])
            check_positive("fixed_gates[1]", fixed_gates[1])
        self.fixed_gates = fixed_gates
        self.input_gate = nn.Linear(6, 1)
        self.forget_gate = nn.Linear(6, 1)
        with torch.no_grad():
            for gate, bias in ((self.input_gate, math.log(lr / (1 - lr))), (self.forget_gate, float(forget_bias))):
                gate.weight.uniform_(-0.01, 0.01)
                gate.bias.fill_(bias)

    def gates(
        self, grad: Tensor, loss: Tensor, weight: Tensor, prev_i: Tensor, prev_f: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Input and forget gates of one tensor of weights ``[*shape]`` from its gradient, the
        scalar loss, the weights and the previous gates (all ``[*shape]`` but ``loss``)."""
        if self.fixed_gates is not None:
            i, f = self.fixed_gates
            return torch.full_like(weight, i), torch.full_like(weight, f)
        features = torch.cat([
            preprocess_gradients(grad), preprocess_gradients(loss).expand(*grad.shape, 2), weight[..., None],
        ], dim=-1)
        i = torch.sigmoid(self.input_gate(torch.cat([features, prev_i[..., None]], -1)).squeeze(-1))
        f = torch.sigmoid(self.forget_gate(torch.cat([features, prev_f[..., None]], -1)).squeeze(-1))
        return i, f

    def inner_loop(
        self, support_x: Tensor, support_y: Tensor, *, steps: int, create_graph: bool, track: bool
    ) -> Params:
        """Run the cell update ``steps`` times on each task's support set (see the class docstring)."""
        check_steps("steps", steps)
        params = dict(self.model.named_parameters())
        theta = {n: params[n] if track else params[n].detach() for n in self.adapt_names()}
        fast_per_task = []
        with torch.enable_grad():
            for sx, sy in zip(support_x, support_y):
                fast = {n: p if p.requires_grad else p.detach().requires_grad_() for n, p in theta.items()}
                prev_i = {n: torch.zeros_like(p) for n, p in fast.items()}
                prev_f = {n: torch.ones_like(p) for n, p in fast.items()}
                for _ in range(steps):
                    loss = task_loss(self.forward_adapted(fast, sx)[None], sy[None])
                    grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
                    grads = dict(zip(fast, grads if create_graph else [g.detach() for g in grads]))
                    loss_in = loss if create_graph else loss.detach()
                    nxt = {}
                    for n, c in fast.items():
                        w_in = c if create_graph else c.detach()
                        i, f = self.gates(grads[n], loss_in, w_in, prev_i[n], prev_f[n])
                        nxt[n] = f * c - i * grads[n]
                        prev_i[n], prev_f[n] = i, f
                    fast = nxt
                fast_per_task.append(fast)
        fast = {n: torch.stack([f[n] for f in fast_per_task]) for n in theta}
        if not track:
            fast = {n: p.detach() for n, p in fast.items()}
        return fast

    def extra_repr(self) -> str:
        gates = "" if self.fixed_gates is None else f", fixed_gates={self.fixed_gates}"
        return super().extra_repr() + gates
