"""Meta-training over several processes (``torch.distributed``): Chapter 1's loop, scaled out (appendix "Scaling out").

:func:`~mlhelpers.training.meta_train` calls :func:`setup` first: under ``torchrun`` (``WORLD_SIZE`` > 1
in the environment) it joins the process group (backend ``gloo`` on the CPU, ``nccl`` on CUDA, chosen
by the learner's device); in a plain process it does nothing and every helper here answers as for a
world of one process. Every process ("rank") draws the *same* meta-batch from the same seeded sampler
and keeps its slice (:func:`shard`), so ``N`` ranks with ``1/N`` of the batch each compute the
meta-gradient of one process with the whole batch; :func:`average_gradients` averages the ranks'
meta-gradients and losses in one flat all-reduce per dtype. The process group has a timeout
(``MLHELPERS_DIST_TIMEOUT`` seconds, default 600): a rank that waits in a collective for a peer that
died or hangs raises instead of waiting forever::

    torchrun --nproc_per_node=4 train.py        # one machine, four GPUs (or four CPU processes)

The same calls run on both backends; nothing here is specific to one of them.
"""

from __future__ import annotations

import atexit
import math
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from mlhelpers.tasks import Task
from mlhelpers.validation import check_positive_int, check_steps

TIMEOUT_ENV_VAR = "MLHELPERS_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
"""Seconds a collective waits for its peers before raising (:data:`TIMEOUT_ENV_VAR` overrides)."""

T = TypeVar("T")


class RankFailedError(RuntimeError):
    """Raised on every other rank when rank 0 fails in a step it does alone (checkpoint checks, lock,
    resume); the message carries rank 0's error."""


def _environment_int(name: str, default: int, minimum: int) -> int:
    """The integer environment variable ``name`` (``default`` when unset); a ValueError names it
    when it is not an integer or is below ``minimum``."""
    value = os.environ.get(name, str(default))
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} in the environment is not an integer") from None
    if number < minimum:
        raise ValueError(f"{name}={number} in the environment must be >= {minimum}")
    return number


def requested_world_size() -> int:
    """``WORLD_SIZE`` from the environment (set by ``torchrun``), 1 when unset."""
    return _environment_int("WORLD_SIZE", 1, 1)


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank, 0 in a plain process."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes, 1 in a plain process."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that validates, prints and writes checkpoints."""
    return rank() == 0


def local_rank() -> int:
    """``LOCAL_RANK`` (this process's index on its machine, set by ``torchrun``), 0 when unset."""
    return _environment_int("LOCAL_RANK", 0, 0)


def timeout() -> timedelta:
    """The process group's timeout: ``MLHELPERS_DIST_TIMEOUT`` seconds, default 600."""
    value = os.environ.get(TIMEOUT_ENV_VAR, "")
    try:
        seconds = float(value) if value.strip() else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV_VAR}={value!r} is not a number of seconds") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{TIMEOUT_ENV_VAR}={value!r} must be a positive number of seconds (a finite one)")
    return timedelta(seconds=seconds)


