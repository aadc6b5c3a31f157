"""What the gradient-based learners share (Chapter 3): the inner loop :func:`sgd_steps`, batching
over tasks (:func:`map_tasks`), norms as plain tensor operations (:func:`with_plain_norms`), the
refusal of running statistics (:func:`check_no_running_stats`) and a module per thread for
``functional_call`` (:func:`module_for_this_thread`).

Fast weights are plain dicts ``name -> tensor`` (a subset of ``model.named_parameters()``) for
``torch.func.functional_call``; batched over tasks they get a leading ``[tasks]`` dimension.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.instancenorm import _InstanceNorm

from mlhelpers.validation import check_steps

STRATEGIES: tuple[str, ...] = ("auto", "loop", "threads", "vmap")

Params = dict[str, Tensor]
"""Fast weights: parameter name -> tensor (with a leading ``[tasks]`` dim when batched)."""

M = TypeVar("M", bound=nn.Module)


# --- argument checks --------------------------------------------------------------------------


def check_strategy(strategy: Any) -> str:
    """Return ``strategy`` if it is one of :data:`STRATEGIES`, else a ValueError listing them."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}")
    return strategy


def resolve_strategy(strategy: str, device: torch.device) -> str:
    """``"auto"`` becomes ``"loop"`` on the CPU and ``"vmap"`` elsewhere (CUDA, MPS).

    The gradient learners refine ``"auto"`` on a CPU with several intra-op threads by timing the
    loop against threads (:attr:`~mlhelpers.learners.maml.GradientLearner.measured_strategy`).
    """
    if strategy == "auto":
        return "loop" if device.type == "cpu" else "vmap"
    return strategy


def check_no_running_stats(model: nn.Module) -> None:
    """Raise a ValueError if a norm layer of ``model`` keeps running statistics: every forward pass
    updates them in place, so one task's support set would leak into the next task and into evaluation.
    """
    for name, module in model.named_modules():
        if isinstance(module, _NormBase) and module.track_running_stats:
            where = f"{name!r} ({type(module).__name__})" if name else type(module).__name__
            raise ValueError(
                f"model layer {where} has track_running_stats=True: its running mean and variance "
                "are updated in place by every forward pass, so statistics leak from one task's "
                "support set into the next task and into evaluation. Gradient-based meta-learners "
                "need per-task batch statistics instead, as in the original MAML: build the model "
                "with conv4(..., norm='task') (BatchNorm2d(track_running_stats=False)) or "
                "norm='none'"
            )


# --- norms as plain tensor operations ---------------------------------------------------------


def shallow_replica(module: M) -> M:
    """A copy of ``module``'s module objects that shares its parameters and buffers (same tensors)."""
    memo = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(module, memo)


def _normalise(x: Tensor, dims: list[int], eps: float) -> Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).pow(2).mean(dim=dims, keepdim=True)  # biased, as the fused kernels
    return (x - mean) * torch.rsqrt(var + eps)


class PlainNorm(nn.Module):
    """A batch, instance or layer norm written as means and products, holding the norm's parameters.

    ``kind`` is ``"batch"`` (statistics per channel, over examples and positions of
    ``[N, C, *spatial]``), ``"instance"`` (per example and channel, over the ``trailing``
    positions) or ``"layer"`` (over the ``trailing`` dims of ``normalized_shape``). ``weight``
    and ``bias`` are the original layer's parameter objects (or None) under the same names, so
    ``functional_call`` substitutes fast weights as it would in the original layer.
    """

    def __init__(self, norm: nn.Module, kind: str, trailing: int) -> None:
        super().__init__()
        self.kind, self.trailing, self.eps = kind, trailing, norm.eps
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "batch":
            y = _normalise(x, [0, *range(2, x.dim())], self.eps)
            shape = (-1,) + (1,) * (x.dim() - 2)  # the affine parameters are per channel
        else:
            y = _normalise(x, list(range(x.dim() - self.trailing, x.dim())), self.eps)
            shape = (-1,) + (1,) * self.trailing if self.kind == "instance" else None
        weight, bias = self.weight, self.bias
        if weight is not None:
            y = y * (weight if shape is None else weight.reshape(shape))
        if bias is not None:
            y = y + (bias if shape is None else bias.reshape(shape))
        return y


def _plain(module: nn.Module) -> PlainNorm | None:
    """The :class:`PlainNorm` standing in for ``module``, or None if it is not a fused norm to swap."""
    if isinstance(module, _BatchNorm) and not module.track_running_stats:
        return PlainNorm(module, "batch", 0)
    if isinstance(module, _InstanceNorm) and not module.track_running_stats:
        return PlainNorm(module, "instance", module._get_no_batch_dim() - 1)
    if type(module) is nn.LayerNorm:
        return PlainNorm(module, "layer", len(module.normalized_shape))
    return None


def with_plain_norms(module: M) -> M:
    """A :func:`shallow_replica` of ``module`` whose batch/instance/layer norms are :class:`PlainNorm`.

    The same function of the same parameters; ``module`` is left alone. Under ``vmap`` PyTorch's fused
    norm kernels give wrong second-order gradients (measured in ``bench/README.md``, Chapter 3); the
    same formulas as means and products are exact.
    """
    replica = shallow_replica(module)
    for parent in list(replica.modules()):
        for name, child in list(parent.named_children()):
            plain = _plain(child)
            if plain is not None:
                setattr(parent, name, plain)
    return replica


