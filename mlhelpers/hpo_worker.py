"""One worker of a shared Optuna study (Chapter 6, section 6.4), runnable as a process::

    python -m mlhelpers.hpo_worker --journal studies/shared.log --worker 1 --trials 3 --steps 100
    python -m mlhelpers.hpo_worker --storage postgresql://user@dbhost/studies --worker 2 --heartbeat 10 --retries 1

Every worker opens the same study in the same journal file or database (:func:`mlhelpers.hpo.open_study`;
a database is what workers on several machines share, appendix "Scaling out"),
asks its TPE sampler for a setting of a Prototypical Network (embedding width, outer learning
rate), meta-trains it on 5-way 1-shot Omniglot tasks at 14x14 and writes the validation accuracy
back, so each worker's sampler sees the trials the others finished. Each trial records which
worker ran it (user attribute ``"worker"``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence

import optuna
import torch
import torch.nn.functional as F

from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.hpo import TrialSetup, learner_objective, open_study
from mlhelpers.learners import ProtoNet
from mlhelpers.models import conv4
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.validation import check_positive_int

__all__ = ["main", "run_worker"]


def small_omniglot() -> LabelledDataset:
    """The shipped Omniglot at half resolution, ``[n, 1, 14, 14]``, as Chapter 6 uses it."""
    from mlhelpers.data.omniglot import load_omniglot

    omniglot = load_omniglot()
    return dataclasses.replace(omniglot, images=F.avg_pool2d(omniglot.images, 2))


def run_worker(
    storage: str | os.PathLike,
    worker: int,
    *,
    trials: int,
    steps: int,
    val_episodes: int,
    data: LabelledDataset | None = None,
    study_name: str = "shared",
    heartbeat: int | None = None,
    retries: int = 0,
) -> optuna.Study:
    """Add ``trials`` trials to the study ``study_name`` in ``storage`` (a journal file or a database
    URL; created if absent); returns it.

    ``worker`` (a positive int) seeds this worker's sampler and is stored on its trials; ``data``
    (default: :func:`small_omniglot`) needs ``"train"`` and ``"val"`` splits. ``heartbeat`` and
    ``retries`` (database only) mark the trials of a worker that died as failed and run them again
    (:func:`~mlhelpers.hpo.open_study`); a retried trial counts towards ``trials``.
    """
    check_positive_int("worker", worker)
    check_positive_int("trials", trials)
    data = small_omniglot() if data is None else data
    for split in ("train", "val"):
        if split not in data.splits:
            raise ValueError(f"data must have a {split!r} split (it has {sorted(data.splits)})")
    train = EpisodicSampler(data, n_way=5, k_shot=1, q_query=5, split="train", rotations=True, seed=0)
    val = EpisodicSampler(data, n_way=5, k_shot=1, q_query=5, split="val", seed=1)

    def build(trial: optuna.Trial) -> TrialSetup:
        trial.set_user_attr("worker", worker)
        width = trial.suggest_categorical("width", [8, 16, 32])
        lr = trial.suggest_float("lr", 1e-4, 0.3, log=True)
        learner = ProtoNet(conv4(hidden_channels=width, num_blocks=3))
        return TrialSetup(learner, torch.optim.Adam(learner.parameters(), lr=lr), meta_batch_size=1)

    objective = learner_objective(build, train, val, steps=steps, report_every=steps, val_episodes=val_episodes)
    study = open_study(study_name, storage, sampler=optuna.samplers.TPESampler(seed=worker), heartbeat=heartbeat,
                       retries=retries)
    study.optimize(objective, n_trials=trials)
    return study


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: ``--journal PATH | --storage URL, --worker N [--study shared --trials 3 --steps 100
    --val-episodes 40 --heartbeat S --retries R]``."""
    parser = argparse.ArgumentParser(prog="python -m mlhelpers.hpo_worker", description=__doc__.split("\n")[0])
    parser.add_argument("--journal", "--storage", dest="storage", required=True,
                        help="the study's journal file or database URL (postgresql://...), shared by all workers")
    parser.add_argument("--study", default="shared", help="the study's name (default: shared)")
    parser.add_argument("--worker", type=int, required=True, help="this worker's number (seeds its sampler)")
    parser.add_argument("--trials", type=int, default=3, help="trials this worker adds")
    parser.add_argument("--steps", type=int, default=100, help="meta-training steps per trial")
    parser.add_argument("--val-episodes", type=int, default=40, help="validation episodes per trial")
    parser.add_argument("--heartbeat", type=int, help="seconds between heartbeats of a running trial (database only)")
    parser.add_argument("--retries", type=int, default=0, help="times a dead worker's trial is run again")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_worker(args.storage, args.worker, trials=args.trials, steps=args.steps, val_episodes=args.val_episodes,
               study_name=args.study, heartbeat=args.heartbeat, retries=args.retries)
    print(f"worker {args.worker} (pid {os.getpid()}) done", flush=True)


if __name__ == "__main__":
    main()
