"""Chapter 3's Omniglot runs at their full budget: writes notebooks/results/gradient_learners_omniglot.pt.

Section 3.3 trains five gradient learners (MAML, first-order MAML, Reptile, Meta-SGD, ANIL) for
5-way 1-shot (1,500 meta-steps of 8 tasks) and 20-way 1-shot (600 meta-steps of 4 tasks) on
the shipped Omniglot's meta-training alphabets: conv4 with 32 channels and per-task batch
statistics, inner step 0.4, Adam 1e-3 in the outer loop. Ten runs take about 45 minutes of CPU
time, more than the chapter may spend besides everything else it does, so this script runs them
with the chapter's code and seeds and stores the trained weights (float32, 1.6 MB with the curves), the
training curves and the training times, for the chapter to load (it does not yet: it still trains
them itself), retraining only the first meta-steps of every learner to check the stored runs.
Run from the repository root (two runs at a time, one thread each; the committed file took about
25 minutes on a 2-core machine)::

    python scripts/train_gradient_learners.py

``--steps-5 4 --steps-20 3 --out /tmp/x.pt`` is a smoke test.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from mlhelpers import seed_everything
from mlhelpers.data.omniglot import load_omniglot
from mlhelpers.learners import ANIL, MAML, MetaSGD, Reptile
from mlhelpers.models import conv4
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.stepcost import cpu_model
from mlhelpers.training import meta_train

# The settings of Chapter 3, section 3.3 (the chapter defines the same names).
CHANNELS, INNER_LR, TRAIN_STEPS, TEST_STEPS, Q_QUERY = 32, 0.4, 1, 3, 5
META_BATCH = {5: 8, 20: 4}
LEARNERS = ["MAML", "FOMAML", "Reptile", "Meta-SGD", "ANIL"]


def make_learner(name: str, n_way: int):
    """One of the five learners on a fresh conv4 with per-task batch statistics (as the chapter's)."""
    model = conv4(hidden_channels=CHANNELS, out_features=n_way, norm="task")
    common = dict(eval_inner_steps=TEST_STEPS, strategy="loop")
    if name == "MAML":
        return MAML(model, inner_lr=INNER_LR, inner_steps=TRAIN_STEPS, **common)
    if name == "FOMAML":
        return MAML(model, inner_lr=INNER_LR, inner_steps=TRAIN_STEPS, first_order=True, **common)
    if name == "Reptile":
        return Reptile(model, inner_lr=INNER_LR, inner_steps=3, **common)
    if name == "Meta-SGD":
        return MetaSGD(model, inner_lr_init=INNER_LR, inner_steps=TRAIN_STEPS, **common)
    if name == "ANIL":
        return ANIL(model, inner_lr=INNER_LR, inner_steps=TRAIN_STEPS, **common)
    raise ValueError(f"make_learner: name must be one of {LEARNERS}, got {name!r}")


def train_one(n_way: int, index: int, name: str, steps: int) -> tuple[dict, dict, float]:
    """Train learner ``LEARNERS[index]`` at ``n_way``-way 1-shot as the chapter does: (state dict, history, seconds)."""
    torch.set_num_threads(1)
    seed_everything(100 + index)  # the chapter's seeds
    learner = make_learner(name, n_way)
    sampler = EpisodicSampler(load_omniglot(), n_way, 1, Q_QUERY, "train", rotations=True, seed=200 + n_way)
    start = time.perf_counter()
    history = meta_train(learner, sampler, steps=steps, meta_batch_size=META_BATCH[n_way],
                         optimizer=torch.optim.Adam(learner.parameters(), lr=1e-3), seed=300 + index,
                         progress=False)
    seconds = time.perf_counter() - start
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
    jobs = [(n_way, i, name) for n_way in (5, 20) for i, name in enumerate(LEARNERS)]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:  # independent, seeded runs: order does not matter
        futures = {f"{n_way}-way {name}": pool.submit(train_one, n_way, i, name, steps[n_way])
                   for n_way, i, name in jobs}
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
