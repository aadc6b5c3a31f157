"""What one meta-step costs: CPU time and peak memory, measured in a fresh process (Chapter 3).

:func:`measure_meta_step` saves a learner and its meta-batches to a temporary file and runs
``python -m mlhelpers.stepcost FILE`` in a new process, single-threaded by default, with ``malloc`` handing
large freed blocks back to the system at once (``MALLOC_MMAP_THRESHOLD_``). There it takes one
warm-up step (Adam's state, one-off allocations), resets the peak resident set size
(``/proc/self/clear_refs``), takes one step and reads how far the peak (``VmHWM``) rose above
the level before it, then times a step on every batch but the first (CPU and wall-clock time).
The appendix "Under the hood" says why each of these choices is needed. Linux only (``/proc``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mlhelpers.learners.base import MetaLearner
from mlhelpers.tasks import Task

__all__ = ["StepCost", "cpu_model", "measure_meta_step"]

def cpu_model() -> str:
    """The CPU's name, to print beside every timing: 'model name' in /proc/cpuinfo on Linux
    (``platform.processor()`` is empty there), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


MMAP_THRESHOLD = 65536
"""Bytes from which ``malloc`` maps (and, when freed, unmaps) a block: freed memory leaves the process."""


@dataclass(frozen=True)
class StepCost:
    """One meta-step (``meta_loss`` + ``backward`` + Adam step) of one learner, in a fresh process."""

    cpu_seconds: float
    """Mean CPU time of a timed step, all threads of the process (less affected by load than wall time)."""
    wall_seconds: float
    """Mean wall-clock time of the same steps (affected by load)."""
    peak_mb: float
    """How far the resident set size rose above its level before the step, in MB (10^6 bytes)."""


def measure_meta_step(
    learner: MetaLearner,
    batches: list[Task],
    lr: float = 1e-3,
    threads: int = 1,
    malloc_threshold: int | None = MMAP_THRESHOLD,
    timeout: float = 600,
) -> StepCost:
    """Cost of one meta-step of ``learner`` with Adam(``lr``), in a fresh process of ``threads`` threads.

    ``batches``: at least two meta-batches; the first is the warm-up, the second is measured for
    memory, all but the first are timed. ``malloc_threshold=None`` leaves ``malloc`` at its
    default (freed memory may stay in the process and hide the next step's). The learner is copied
    into the new process; it is not changed here.
    """
    if not isinstance(learner, MetaLearner):
        raise TypeError(f"measure_meta_step: learner must be a MetaLearner, got {type(learner).__name__}")
    if not isinstance(batches, (list, tuple)) or len(batches) < 2 or not all(isinstance(b, Task) for b in batches):
        raise ValueError("measure_meta_step: batches must be a list of at least two Task meta-batches "
                         "(one warm-up, one or more measured)")
    if not Path("/proc/self/clear_refs").exists():
        raise RuntimeError("measure_meta_step needs Linux: it reads the peak memory from /proc/self/status")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"measure_meta_step: threads must be a positive int, got {threads!r}")
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if malloc_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(malloc_threshold)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "step.pt"
        torch.save({"learner": learner, "batches": list(batches), "lr": lr, "threads": threads}, path)
        run = subprocess.run([sys.executable, "-m", "mlhelpers.stepcost", str(path)], capture_output=True,
                             text=True, env=env, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"measure_meta_step: the measuring process failed:\n{run.stderr[-2000:]}")
    return StepCost(**json.loads(run.stdout.strip().splitlines()[-1]))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def _measure(path: str) -> dict[str, float]:
    """The measurement itself, run in the fresh process (see the module docstring)."""
    saved = torch.load(path, weights_only=False)
    torch.set_num_threads(saved["threads"])
    learner, batches = saved["learner"].train(), saved["batches"]
    optimizer = torch.optim.Adam(learner.parameters(), lr=saved["lr"])

    def step(batch: Task) -> None:
        optimizer.zero_grad()
        learner.meta_loss(batch).backward()
        optimizer.step()

    step(batches[0])  # warm-up: Adam's state, one-off allocations
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak resident set size starts again from the current one
    before = _status_kb("VmRSS")
    step(batches[1])
    peak_mb = (_status_kb("VmHWM") - before) * 1024 / 1e6
    cpu, wall = [], []
    for batch in batches[1:]:
        c, w = time.process_time(), time.perf_counter()
        step(batch)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return {"cpu_seconds": sum(cpu) / len(cpu), "wall_seconds": sum(wall) / len(wall), "peak_mb": peak_mb}


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1])))
