"""mlhelpers.memory: the retained-graph count sees what autograd keeps, once, and only while it is kept."""

from __future__ import annotations

import pytest
import torch

from mlhelpers.memory import RetainedGraphMemory


def test_counts_a_saved_activation_once_and_forgets_it_with_the_graph():
    w = torch.ones(1000, requires_grad=True)  # float32: 4,000 bytes
    with RetainedGraphMemory() as memory:
        y = (w * w).sum()  # mul saves w twice: one storage
    assert memory.saved_tensors == 2
    assert memory.alive_bytes() == 4000
    del y  # the graph, and what it saved, are gone... but w itself is still alive
    assert memory.alive_bytes() == 4000
    with RetainedGraphMemory() as memory:
        z = torch.sin(2 * w).sum()  # sin saves its input, a new 4,000-byte tensor
    assert memory.alive_bytes() == 4000
    del z  # freeing the graph frees the saved output
    assert memory.alive_bytes() == 0


def test_a_longer_chain_keeps_more_and_no_grad_keeps_nothing():
    x = torch.randn(256, requires_grad=True)

    def kept(steps: int) -> int:
        with RetainedGraphMemory() as memory:
            y = x
            for _ in range(steps):
                y = torch.tanh(y)
            alive = memory.alive_bytes()
        del y
        return alive

    assert kept(4) == 4 * kept(1) == 4 * 256 * 4
    with RetainedGraphMemory() as memory, torch.no_grad():
        torch.tanh(x)
    assert memory.saved_tensors == 0 and memory.alive_bytes() == 0


def test_only_the_block_is_measured_and_nesting_is_refused():
    x = torch.randn(10, requires_grad=True)
    memory = RetainedGraphMemory()
    with memory:
        with pytest.raises(RuntimeError, match="already running"):
            memory.__enter__()
    outside = torch.tanh(x)  # saved after the block: not seen
    assert memory.saved_tensors == 0 and outside.requires_grad