def backend_for(device: torch.device | str) -> str:
    """``"nccl"`` for a CUDA device, ``"gloo"`` for everything else."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def setup(device: torch.device | str = "cpu") -> bool:
    """Join the process group described by the environment if ``WORLD_SIZE`` > 1 (and it is not
    joined yet); return whether this process is one of several.

    ``device`` is where the learner's parameters live: it picks the backend (:func:`backend_for`);
    a CUDA device must be ``cuda:LOCAL_RANK`` (``mlhelpers.default_device()`` gives it), else a
    ValueError says so, since two ranks on one GPU would compete for it. The group is destroyed
    when the process exits.
    """
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        _check_device(device)
        return is_distributed()
    if requested_world_size() == 1:
        return False
    if not dist.is_available():  # pragma: no cover
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    _check_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), timeout=timeout())
    atexit.register(_destroy)
    return is_distributed()


def _check_device(device: torch.device) -> None:
    if device.type == "cuda" and requested_world_size() > 1:
        expected = torch.device("cuda", local_rank())
        if device.index is None or device.index != expected.index:
            raise ValueError(
                f"the learner is on {device} but this rank (LOCAL_RANK={local_rank()}) owns {expected}: "
                "put it on mlhelpers.default_device(), which is cuda:LOCAL_RANK under torchrun"
            )


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: Task, index: int | None = None, count: int | None = None) -> Task:
    """Slice ``index`` of ``count`` (default: this rank of the world) of a meta-batch of ``count * m``
    tasks: tasks ``index*m .. index*m + m - 1``.

    A ValueError if the batch does not split evenly (the ranks' mean losses would then weigh tasks
    unequally)."""
    count = world_size() if count is None else check_positive_int("count", count)
    index = rank() if index is None else check_steps("index", index)
    if index >= count:
        raise ValueError(f"index must be a slice 0..{count - 1} of count={count}, got {index}")
    if len(batch) % count:
        raise ValueError(f"a meta-batch of {len(batch)} tasks does not split evenly over {count} processes; "
                         "choose meta_batch_size as a multiple of the number of processes")
    per = len(batch) // count
    return batch if count == 1 else batch[index * per:(index + 1) * per]


def average_gradients(params: list[Tensor], loss: Tensor) -> float:
    """Replace every ``param.grad`` by its mean over the ranks and return the mean of ``loss``.

    One all-reduce per dtype of the gradients (usually one), flattened into a single buffer that
    also carries the loss and a flag per parameter: a parameter no rank gave a gradient keeps
    ``grad = None`` (as in one process, so the optimizer skips it), one that some ranks did gets
    the mean with zeros for the others. In a plain process it returns ``loss.item()`` and changes
    nothing."""
    if not is_distributed():
        return loss.item()
    world = world_size()
    groups: dict[torch.dtype, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(p.dtype, []).append(i)
    value = None
    for n, (dtype, indices) in enumerate(groups.items()):
        parts = [params[i].grad.detach().reshape(-1) if params[i].grad is not None
                 else torch.zeros(params[i].numel(), dtype=dtype, device=params[i].device) for i in indices]
        flags = torch.tensor([params[i].grad is not None for i in indices], dtype=dtype, device=params[0].device)
        extra = [loss.detach().reshape(1).to(dtype)] if n == 0 else []
        flat = torch.cat(parts + [flags] + extra)
        _collective("the all-reduce of the meta-gradient", dist.all_reduce, flat)
        flat /= world
        if n == 0:
            value = float(flat[-1])
        offset, total = 0, sum(part.numel() for part in parts)
        for i, flag in zip(indices, flat[total:total + len(indices)].tolist()):
            p = params[i]
            if flag == 0:
                p.grad = None
            else:
                mean = flat[offset:offset + p.numel()].view_as(p)
                if p.grad is None:
                    p.grad = mean.clone()
                else:
                    p.grad.copy_(mean)
            offset += p.numel()
    return value


def _collective(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the collective ``fn``; if it fails (a peer died, or did not arrive within the timeout),
    raise a RuntimeError that says which rank waited for what, and why that happens."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as error:
        raise RuntimeError(
            f"rank {rank()} of {world_size()}: {what} failed ({str(error).strip()[:400]}). Another rank "
            f"stopped with an error (see its message above), was killed, or did not arrive within "
            f"{TIMEOUT_ENV_VAR}={timeout().total_seconds():g} s") from error


def broadcast(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src``, on every rank (pickled; tensors come back on the CPU or this rank's GPU)."""
    if not is_distributed():
        return obj
    box = [_to_cpu(obj) if rank() == src else None]
    _collective(f"a broadcast from rank {src}", dist.broadcast_object_list, box, src=src)
    return box[0]


def _to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it copied to the CPU (pickled CUDA tensors would land on one GPU)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, _to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a plain process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    _collective("an all-gather", dist.all_gather_object, out, _to_cpu(obj))
    return out


def on_main(fn: Callable[[], T] | None) -> T | None:
    """Run ``fn`` on rank 0 only and give its result to every rank.

    If it raises on rank 0, rank 0 re-raises the error and every other rank raises a
    :class:`RankFailedError` carrying its message, so all ranks stop together instead of waiting
    in the next collective. Other ranks may pass ``fn=None``."""
    if not is_distributed():
        return fn() if fn is not None else None
    if rank() == 0:
        try:
            result = fn() if fn is not None else None
        except BaseException as error:
            broadcast(("error", f"{type(error).__name__}: {error}"))
            raise
        return broadcast(("ok", result))[1]
    status, result = broadcast(None)
    if status == "error":
        raise RankFailedError(f"rank 0 failed: {result}")
    return result
