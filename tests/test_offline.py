"""The default paths never touch the network: every loader works with sockets blocked."""

from __future__ import annotations

import socket

import pytest
import torch

from mlhelpers.data.omniglot import load_omniglot
from mlhelpers.data.regression import LinearTasks, SinusoidTasks
from mlhelpers.episodes import EpisodicSampler


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve a host or open a connection fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_guard_blocks_connections(no_network):
    with pytest.raises(AssertionError, match="network access attempted"):
        socket.create_connection(("example.org", 80))


def test_shipped_data_and_task_families_load_offline(no_network):
    omniglot = load_omniglot()
    task = EpisodicSampler(omniglot, 5, 1, 1, split="test", seed=0).sample(2)
    assert task.support_x.shape == (2, 5, 1, 28, 28)
    assert torch.isfinite(SinusoidTasks(5, 5, seed=0).sample(2).query_y).all()
    assert LinearTasks(3, 5, 5, seed=0).sample(2).support_x.shape == (2, 5, 3)
