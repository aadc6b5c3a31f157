"""Train the Prototypical Network ensembles shipped in ``mlhelpers/assets`` (see :mod:`mlhelpers.pretrained`).

The exact commands that made the shipped files are in :data:`mlhelpers.pretrained.PRETRAINED` (each
entry's ``command``) and in ``mlhelpers/assets/README.md``, with how the recipe was chosen. The
recipe itself is :mod:`mlhelpers.recipe` (a module, not this script, because Chapter 4 and the tests
call it too).

Member ``i`` of a run is seeded ``10 * i`` alone (``--first-member`` picks ``i``), so members
trained in parallel and joined with ``--combine`` equal one run's (on the CPU, one thread).

Only the meta-training alphabets are trained on. The script then reports within-alphabet 20-way
1-shot accuracy on the meta-validation alphabets (what the choice between variants was based on)
and, with ``--test``, on the meta-test alphabets.
"""

from __future__ import annotations

import argparse

import torch

from mlhelpers.data.omniglot import load_omniglot
from mlhelpers.evaluation import evaluate
from mlhelpers.learners import EnsembleProtoNet
from mlhelpers.pretrained import load_file, save
from mlhelpers.recipe import LR_SCHEDULES, VAL_SEED, train_ensemble, within_alphabet
from mlhelpers.samplers.episodic import EpisodicSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--first-member", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--ways", type=int, default=60)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=1)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--max-rotate", type=float, help="augmentation strength (degrees; default: random_affine's)")
    parser.add_argument("--max-scale", type=float)
    parser.add_argument("--max-shift", type=float)
    parser.add_argument("--max-shear", type=float)
    parser.add_argument("--schedule", choices=LR_SCHEDULES, help="learning-rate schedule (default: train_member's)")
    parser.add_argument("--tta-shift", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--test", action="store_true", help="also report meta-test accuracy")
    parser.add_argument("--combine", nargs="+", help="join saved ensembles instead of training")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    omniglot = load_omniglot()

    if args.combine:
        parts = [load_file(path) for path in args.combine]
        learner = EnsembleProtoNet([b for part in parts for b in part.backbones], tta_shift=args.tta_shift)
        learner.config = dict(parts[0].config, members=len(learner.backbones), tta_shift=args.tta_shift,
                              cpu_seconds=sum(part.config["cpu_seconds"] for part in parts),
                              augment=[a for part in parts for a in [part.config["augment"]] * len(part.backbones)])
    else:
        config = {"steps": args.steps, "ways": args.ways, "shots": args.shots, "queries": args.queries,
                  "augment": args.augment, "channels": args.channels, "members": args.members,
                  "tta_shift": args.tta_shift}
        if args.schedule is not None:  # only what was asked for, so older configs stay as they were
            config["schedule"] = args.schedule
        distortion = {name: getattr(args, name) for name in ("max_rotate", "max_scale", "max_shift", "max_shear")
                      if getattr(args, name) is not None}
        if distortion:
            config["distortion"] = distortion
        learner = train_ensemble(omniglot, config, first_member=args.first_member)
    save(learner, args.out, learner.config)
    learner = load_file(args.out)  # evaluate exactly what was saved (float16 weights)
    print("saved", args.out, learner.config, flush=True)
    val = within_alphabet(learner, omniglot, "val", args.episodes, seed=VAL_SEED)
    print(f"val within-alphabet 20-way 1-shot {val}", flush=True)
    if args.test:
        test = within_alphabet(learner, omniglot, "test", args.episodes, seed=2)
        five = evaluate(learner, EpisodicSampler(omniglot, 5, 1, 5, "test", seed=3), args.episodes)
        print(f"test within-alphabet 20-way 1-shot {test}; test 5-way 1-shot {five}", flush=True)


if __name__ == "__main__":
    main()
