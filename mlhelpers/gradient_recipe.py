"""Chapter 3's Omniglot recipe for the five gradient learners (section 3.3), in one place.

The chapter, ``scripts/train_gradient_learners.py`` (which trains the ten runs the chapter loads)
and ``scripts/gradient_learner_protocols.py`` (which tests the chapter's explanations) all build
their learners with :func:`make_gradient_learner` and train them with :func:`train_gradient_learner`,
so a stored run is the chapter's run: same modules, same seeds, same episodes.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm  # text bars: readable live and in stored notebook outputs

from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.learners import ANIL, MAML, MetaSGD, Reptile
from mlhelpers.learners.base import MetaLearner
from mlhelpers.models import conv4
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.seeding import seed_everything
from mlhelpers.training import History, meta_train
from mlhelpers.validation import check_positive_int

GRADIENT_LEARNERS = ("MAML", "FOMAML", "Reptile", "Meta-SGD", "ANIL")
"""The learners :func:`make_gradient_learner` builds, in the chapter's order (which fixes their seeds)."""
CHANNELS = 32
"""Width of the conv4 (the papers use 64)."""
INNER_LR = 0.4
"""The inner step of Finn et al.'s Omniglot runs; Meta-SGD's learned steps start there."""
TEST_STEPS = 3
"""Inner steps at evaluation."""
Q_QUERY = 5
"""Query drawings per class in training and evaluation episodes."""
META_BATCH = {5: 8, 20: 4}
"""Tasks per meta-step, by number of classes (the papers: 32 and 16)."""
OUTER_LR = 1e-3
"""Adam's learning rate in the outer loop."""


def make_gradient_learner(name: str, n_way: int, *, inner_lr: float = INNER_LR, inner_steps: int | None = None,
                          use_query: bool = False, eval_inner_steps: int = TEST_STEPS, inner_optimizer: str = "sgd",
                          inner_batch_size: int | None = None) -> MetaLearner:
    """One of :data:`GRADIENT_LEARNERS` on a fresh conv4 with per-task batch statistics.

    ``inner_steps`` defaults to one training step (three for Reptile); ``use_query``,
    ``inner_optimizer`` and ``inner_batch_size`` (Reptile only) give Nichol et al.'s inner loop
    (:class:`~mlhelpers.learners.reptile.Reptile`). The model's weights are drawn from torch's
    global generator, so seed it first (:func:`train_gradient_learner` does).
    """
    _check_name("make_gradient_learner", name)
    reptile_only = {"use_query": use_query, "inner_optimizer": inner_optimizer != "sgd",
                    "inner_batch_size": inner_batch_size is not None}
    for option, used in reptile_only.items():
        if used and name != "Reptile":
            raise ValueError(f"make_gradient_learner: {option} is for Reptile only, got name={name!r}")
    steps = inner_steps if inner_steps is not None else (3 if name == "Reptile" else 1)
    model = conv4(hidden_channels=CHANNELS, out_features=n_way, norm="task")
    common = dict(inner_steps=steps, eval_inner_steps=eval_inner_steps, strategy="loop")
    if name == "MAML":
        return MAML(model, inner_lr=inner_lr, **common)
    if name == "FOMAML":
        return MAML(model, inner_lr=inner_lr, first_order=True, **common)
    if name == "Reptile":
        return Reptile(model, inner_lr=inner_lr, use_query=use_query, inner_optimizer=inner_optimizer,
                       inner_batch_size=inner_batch_size, **common)
    if name == "Meta-SGD":
        return MetaSGD(model, inner_lr_init=inner_lr, **common)
    return ANIL(model, inner_lr=inner_lr, **common)


def _check_name(function: str, name: str) -> None:
    if name not in GRADIENT_LEARNERS:
        raise ValueError(f"{function}: name must be one of {GRADIENT_LEARNERS}, got {name!r}")


def train_sampler(omniglot: LabelledDataset, n_way: int, seed: int, k_shot: int = 1) -> EpisodicSampler:
    """Meta-training episodes: ``n_way``-way ``k_shot``-shot on the training alphabets, rotations as new classes."""
    return EpisodicSampler(omniglot, n_way, k_shot, Q_QUERY, "train", rotations=True, seed=seed)


def train_gradient_learner(omniglot: LabelledDataset, name: str, n_way: int, steps: int, progress: bool = True,
                           k_shot: int = 1) -> tuple[MetaLearner, History, float]:
    """Train ``name`` for ``steps`` meta-steps at ``n_way``-way ``k_shot``-shot as Chapter 3 does (1-shot).

    Seeds: the model ``100 + i`` (``i`` the learner's place in :data:`GRADIENT_LEARNERS`), the
    training episodes ``200 + n_way``, the meta-batches ``300 + i``; Adam with :data:`OUTER_LR`.
    Returns the learner, its :class:`~mlhelpers.training.History` and the training wall-clock seconds.
    """
    _check_name("train_gradient_learner", name)
    if n_way not in META_BATCH:
        raise ValueError(f"train_gradient_learner: n_way must be one of {tuple(META_BATCH)}, got {n_way!r}")
    index = GRADIENT_LEARNERS.index(name)
    seed_everything(100 + index)
    learner = make_gradient_learner(name, n_way)
    optimizer = torch.optim.Adam(learner.parameters(), lr=OUTER_LR)
    start = time.perf_counter()
    history = meta_train(learner, train_sampler(omniglot, n_way, seed=200 + n_way, k_shot=k_shot), steps=steps,
                         meta_batch_size=META_BATCH[n_way], optimizer=optimizer, seed=300 + index, progress=progress)
    return learner, history, time.perf_counter() - start


def load_gradient_learners(path: str | Path) -> tuple[dict, dict, dict, dict]:
    """The runs ``scripts/train_gradient_learners.py`` stored at ``path``.

    Returns ``(learners, histories, train_seconds, stored)``, the first three keyed by
    ``(n_way, name)``; ``stored`` is the file's whole content (command, steps, CPU, ...).
    """
    stored = torch.load(Path(path), map_location="cpu", weights_only=True)
    learners, histories, seconds = {}, {}, {}
    for key, state in stored["state_dicts"].items():
        n_way, name = key.split("-way ")
        learner = make_gradient_learner(name, int(n_way))
        learner.load_state_dict(state)
        learners[int(n_way), name] = learner
        histories[int(n_way), name] = History.from_dict(stored["histories"][key])
        seconds[int(n_way), name] = stored["train_seconds"][key]
    return learners, histories, seconds, stored


def retrain_gap(omniglot: LabelledDataset, histories: dict, steps: int, k_shot: int = 1,
                progress: bool = True) -> float:
    """Retrain the first ``steps`` meta-steps of every run in ``histories`` (keyed ``(n_way, name)``, as
    :func:`load_gradient_learners` returns them; ``k_shot`` as they were trained) and return the largest
    difference between the retrained and the stored training losses: 0 when the stored runs are what
    this code makes. ``progress`` shows a bar over the runs."""
    check_positive_int("steps", steps)
    gap = 0.0
    runs = tqdm(histories.items(), desc="retraining the first steps", disable=not progress, mininterval=10)
    for (n_way, name), history in runs:
        if len(history.train_loss) < steps:
            raise ValueError(f"steps={steps}, but the stored {n_way}-way {name} run has only "
                             f"{len(history.train_loss)} steps")
        _, check, _ = train_gradient_learner(omniglot, name, n_way, steps, progress=False, k_shot=k_shot)
        gap = max([gap] + [abs(a - b) for a, b in zip(check.train_loss, history.train_loss[:steps])])
    return gap
