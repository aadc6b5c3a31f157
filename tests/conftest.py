"""Shared fixtures and builders: small synthetic datasets, module state, thread count, RNG, network."""

from __future__ import annotations

import random
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlhelpers.data.labelled import LabelledDataset


def make_dataset(
    num_classes: int = 12, per_class: int = 10, size: int = 6, groups: int = 3
) -> LabelledDataset:
    """``num_classes`` classes whose images encode (class, item) so tests can identify them."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = torch.zeros(num_classes * per_class, 1, size, size)
    images[:, 0, 0, 0] = labels.float()
    images[:, 0, 0, 1] = torch.arange(per_class).repeat(num_classes).float()
    images[:, 0, 1, 0] = 1.0  # an asymmetric mark, so rotations are visible
    third = num_classes // 3
    return LabelledDataset(
        images=images,
        labels=labels,
        class_names=[f"class{c}" for c in range(num_classes)],
        class_groups=torch.arange(num_classes) % groups,
        group_names=[f"group{g}" for g in range(groups)],
        splits={
            "train": torch.arange(0, num_classes - 2 * third),
            "val": torch.arange(num_classes - 2 * third, num_classes - third),
            "test": torch.arange(num_classes - third, num_classes),
        },
    )


def synthetic_dataset(num_classes: int = 20, per_class: int = 20, size: int = 8, noise: float = 1.5) -> LabelledDataset:
    """Classes = a coarse (2x2 blocks) random pattern + strong per-pixel noise; split by class.

    An untrained embedding is swamped by the noise; a trained one learns to average it away, which
    transfers to the held-out test classes (the last 8).
    """
    g = torch.Generator().manual_seed(0)
    patterns = F.interpolate(torch.randn(num_classes, 1, 2, 2, generator=g), size=(size, size))
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = patterns[labels] + noise * torch.randn(len(labels), 1, size, size, generator=g)
    return LabelledDataset(
        images, labels, [f"c{c}" for c in range(num_classes)],
        splits={"train": torch.arange(num_classes - 8), "test": torch.arange(num_classes - 8, num_classes)},
    )


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module.state_dict()``, to compare with exactly later."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """``a`` and ``b`` hold exactly the same parameters and buffers."""
    sa, sb = clone_state(a), clone_state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture
def dataset() -> LabelledDataset:
    return make_dataset()


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and then do not fight other work for the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def global_rng_restored():
    """Every test leaves Python's, NumPy's and PyTorch's global generators as it found them.

    Tests may call ``torch.manual_seed``/``seed_everything`` in this process; without this, the
    numbers a later test draws from the global generators would depend on which tests ran first.
    """
    python, numpy, torch_cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(torch_cpu)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve a host or open a connection fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
