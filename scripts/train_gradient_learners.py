"""Chapter 3's Omniglot runs at their full budget: writes notebooks/results/gradient_learners_omniglot.pt.

Section 3.3 trains five gradient learners (MAML, first-order MAML, Reptile, Meta-SGD, ANIL) for
5-way 1-shot (1,500 meta-steps of 8 tasks) and 20-way 1-shot (600 meta-steps of 4 tasks) on
the shipped Omniglot's meta-training alphabets: conv4 with 32 channels and per-task batch
statistics, inner step 0.4, Adam 1e-3 in the outer loop. Ten runs take about 45 minutes of CPU
time, more than the chapter may spend besides everything else it does, so this script runs them
with the chapter's code and seeds (:mod:`mlhelpers.gradient_recipe`) and stores the trained
weights (float32, 1.6 MB with the curves), the training curves and the training times, for the
chapter to load; the chapter retrains only the first meta-steps of every learner to check them.
Run from the repository root (two runs at a time, one thread each; the committed file took about
25 minutes on a 2-core machine)::

    python scripts/train_gradient_learners.py

``--steps-5 4 --steps-20 3 --out /tmp/x.pt`` is a smoke test.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from mlhelpers.data.omniglot import load_omniglot
from mlhelpers.gradient_recipe import GRADIENT_LEARNERS, train_gradient_learner
from mlhelpers.stepcost import cpu_model


def train_one(n_way: int, name: str, steps: int) -> tuple[dict, dict, float]:
    """Train ``name`` at ``n_way``-way 1-shot as the chapter does: (state dict, history, seconds)."""
    torch.set_num_threads(1)
    learner, history, seconds = train_gradient_learner(load_omniglot(), name, n_way, steps, progress=False)
    print(f"{n_way}-way {name}: {seconds:.0f} s, last query loss {history.train_loss[-1]:.3f}", flush=True)
    return learner.state_dict(), history.to_dict(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-5", type=int, default=1500, help="meta-steps at 5-way")
    parser.add_argument("--steps-20", type=int, default=600, help="meta-steps at 20-way")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each")
    parser.add_argument("--out", default="notebooks/results/gradient_learners_omniglot.pt")
    args = parser.parse_args()
    steps = {5: args.steps_5, 20: args.steps_20}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:  # independent, seeded runs: order does not matter
        futures = {f"{n_way}-way {name}": pool.submit(train_one, n_way, name, steps[n_way])
                   for n_way in (5, 20) for name in GRADIENT_LEARNERS}
        trained = {key: future.result() for key, future in futures.items()}
    stored = {"command": "python scripts/train_gradient_learners.py", "steps": steps, "workers": args.workers,
              "cpu": cpu_model(),
              "state_dicts": {key: t[0] for key, t in trained.items()},
              "histories": {key: t[1] for key, t in trained.items()},
              "train_seconds": {key: t[2] for key, t in trained.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(stored, out)
    print("wrote", out, f"({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
