"""Tasks that arrive as a stream whose distribution drifts, and a replay buffer of past tasks (Chapter 7).

:class:`DriftingSinusoidTasks` with ``rounds=R`` is a stream: each call of ``sample`` is one round, and
the task distribution moves a little every round, from position 0 to position 1 over ``R`` rounds. With
``rounds=None`` it is a fixed mixture of the positions in ``[start, end]``, to measure how a learner does
on one stretch of the stream (``stream.segment(0.0, 0.25)``: the distribution of its first quarter).
:class:`ReplaySampler` mixes each round's new tasks with tasks replayed from a buffer of past ones::

    stream = DriftingSinusoidTasks(k_shot=10, q_query=10, rounds=4000, seed=0)
    replay = ReplaySampler(stream, fresh=10, seed=1)     # sample(20): 10 new tasks + 10 from the buffer
    early = stream.segment(0.0, 0.25, q_query=100, seed=2)

Both resume exactly from their ``state_dict`` (the round, the buffer), so ``meta_train`` checkpoints them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mlhelpers.samplers.base import TaskSampler, split_support_query
from mlhelpers.samplers.regression import SinusoidTasks, _check_range, _uniform
from mlhelpers.samplers.wrappers import SamplerWrapper
from mlhelpers.tasks import Task
from mlhelpers.validation import check_positive_int, check_steps, describe


class DriftingSinusoidTasks(SinusoidTasks):
    """Sine waves ``A sin(x - phi)`` whose phase window drifts from ``phase_start`` to ``phase_end``.

    At position ``p`` in ``[0, 1]`` the phase is uniform on ``(1 - p) * phase_start + p * phase_end``
    (both ends of the window move together); amplitude and inputs are drawn as in its base class,
    :class:`~mlhelpers.samplers.regression.SinusoidTasks` (whose ``phase`` is here the hull of every
    window). By default the window moves from ``[0, pi/2]`` to ``[pi, 3 pi/2]``: the last tasks are the
    first ones upside down, and every position is equally hard.

    ``rounds=R`` (a stream): the ``r``-th call of :meth:`sample` (from 0) draws all its tasks at position
    ``start + (end - start) * min(r / (R - 1), 1)``; after ``R`` rounds the stream stays at ``end``.
    ``rounds=None`` (a fixed mixture): each task is at its own position, uniform on ``[start, end]``.
    ``info`` holds ``amplitude``, ``phase`` and ``position`` ``[tasks]``. Shapes as ``SinusoidTasks``:
    ``support_x`` ``[tasks, k_shot, 1]``, ``query_x`` ``[tasks, q_query, 1]``.
    """

    def __init__(
        self,
        k_shot: int,
        q_query: int,
        *,
        rounds: int | None,
        start: float = 0.0,
        end: float = 1.0,
        phase_start: tuple[float, float] = (0.0, math.pi / 2),
        phase_end: tuple[float, float] = (math.pi, 3 * math.pi / 2),
        amplitude: tuple[float, float] = (0.1, 5.0),
        x_range: tuple[float, float] = (-5.0, 5.0),
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        phase_start = _check_range("phase_start", phase_start)
        phase_end = _check_range("phase_end", phase_end)
        # `phase`: every phase the stream can draw (the window's hull over the drift).
        phase = (min(phase_start[0], phase_end[0]), max(phase_start[1], phase_end[1]))
        super().__init__(k_shot, q_query, amplitude=amplitude, phase=phase, x_range=x_range, seed=seed, device=device)
        self.phase_start, self.phase_end = phase_start, phase_end
        self.rounds = None if rounds is None else check_positive_int("rounds", rounds)
        self.start, self.end = _check_range("(start, end)", (start, end))
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"start and end must satisfy 0 <= start <= end <= 1, got start={start}, end={end}")
        self._round = 0

    @property
    def round(self) -> int:
        """How many rounds (calls of :meth:`sample`) the stream has served."""
        return self._round

    def position(self, round_: int | None = None) -> float:
        """The stream's position in ``[start, end]`` at ``round_`` (default: the next round to be drawn)."""
        if self.rounds is None:
            raise ValueError("position is defined for a stream (rounds=R); this sampler has rounds=None, "
                             "a fixed mixture")
        r = self._round if round_ is None else check_steps("round_", round_)
        fraction = 1.0 if self.rounds == 1 else min(r / (self.rounds - 1), 1.0)
        return self.start + (self.end - self.start) * fraction

    def phase_window(self, position: float | Tensor) -> tuple[Tensor, Tensor]:
        """The ``(low, high)`` phase bounds at ``position`` (a float or a ``[tasks]`` tensor)."""
        p = torch.as_tensor(position, dtype=torch.float32)
        outside = ~((p >= 0) & (p <= 1))  # NaN too
        if bool(outside.any()):
            raise ValueError(f"position must lie in [0, 1] (0: the start of the drift, 1: its end), got "
                             f"{p[outside].flatten()[0].item()!r}")
        low = (1 - p) * self.phase_start[0] + p * self.phase_end[0]
        high = (1 - p) * self.phase_start[1] + p * self.phase_end[1]
        return low, high

    def segment(self, start: float, end: float, *, q_query: int | None = None, seed: int | None = None
                ) -> DriftingSinusoidTasks:
        """The fixed mixture of this stream's positions in ``[start, end]`` (same phases, amplitudes, shots)."""
        return DriftingSinusoidTasks(
            self.k_shot, self.q_query if q_query is None else q_query, rounds=None, start=start, end=end,
            phase_start=self.phase_start, phase_end=self.phase_end, amplitude=self.amplitude,
            x_range=self.x_range, seed=seed, device=self.device)

    def _sample(self, num_tasks: int) -> Task:
        g = self.generator
        if self.rounds is None:
            position = _uniform((num_tasks,), (self.start, self.end), g)
        else:
            position = torch.full((num_tasks,), self.position())
            self._round += 1
        amplitude = _uniform((num_tasks,), self.amplitude, g)
        low, high = self.phase_window(position)
        phase = low + (high - low) * torch.rand(num_tasks, generator=g)
        x = _uniform((num_tasks, self.k_shot + self.q_query, 1), self.x_range, g)
        y = self.function(x, amplitude, phase)
        return split_support_query(x, y, self.k_shot, {"amplitude": amplitude, "phase": phase, "position": position})

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state(), "round": torch.tensor(self._round)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("round"), Tensor):
            raise ValueError(f"state must be a DriftingSinusoidTasks state_dict {{'generator': ..., 'round': ...}}, "
                             f"got {describe(state)}")
        if state["round"].numel() != 1 or int(state["round"]) < 0:
            raise ValueError(f"state['round'] must be the number of rounds served, an int >= 0, got {state['round']!r}")
        super().load_state_dict(state)
        self._round = int(state["round"])


