"""How much memory a computation graph keeps for its backward pass, counted exactly. Chapter 2.

Second-order MAML pays for its meta-gradient in memory: every inner step's graph is kept until
the meta-backward. :class:`RetainedGraphMemory` measures that without sampling the process: inside
its ``with`` block a :func:`torch.autograd.graph.saved_tensors_hooks` context sees every tensor
autograd saves for backward, and :meth:`RetainedGraphMemory.alive_bytes` adds up the distinct
storages of those still alive (a tensor saved twice, or two views of one storage, count once).

Example::

    with RetainedGraphMemory() as memory:
        loss = model(x).pow(2).mean()
    print(memory.alive_bytes() / 1e6, "MB kept for loss.backward()")
"""

from __future__ import annotations

import weakref
from types import TracebackType

import torch
from torch import Tensor

__all__ = ["RetainedGraphMemory"]


class RetainedGraphMemory:
    """Bytes of the tensors autograd saved for backward inside the ``with`` block and still holds.

    Only tensors saved while the block runs are seen; the count is of distinct storages that are
    still alive when :meth:`alive_bytes` is called (free the graph, and they drop out).
    """

    def __init__(self) -> None:
        self._saved: list[tuple[weakref.ref[Tensor], int, int]] = []
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def _pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        self._saved.append((weakref.ref(tensor), storage.data_ptr(), storage.nbytes()))
        return tensor

    def __enter__(self) -> RetainedGraphMemory:
        if self._hooks is not None:
            raise RuntimeError("RetainedGraphMemory: this measurement is already running (no nested use)")
        self._saved = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(kind, error, trace)
        self._hooks = None

    @property
    def saved_tensors(self) -> int:
        """How many tensors autograd saved inside the block (alive or not, duplicates included)."""
        return len(self._saved)

    def alive_bytes(self) -> int:
        """Bytes of the distinct storages of saved tensors that are still alive."""
        return sum({pointer: size for ref, pointer, size in self._saved if ref() is not None}.values())