# --- one module per thread for functional_call ------------------------------------------------

_thread_state = threading.local()


def claim_for_this_thread(module: nn.Module) -> None:
    """Declare that only the calling thread uses ``module`` (and its submodules): a worker's replica."""
    owned = getattr(_thread_state, "owned", None)
    if owned is None:
        owned = _thread_state.owned = weakref.WeakSet()
    owned.update(module.modules())


def module_for_this_thread(module: M) -> M:
    """``module`` itself in the main thread (or a thread that claimed it), else this thread's own
    :func:`shallow_replica` of it: the same parameters and buffers, its own module objects.

    ``torch.func.functional_call`` swaps the module's parameters for the fast weights while it
    runs, so two threads calling it on one module would see each other's fast weights. The replica
    is cached per thread and rebuilt when ``module``'s parameters, buffers or train/eval modes change.
    """
    if threading.current_thread() is threading.main_thread():
        return module
    owned = getattr(_thread_state, "owned", None)
    if owned is not None and module in owned:
        return module
    replicas = getattr(_thread_state, "replicas", None)
    if replicas is None:
        replicas = _thread_state.replicas = weakref.WeakKeyDictionary()
    key = (tuple(map(id, (*module.parameters(), *module.buffers()))), tuple(m.training for m in module.modules()))
    cached = replicas.get(module)
    if cached is None or cached[0] != key:
        cached = replicas[module] = (key, shallow_replica(module))
    return cached[1]


# --- the inner loop ---------------------------------------------------------------------------


def gradients(
    loss_fn: Callable[[Params], Tensor], fast: Params, *, create_graph: bool, functional: bool
) -> Params:
    """``d loss_fn(fast) / d fast`` for each tensor of ``fast``.

    ``functional=True`` uses ``torch.func.grad`` (works under ``vmap``), otherwise
    ``torch.autograd.grad`` (every tensor of ``fast`` must require grad). With
    ``create_graph=False`` the gradients are detached: constants for the outer backward pass.
    """
    if functional:
        grads = torch.func.grad(loss_fn)(fast)
    else:
        names = list(fast)
        loss = loss_fn(fast)
        raw = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=create_graph, allow_unused=True)
        grads = {n: torch.zeros_like(fast[n]) if g is None else g for n, g in zip(names, raw)}
    if not create_graph:
        grads = {n: g.detach() for n, g in grads.items()}
    return grads


def sgd_steps(
    loss_fn: Callable[[Params], Tensor],
    fast: Params,
    lrs: Mapping[str, float | Tensor],
    steps: int,
    *,
    create_graph: bool,
    functional: bool,
) -> Params:
    """The inner loop of one task: ``steps`` steps of ``fast[n] -= lrs[n] * grad[n]``.

    ``lrs`` maps each name of ``fast`` to a float or a tensor of its shape (Meta-SGD's learned
    rates). The result stays differentiable with respect to the initial ``fast`` (and tensor
    learning rates): through the inner gradients too if ``create_graph`` (second-order MAML),
    otherwise only through the identity path (first-order MAML). Derived in Chapter 3.
    """
    check_steps("steps", steps)
    missing = sorted(set(fast) - set(lrs))
    if missing:
        raise ValueError(f"lrs must give a learning rate for every tensor of fast, got none for {missing}")
    if not functional:
        # autograd.grad needs inputs that require grad; frozen initial weights become leaves.
        fast = {n: p if p.requires_grad else p.detach().requires_grad_() for n, p in fast.items()}
    for _ in range(steps):
        grads = gradients(loss_fn, fast, create_graph=create_graph, functional=functional)
        fast = {n: p - lrs[n] * grads[n] for n, p in fast.items()}
    return fast


# --- batching over tasks ----------------------------------------------------------------------


def _index(tree: Any, i: int) -> Any:
    if isinstance(tree, Mapping):
        return {k: v[i] for k, v in tree.items()}
    return tree[i]


def _stack(items: list[Any]) -> Any:
    if isinstance(items[0], Mapping):
        return {k: torch.stack([item[k] for item in items]) for k in items[0]}
    return torch.stack(items)


def map_tasks(fn: Callable[..., Any], args: tuple[Any, ...], *, vectorise: bool) -> Any:
    """Apply the per-task ``fn`` to every task of ``args`` and stack the results along dim 0.

    Each argument is a tensor ``[tasks, ...]`` or a dict of them; ``fn`` sees one task (no task
    dim) and returns a tensor or a dict of tensors. ``vectorise=True`` uses ``torch.func.vmap``
    (dropout draws differ between tasks), otherwise a Python loop.
    """
    if vectorise:
        return torch.func.vmap(fn, randomness="different")(*args)
    tasks = next(iter(args[0].values())).shape[0] if isinstance(args[0], Mapping) else args[0].shape[0]
    return _stack([fn(*(_index(a, i) for a in args)) for i in range(tasks)])
