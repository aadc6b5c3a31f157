"""The recipe that trained the shipped learners of :mod:`mlhelpers.pretrained`. Chapter 4.

``scripts/train_pretrained.py`` runs it (the exact commands are in
:data:`mlhelpers.pretrained.PRETRAINED`); Chapter 4 trains a short ProtoNet with :func:`train_member`
and can rerun the whole ensemble with :func:`train_ensemble`. Training goes through
:func:`mlhelpers.training.meta_train`.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.distillation import Distillation
from mlhelpers.evaluation import EvalResult, evaluate
from mlhelpers.learners.base import MetaLearner
from mlhelpers.learners.ensemble import EnsembleProtoNet
from mlhelpers.learners.protonet import ProtoNet
from mlhelpers.models import conv4
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.samplers.wrappers import AugmentedSampler
from mlhelpers.seeding import seed_everything
from mlhelpers.training import meta_train

LR_SCHEDULES = ("step", "cosine")
"""The learning-rate schedules :func:`train_member` knows (see :func:`lr_schedule`)."""

EPISODE_SEED_OFFSET = 1000
"""A member seeded ``seed`` draws its training episodes with seed ``seed + EPISODE_SEED_OFFSET``."""
AUGMENT_SEED_OFFSET = 2000
"""... and its random distortions with seed ``seed + AUGMENT_SEED_OFFSET``."""
MEMBER_SEED_STRIDE = 10
"""Member ``i`` of an ensemble is seeded ``MEMBER_SEED_STRIDE * i`` (:func:`train_ensemble`)."""
VAL_SEED = 1
"""Seed of the meta-validation episodes of :func:`within_alphabet` while training (and in the script)."""


def lr_schedule(optimizer: torch.optim.Optimizer, steps: int, kind: str) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of a ``steps``-step run, stepped once per optimizer step.

    ``"step"``: the rate halves at 1/3 and again at 2/3 of the run. ``"cosine"``: it follows
    ``0.5 * (1 + cos(pi * t / steps))`` times the initial rate, from the full rate down to 0 at the end.
    """
    if kind == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, [steps // 3, 2 * steps // 3], gamma=0.5)
    if kind == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)))
    raise ValueError(f"schedule must be one of {LR_SCHEDULES}, got {kind!r}")


def within_sampler(omniglot: LabelledDataset, split: str, seed: int) -> EpisodicSampler:
    """Lake et al.'s task: 20-way 1-shot (1 query), all 20 classes from one alphabet, no rotations."""
    return EpisodicSampler(omniglot, 20, 1, 1, split, within_group=True, seed=seed)


def within_alphabet(learner: MetaLearner, omniglot: LabelledDataset, split: str, num_episodes: int,
                    seed: int) -> EvalResult:
    """Accuracy of ``learner`` on ``num_episodes`` episodes of :func:`within_sampler`."""
    return evaluate(learner, within_sampler(omniglot, split, seed), num_episodes)


def train_member(
    omniglot: LabelledDataset,
    *,
    seed: int,
    steps: int,
    n_way: int = 60,
    k_shot: int = 1,
    q_query: int = 3,
    augment: bool = True,
    hidden_channels: int = 64,
    lr: float = 1e-3,
    schedule: str = "step",
    distortion: dict[str, float] | None = None,
    split: str = "train",
    val_every: int | None = 1000,
    val_episodes: int = 300,
    progress: bool = True,
    backbone: nn.Module | None = None,
    teacher: EnsembleProtoNet | None = None,
) -> nn.Module:
    """Meta-train one ProtoNet backbone (conv4) with the protocol of Snell et al. 2017; return it in eval mode.

    ``n_way``-way ``k_shot``-shot episodes (``q_query`` queries per class) of ``split`` with rotations
    as new classes, one episode per Adam step at ``lr``, halved at 1/3 and 2/3 of the run
    (``schedule="step"``) or decayed along a half cosine (``"cosine"``). ``augment`` distorts every
    image (:class:`~mlhelpers.samplers.wrappers.AugmentedSampler`; ``distortion``: keyword arguments of
    :func:`~mlhelpers.data.augment.random_affine`). ``seed`` seeds the initialisation and, offset by
    :data:`EPISODE_SEED_OFFSET` and :data:`AUGMENT_SEED_OFFSET`, the episodes and distortions. Every
    ``val_every`` steps (None: never) within-alphabet 20-way 1-shot accuracy on ``val_episodes``
    meta-validation episodes is shown; validation does not change the result. ``backbone`` (a conv4 of
    ``hidden_channels`` channels, e.g. one pre-trained by
    :func:`~mlhelpers.pretraining.pretrain_classifier`) is meta-trained in place instead of a fresh one.
    With a ``teacher`` the network is distilled instead: trained on the same episodes to give the
    teacher's query class probabilities (:class:`~mlhelpers.distillation.Distillation`).
    """
    if distortion and not augment:
        raise ValueError(f"distortion={distortion} sets the strength of augmentation, but augment=False")
    seed_everything(seed)
    if backbone is None:
        backbone = conv4(hidden_channels=hidden_channels, norm="batch")
    learner = ProtoNet(backbone.train())
    trained = learner if teacher is None else Distillation(learner, teacher)
    sampler = EpisodicSampler(omniglot, n_way, k_shot, q_query, split, rotations=True,
                              seed=seed + EPISODE_SEED_OFFSET)
    if augment:
        sampler = AugmentedSampler(sampler, seed=seed + AUGMENT_SEED_OFFSET, **(distortion or {}))
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    scheduler = lr_schedule(optimizer, steps, schedule)
    validation = {} if val_every is None else {
        "val_sampler": within_sampler(omniglot, "val", VAL_SEED), "val_every": val_every, "val_episodes": val_episodes}
    meta_train(trained, sampler, steps=steps, meta_batch_size=1, optimizer=optimizer, scheduler=scheduler,
               progress=progress, **validation)
    return backbone.eval()


def train_ensemble(omniglot: LabelledDataset, config: dict, first_member: int = 0, **kwargs) -> EnsembleProtoNet:
    """Train ``config["members"]`` backbones with :func:`train_member` (member ``i`` seeded ``MEMBER_SEED_STRIDE * i``).

    ``config`` is a saved learner's ``config`` (:func:`mlhelpers.pretrained.save`): ``steps``,
    ``ways``, ``shots``, ``queries``, ``augment``, ``channels``, ``members`` and ``tta_shift``, and
    optionally ``schedule`` and ``distortion`` (defaults of :func:`train_member` when absent); the
    first four go to :func:`train_member` as ``n_way``, ``k_shot``, ``q_query`` and ``hidden_channels``.
    ``kwargs`` go to :func:`train_member` too (validation and progress only). The CPU seconds of the
    members are added to the returned learner's ``config["cpu_seconds"]`` (their sum).
    """
    members, cpu = [], []
    for i in range(first_member, first_member + config["members"]):
        start = time.process_time()
        members.append(train_member(omniglot, seed=MEMBER_SEED_STRIDE * i, steps=config["steps"],
                                    n_way=config["ways"], k_shot=config["shots"], q_query=config["queries"],
                                    augment=config["augment"], hidden_channels=config["channels"],
                                    **{k: config[k] for k in ("schedule", "distortion") if k in config}, **kwargs))
        cpu.append(time.process_time() - start)
    learner = EnsembleProtoNet(members, tta_shift=config["tta_shift"]).eval()
    learner.config = dict(config, cpu_seconds=sum(cpu))
    return learner
