"""Chapter 3's Omniglot runs at their full budget: writes notebooks/results/gradient_learners_omniglot.pt.

Section 3.3 trains five gradient learners (MAML, first-order MAML, Reptile, Meta-SGD, ANIL) for
5-way 1-shot (1,500 meta-steps of 8 tasks) and 20-way 1-shot (600 meta-steps of 4 tasks) on
the shipped Omniglot's meta-training alphabets: conv4 with 32 channels and per-task batch
statistics, inner step 0.4, Adam 1e-3 in the outer loop. Ten runs take the best part of an hour
on one thread, more than the chapter may spend besides everything else it does, so this script runs them
with the chapter's code and seeds (:mod:`mlhelpers.gradient_recipe`) and stores the trained
weights (float32, 1.6 MB with the curves), the training curves and the training times, for the
chapter to load; the chapter retrains only the first meta-steps of every learner to check them.
Run from the repository root (two runs at a time, one thread each; the committed file took about
25 minutes on a 2-core machine)::

    python scripts/train_gradient_learners.py

``--k-shot 5`` trains the same learners, with the same seeds, on 5-shot episodes and writes
``gradient_learners_omniglot_5shot.pt`` (``--ways 5`` for the 5-way runs only): models trained for
the shot count they are tested at, which the chapter sets beside its fine-tuned 1-shot models.
``--add`` keeps the runs already in the output file and adds (or replaces) the ones trained now, so
the committed 5-shot file was made by ``--k-shot 5 --ways 5`` and then ``--k-shot 5 --ways 20 --add``
(its ``command`` records both; the runs are seeded one by one, so the order changes nothing).
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


def train_one(n_way: int, name: str, steps: int, k_shot: int) -> tuple[dict, dict, float]:
    """Train ``name`` at ``n_way``-way ``k_shot``-shot as the chapter does: (state dict, history, seconds)."""
    torch.set_num_threads(1)
    learner, history, seconds = train_gradient_learner(load_omniglot(), name, n_way, steps, progress=False,
                                                       k_shot=k_shot)
    print(f"{n_way}-way {k_shot}-shot {name}: {seconds:.0f} s, last query loss {history.train_loss[-1]:.3f}",
          flush=True)
    return learner.state_dict(), history.to_dict(), seconds


def with_earlier_runs(new: dict, earlier: dict) -> dict:
    """``new``'s runs added to (or replacing) ``earlier``'s, with both commands and CPUs recorded."""
    if earlier["k_shot"] != new["k_shot"]:
        raise ValueError(f"--add: the file holds {earlier['k_shot']}-shot runs, not {new['k_shot']}-shot ones")
    merged = {"command": f"{earlier['command']}, then {new['command']}", "k_shot": new["k_shot"],
              "steps": {**earlier["steps"], **new["steps"]}, "workers": new["workers"],
              "cpu": earlier["cpu"] if earlier["cpu"] == new["cpu"] else f"{earlier['cpu']}, then {new['cpu']}"}
    for part in ("state_dicts", "histories", "train_seconds"):
        merged[part] = {**earlier[part], **new[part]}
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-5", type=int, default=1500, help="meta-steps at 5-way")
    parser.add_argument("--steps-20", type=int, default=600, help="meta-steps at 20-way")
    parser.add_argument("--k-shot", type=int, default=1, help="shots per class in training (the chapter: 1)")
    parser.add_argument("--ways", type=int, nargs="+", default=[5, 20], choices=[5, 20])
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each")
    parser.add_argument("--add", action="store_true", help="keep the runs already in the output file")
    parser.add_argument("--out", help="default: notebooks/results/gradient_learners_omniglot.pt "
                                      "(1-shot), gradient_learners_omniglot_5shot.pt (5-shot)")
    args = parser.parse_args()
    steps = {n_way: {5: args.steps_5, 20: args.steps_20}[n_way] for n_way in args.ways}
    suffix = "" if args.k_shot == 1 else f"_{args.k_shot}shot"
    out = Path(args.out or f"notebooks/results/gradient_learners_omniglot{suffix}.pt")
    command = "python scripts/train_gradient_learners.py" + ("" if args.k_shot == 1 else f" --k-shot {args.k_shot}")
    if args.ways != [5, 20]:
        command += " --ways " + " ".join(map(str, args.ways))
    if args.add:
        command += " --add"
    with ProcessPoolExecutor(max_workers=args.workers) as pool:  # independent, seeded runs: order does not matter
        futures = {f"{n_way}-way {name}": pool.submit(train_one, n_way, name, steps[n_way], args.k_shot)
                   for n_way in steps for name in GRADIENT_LEARNERS}
        trained = {key: future.result() for key, future in futures.items()}
    stored = {"command": command, "k_shot": args.k_shot, "steps": steps, "workers": args.workers,
              "cpu": cpu_model(),
              "state_dicts": {key: t[0] for key, t in trained.items()},
              "histories": {key: t[1] for key, t in trained.items()},
              "train_seconds": {key: t[2] for key, t in trained.items()}}
    if args.add and out.exists():
        stored = with_earlier_runs(stored, torch.load(out, map_location="cpu", weights_only=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(stored, out)
    print("wrote", out, f"({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
