"""Task families for regression: sinusoids (Finn et al. 2017) and random linear functions.

Both are :class:`~mlhelpers.samplers.base.TaskSampler` s, so they draw seeded batches of tasks::

    support_x [tasks, k_shot, in_dim]    support_y [tasks, k_shot, 1]
    query_x   [tasks, q_query, in_dim]   query_y   [tasks, q_query, 1]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mlhelpers.samplers.base import TaskSampler, split_support_query
from mlhelpers.tasks import Task
from mlhelpers.validation import check_number, check_positive_int


def _check_range(name: str, value: tuple[float, float]) -> tuple[float, float]:
    """``(low, high)`` as floats if both are finite numbers with low <= high, else an error naming ``name``."""
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
    ):
        raise TypeError(f"{name} must be a pair of numbers (low, high), got {value!r}")
    low, high = (float(v) for v in value)
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"{name} must be (low, high) with finite low <= high, got {value}")
    return low, high


def _uniform(shape: tuple[int, ...], bounds: tuple[float, float], generator: torch.Generator) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=generator)


class SinusoidTasks(TaskSampler):
    """Sine waves ``y = A sin(x - phi)``, exactly as in the regression experiment of MAML.

    Finn et al. (2017), section 5.1: amplitude ``A ~ U[0.1, 5.0]``, phase ``phi ~ U[0, pi]``,
    inputs ``x ~ U[-5, 5]``; each task gets ``k_shot`` support and ``q_query`` query points.
    ``info`` holds ``amplitude`` and ``phase`` ``[tasks]``. Derived in Chapter 1, used in Chapter 3.
    """

    def __init__(
        self,
        k_shot: int,
        q_query: int,
        *,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(seed, device)
        self.k_shot = check_positive_int("k_shot", k_shot)
        self.q_query = check_positive_int("q_query", q_query)
        self.amplitude = _check_range("amplitude", amplitude)
        self.phase = _check_range("phase", phase)
        self.x_range = _check_range("x_range", x_range)

    @staticmethod
    def function(x: Tensor, amplitude: Tensor, phase: Tensor) -> Tensor:
        """``A sin(x - phi)`` for ``x`` ``[tasks, n, 1]`` and ``amplitude``, ``phase`` ``[tasks]``."""
        return amplitude[:, None, None] * torch.sin(x - phase[:, None, None])

    @staticmethod
    def true_function(x: Tensor, task: Task) -> Tensor:
        """The tasks' own curves at ``x`` ``[tasks, n, 1]``; pass as ``true_fn`` to plotting helpers."""
        return SinusoidTasks.function(x, task.info["amplitude"], task.info["phase"])

    def _sample(self, num_tasks: int) -> Task:
        g = self.generator
        amplitude = _uniform((num_tasks,), self.amplitude, g)
        phase = _uniform((num_tasks,), self.phase, g)
        x = _uniform((num_tasks, self.k_shot + self.q_query, 1), self.x_range, g)
        y = self.function(x, amplitude, phase)
        return split_support_query(x, y, self.k_shot, {"amplitude": amplitude, "phase": phase})


class LinearTasks(TaskSampler):
    """Random linear functions ``y = w . x + noise`` with ``x, w ~ N(0, I_dim)`` (Garg et al. 2022).

    ``x_scale`` multiplies the inputs and ``noise_std`` adds Gaussian label noise, to probe
    in-context learners out of distribution (Chapter 5). ``info`` holds ``w`` ``[tasks, dim]``.
    """

    def __init__(
        self,
        dim: int,
        k_shot: int,
        q_query: int,
        *,
        noise_std: float = 0.0,
        x_scale: float = 1.0,
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(seed, device)
        self.dim = check_positive_int("dim", dim)
        self.k_shot = check_positive_int("k_shot", k_shot)
        self.q_query = check_positive_int("q_query", q_query)
        self.noise_std = check_number("noise_std", noise_std, minimum=0.0)
        self.x_scale = check_number("x_scale", x_scale)

    def _sample(self, num_tasks: int) -> Task:
        g = self.generator
        n = self.k_shot + self.q_query
        w = torch.randn(num_tasks, self.dim, generator=g)
        x = self.x_scale * torch.randn(num_tasks, n, self.dim, generator=g)
        y = torch.einsum("tnd,td->tn", x, w)[..., None]
        if self.noise_std > 0:
            y = y + self.noise_std * torch.randn(y.shape, generator=g)
        return split_support_query(x, y, self.k_shot, {"w": w})
