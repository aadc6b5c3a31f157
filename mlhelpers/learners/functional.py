"""Parameter plumbing shared by the gradient-based learners: one inner loop, two ways to batch tasks.

Chapter 2 writes meta-learning as a bilevel problem; Chapter 3 builds MAML from scratch on
``torch.func``. The pieces here are what MAML, Meta-SGD, ANIL and Reptile have in common:

- :func:`sgd_steps`: the inner loop, ``phi <- phi - lr * grad L_support(phi)`` for ``steps`` steps,
  with fixed or learned (Meta-SGD) learning rates, keeping the graph of the inner gradients for
  second-order meta-gradients (``create_graph=True``) or treating them as constants (first order).
- :func:`map_tasks`: run a per-task function over a batch of tasks, either with a Python loop
  (native modules, ``torch.autograd.grad``) or with ``torch.func.vmap`` (``torch.func.grad``).
- :func:`plain_norms`: a context in which batch, instance and layer norm run as plain tensor
  operations, because PyTorch's fused kernels give wrong second-order gradients under ``vmap``.
- :func:`check_no_running_stats`: refuse norm layers whose running statistics would leak
  between tasks.

Fast weights are plain dicts ``name -> tensor`` (a subset of ``model.named_parameters()``),
used with ``torch.func.functional_call``; batched over tasks they get a leading ``[tasks]``
dimension.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Callable, Iterator, Literal, Mapping

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.instancenorm import _InstanceNorm

from mlhelpers.validation import check_steps

Strategy = Literal["auto", "loop", "threads", "vmap"]
STRATEGIES: tuple[str, ...] = ("auto", "loop", "threads", "vmap")

Params = dict[str, Tensor]


# --- argument checks --------------------------------------------------------------------------


def check_strategy(strategy: Any) -> str:
    """Return ``strategy`` if it is one of :data:`STRATEGIES`, else a ValueError listing them."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}")
    return strategy


def resolve_strategy(strategy: str, device: torch.device) -> str:
    """``"auto"`` becomes ``"loop"`` on the CPU and ``"vmap"`` elsewhere (CUDA, MPS)."""
    if strategy == "auto":
        return "loop" if device.type == "cpu" else "vmap"
    return strategy


def check_no_running_stats(model: nn.Module) -> None:
    """Raise a ValueError if a norm layer of ``model`` keeps running statistics.

    Running statistics (``track_running_stats=True``) are buffers that every forward pass in
    training mode updates *in place*, even inside ``functional_call``: the support set of one task
    would shift the statistics that the next task (and evaluation) normalise with, so information
    leaks between tasks and the inner loop is no longer a function of the parameters alone.
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


def _affine(module: nn.Module, y: Tensor, trailing: int) -> Tensor:
    """``y * weight + bias`` with the parameters broadcast over ``trailing`` dims after channels."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    shape = (-1,) + (1,) * trailing
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _normalise(x: Tensor, dims: list[int], eps: float) -> Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).pow(2).mean(dim=dims, keepdim=True)  # biased, as the fused kernels
    return (x - mean) * torch.rsqrt(var + eps)


def _plain_batch_norm(self: _BatchNorm, x: Tensor) -> Tensor:
    # x [N, C, *spatial]: statistics over all examples and positions, per channel.
    y = _normalise(x, [0, *range(2, x.dim())], self.eps)
    return _affine(self, y, x.dim() - 2)


def _plain_instance_norm(self: _InstanceNorm, x: Tensor) -> Tensor:
    # x [(N,) C, *spatial]: statistics over positions, per example and channel.
    spatial = self._get_no_batch_dim() - 1
    y = _normalise(x, list(range(x.dim() - spatial, x.dim())), self.eps)
    return _affine(self, y, spatial)


def _plain_layer_norm(self: nn.LayerNorm, x: Tensor) -> Tensor:
    k = len(self.normalized_shape)
    y = _normalise(x, list(range(x.dim() - k, x.dim())), self.eps)
    if self.weight is not None:
        y = y * self.weight
    if self.bias is not None:
        y = y + self.bias
    return y


def _plain_forward(module: nn.Module) -> Callable | None:
    if isinstance(module, _BatchNorm) and not module.track_running_stats:
        return _plain_batch_norm
    if isinstance(module, _InstanceNorm) and not module.track_running_stats:
        return _plain_instance_norm
    if type(module) is nn.LayerNorm:
        return _plain_layer_norm
    return None


@contextlib.contextmanager
def plain_norms(model: nn.Module) -> Iterator[int]:
    """Within the context, batch/instance/layer norm layers of ``model`` use plain tensor ops.

    Yields the number of layers swapped. Measured with torch 2.14 (float64, one inner step):
    under ``vmap`` the second-order meta-gradient through the fused norm kernels is off by
    0.1-5% (layer, instance and batch norm; group norm is right), first-order gradients are
    right, and the same formulas written as means and products are exact. Only the layers'
    ``forward`` is replaced (on the instance, restored on exit); parameters stay where they are,
    so ``functional_call`` still substitutes fast weights.
    """
    patched: list[tuple[nn.Module, Any]] = []
    try:
        for module in model.modules():
            forward = _plain_forward(module)
            if forward is not None:
                patched.append((module, module.__dict__.get("forward")))
                module.forward = types.MethodType(forward, module)
        yield len(patched)
    finally:
        for module, previous in patched:
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def has_fused_norms(model: nn.Module) -> bool:
    """Whether ``model`` holds a layer that :func:`plain_norms` would swap."""
    return any(_plain_forward(m) is not None for m in model.modules())


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