class ReplaySampler(SamplerWrapper):
    """Each batch: ``fresh`` new tasks from the inner stream (one round), the rest replayed from a buffer.

    Every new task joins the buffer before the replayed ones are drawn (uniformly, with replacement), so
    ``sample(fresh)`` is the stream itself and ``sample(2 * fresh)`` doubles each meta-batch with past
    tasks. ``capacity=None`` keeps every task seen (the buffer of follow-the-meta-leader, Finn et al.
    2019); a number keeps a uniform sample of all tasks seen, of that size (reservoir sampling).
    The buffer is part of :meth:`state_dict`, so a resumed run replays the same tasks.
    """

    def __init__(self, sampler: TaskSampler, fresh: int, capacity: int | None = None, seed: int | None = None
                 ) -> None:
        super().__init__(sampler, seed)
        self.fresh = check_positive_int("fresh", fresh)
        self.capacity = None if capacity is None else check_positive_int("capacity", capacity)
        self._buffer: list[Task] = []  # one task each: appending and replacing cost nothing
        self._seen = 0

    def __len__(self) -> int:
        """How many tasks the buffer holds."""
        return len(self._buffer)

    @property
    def seen(self) -> int:
        """How many new tasks have arrived from the stream so far."""
        return self._seen

    def _remember(self, new: Task) -> None:
        """Add ``new`` to the buffer; past ``capacity``, each task replaces a random slot with probability
        ``capacity / seen`` (Vitter's algorithm R), which keeps a uniform sample of everything seen."""
        for i in range(len(new)):
            self._seen += 1
            if self.capacity is None or len(self._buffer) < self.capacity:
                self._buffer.append(new[i])
            else:
                slot = int(torch.randint(self._seen, (1,), generator=self.generator))
                if slot < self.capacity:
                    self._buffer[slot] = new[i]

    def _sample(self, num_tasks: int) -> Task:
        if num_tasks < self.fresh:
            raise ValueError(f"num_tasks must be at least fresh={self.fresh} (the new tasks of each round), "
                             f"got {num_tasks}")
        new = self.sampler.sample(self.fresh).to("cpu")
        self._remember(new)
        if num_tasks == self.fresh:
            return new
        index = torch.randint(len(self._buffer), (num_tasks - self.fresh,), generator=self.generator)
        return Task.cat([new] + [self._buffer[i] for i in index.tolist()])

    def state_dict(self) -> dict:
        buffer = None
        if self._buffer:
            tasks = Task.cat(self._buffer)
            buffer = {"support_x": tasks.support_x, "support_y": tasks.support_y, "query_x": tasks.query_x,
                      "query_y": tasks.query_y, "info": dict(tasks.info)}
        return {**super().state_dict(), "buffer": buffer, "seen": torch.tensor(self._seen)}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "buffer" not in state or not isinstance(state.get("seen"), Tensor):
            raise ValueError("state must be a ReplaySampler state_dict {'generator', 'inner', 'buffer', 'seen'}, "
                             f"got {describe(state)}")
        buffer = state["buffer"]
        tasks = None if buffer is None else Task(**buffer)
        size, seen = 0 if tasks is None else len(tasks), int(state["seen"])
        if self.capacity is not None and size > self.capacity:
            raise ValueError(f"state holds a buffer of {size} tasks but this ReplaySampler has capacity="
                             f"{self.capacity}: it was saved by a sampler of another capacity")
        if seen < size:
            raise ValueError(f"state['seen']={seen} is fewer than the {size} tasks its buffer holds: not a "
                             "ReplaySampler state_dict")
        super().load_state_dict(state)
        self._buffer = [] if tasks is None else [tasks[i] for i in range(len(tasks))]
        self._seen = int(state["seen"])
