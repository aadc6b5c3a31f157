"""Reproducibility: one call seeds Python, NumPy and PyTorch.

Chapter 1 introduces it; every chapter seeds its experiments with it.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed ``random``, NumPy and PyTorch (all devices) and return a CPU generator seeded alike.

    On the CPU the same seed then gives the same numbers run after run. GPU kernels may still be
    non-deterministic unless ``torch.use_deterministic_algorithms(True)`` is also set.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int >= 0 and < 2**64 (what torch accepts), got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return make_generator(seed)


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU ``torch.Generator``: seeded when ``seed`` is given, else from fresh entropy."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")
    if seed is not None and not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int >= 0 and < 2**64 (what torch accepts) or None, got {seed}")
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
