"""Pretrained few-shot learners shipped with the package: no training, no download. Chapter 4.

::

    from mlhelpers import pretrained
    learner = pretrained.load("protonet-omniglot")
    labels = learner.predict_labels(support_images, support_labels, query_images)

``"protonet-omniglot"`` is an ensemble of 3 Prototypical Networks (conv4 backbones, 64 channels)
meta-trained on the 130 meta-training characters of the shipped Omniglot
(:func:`mlhelpers.data.omniglot.load_omniglot`) for 4,000 steps of 60-way 1-shot episodes with
rotations as new classes and random affine distortions (:mod:`mlhelpers.data.augment`; rotation up
to 15 degrees, scale 0.85-1.15, shift up to 10%, shear up to 0.2), the learning rate decayed along
a half cosine; embeddings are averaged over 1-pixel shifts at test time. Among the variants
Chapter 4 compares it is the best on within-alphabet 20-way 1-shot tasks of the meta-validation
alphabets (90.4% +- 0.5%). The weights (16-bit floats, under 1 MB) were produced from the shipped
data by (about 20 CPU-minutes; the three members can run in parallel; rerunning these commands
reproduced the members bit for bit on one CPU thread)::

    for i in 0 1 2; do
        OMP_NUM_THREADS=1 python scripts/train_pretrained.py --members 1 --first-member $i --steps 4000 \\
            --augment --max-rotate 15 --max-scale 0.15 --max-shift 0.1 --max-shear 0.2 --schedule cosine \\
            --out member$i.pt
    done
    python scripts/train_pretrained.py --combine member0.pt member1.pt member2.pt --tta-shift 1 --test \\
        --out mlhelpers/assets/protonet_omniglot.pt

Accuracy on the meta-test alphabets (Balinese, Sanskrit), 600 episodes, mean +- 95% CI:

- 5-way 1-shot: 92.1% +- 0.7%;
- within-alphabet 20-way 1-shot (Lake et al.): 65.1% +- 1.3%, an error of 35%.

The meta-test alphabets are much harder for it than the meta-validation ones; Chapter 4 discusses why.

``load(transductive_steps=5)`` refines the prototypes with each task's unlabelled query images
(soft k-means, Ren et al. 2018; 5 steps chosen on the meta-validation alphabets in Chapter 4,
section 4.7). On Chapter 4's meta-test episodes with 15 queries per class, 5-way 1-shot goes from
91.3% +- 0.7% to 96.0% +- 0.6%. That learner is transductive: each prediction depends on the other
queries of its task, so it helps with a batch of queries of every class and not with one image.

``"protonet-omniglot-plain"`` is one network trained for 2,000 steps with the recipe of Chapter 4's
section 4.2 (no augmentation, step decay, no test-time averaging): Chapter 4's reference for what
the other levers add, and Chapter 7's network for the distribution-shift experiments.
"""
from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from importlib.resources import files
from typing import Sequence

import torch
from torch import Tensor, nn

from mlhelpers.data.augment import shifted_copies
from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.evaluation import EvalResult, evaluate
from mlhelpers.learners.base import MetaLearner
from mlhelpers.learners.protonet import (
    ProtoNet,
    class_counts,
    class_prototypes,
    negative_squared_distances,
    refine_prototypes,
)
from mlhelpers.models import conv4
from mlhelpers.samplers.augmented import AugmentedSampler
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.seeding import seed_everything
from mlhelpers.tasks import Task
from mlhelpers.validation import check_steps


@dataclass(frozen=True)
class PretrainedInfo:
    """What one shipped learner is, and how it was made.

    Attributes:
        file: the weights file in ``mlhelpers/assets``.
        command: the command (run from the repository root) that reproduces ``file``.
        description: what the learner is and what it reaches on the meta-test alphabets.
    """

    file: str
    command: str
    description: str


_PLAIN = "OMP_NUM_THREADS=1 python scripts/train_pretrained.py --members 1 --steps 2000 --out {out}"
PRETRAINED: dict[str, PretrainedInfo] = {
    "protonet-omniglot": PretrainedInfo(
        file="protonet_omniglot.pt",
        command=(
            "for i in 0 1 2; do OMP_NUM_THREADS=1 python scripts/train_pretrained.py --members 1 --first-member $i "
            "--steps 4000 --augment --max-rotate 15 --max-scale 0.15 --max-shift 0.1 --max-shear 0.2 "
            "--schedule cosine --out member$i.pt; done && "
            "python scripts/train_pretrained.py --combine member0.pt member1.pt member2.pt --tta-shift 1 --test "
            "--out mlhelpers/assets/protonet_omniglot.pt"
        ),
        description=(
            "Ensemble of 3 ProtoNets (conv4, 64 channels), each meta-trained for 4,000 steps of 60-way "
            "1-shot episodes (1 query per class) with rotations as new classes, random affine distortions "
            "and a cosine learning-rate decay; embeddings averaged over 1-pixel shifts at test time. "
            "Meta-test alphabets, 600 episodes: 5-way 1-shot 92.1%, within-alphabet 20-way 1-shot "
            "65.1%."
        ),
    ),
    "protonet-omniglot-plain": PretrainedInfo(
        file="protonet_omniglot_plain.pt",
        command=_PLAIN.format(out="mlhelpers/assets/protonet_omniglot_plain.pt"),
        description=(
            "One ProtoNet trained for 2,000 steps without augmentation or test-time averaging: Chapter 4's "
            "reference for measuring what those add, and Chapter 7's network for distribution shift."
        ),
    ),
}


class EnsembleProtoNet(MetaLearner):
    """Prototypical Networks averaged over backbones and (optionally) shifted views of each image.

    Each member embeds an image as the mean embedding of its views (the image and, with
    ``tta_shift > 0``, its copies shifted by ``tta_shift`` pixels; :func:`~mlhelpers.data.augment.shifted_copies`),
    builds class prototypes and turns negative squared distances into class probabilities; the
    ensemble averages the probabilities of its members.

    Args:
        backbones: modules mapping ``[batch, C, H, W]`` to ``[batch, D]``.
        tta_shift: pixels to shift for test-time augmentation (0: none).
        transductive_steps: soft k-means refinements of every member's prototypes with the
            task's query embeddings, weighted by the ensemble's probabilities
            (:func:`~mlhelpers.learners.protonet.refine_prototypes`), in ``forward`` and
            :meth:`predict_labels`; 0 (the default) is inductive.

    ``adapt`` returns prototypes ``[members, tasks, n_way, D]``; ``predict`` returns log mean
    probabilities ``[tasks, n_query, n_way]`` (logits for :func:`~mlhelpers.evaluation.evaluate`);
    both are inductive.
    """

    needs_grad_to_adapt = False

    def __init__(self, backbones: Sequence[nn.Module], tta_shift: int = 0, transductive_steps: int = 0) -> None:
        super().__init__()
        if len(backbones) == 0:
            raise ValueError("backbones must hold at least one module")
        if not isinstance(tta_shift, int) or tta_shift < 0:
            raise ValueError(f"tta_shift must be an int >= 0, got {tta_shift!r}")
        self.backbones = nn.ModuleList(backbones)
        self.tta_shift = tta_shift
        self.transductive_steps = check_steps("transductive_steps", transductive_steps)
        self.config: dict = {}  # how a saved learner was trained (set by load_file)

    def embed(self, x: Tensor) -> Tensor:
        """``[tasks, n, C, H, W]`` -> ``[members, tasks, n, D]``."""
        views = shifted_copies(x, self.tta_shift) if self.tta_shift else x[None]  # [V, T, n, C, H, W]
        flat = views.flatten(0, 2)
        out = []
        for backbone in self.backbones:
            f = backbone(flat).flatten(1)
            out.append(f.unflatten(0, views.shape[:3]).mean(0))
        return torch.stack(out)

    def _adapt(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        return class_prototypes(self.embed(support_x), support_y, int(support_y.max()) + 1)  # [M, T, N, D]

    def _predict(self, adapted: Tensor, query_x: Tensor) -> Tensor:
        return self._log_mean_probs(adapted, self.embed(query_x))

    def _log_mean_probs(self, prototypes: Tensor, queries: Tensor) -> Tensor:
        """``[M, T, N, D]`` prototypes, ``[M, T, Q, D]`` queries -> ``[T, Q, N]`` log mean probabilities."""
        log_probs = negative_squared_distances(queries, prototypes).log_softmax(-1)  # [M, T, Q, N]
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.backbones))

    def _solve(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """``[T, Q, N]`` log probabilities of the queries: inductive, or refined on the queries."""
        prototypes = self.adapt(support_x, support_y)
        if not self.transductive_steps:
            return self.predict(prototypes, query_x)
        queries = self.embed(query_x)
        counts = class_counts(support_y, prototypes.shape[-2])
        prototypes = refine_prototypes(prototypes, counts, queries, lambda p, q: self._log_mean_probs(p, q).exp(),
                                       self.transductive_steps)
        return self._log_mean_probs(prototypes, queries)

    def _forward(self, task: Task) -> Tensor:
        return self._solve(task.support_x, task.support_y, task.query_x)

    @torch.no_grad()
    def predict_labels(self, support_images: Tensor, support_labels: Tensor, query_images: Tensor) -> Tensor:
        """The predicted label of each query image, from a labelled support set.

        Images are as :func:`mlhelpers.data.omniglot.preprocess` makes them: ``[1, 28, 28]`` each,
        ink = 1, float in [0, 1] or uint8 in 0..255, stacked to ``[n, 1, 28, 28]``. With a task
        dimension (``[tasks, n, 1, 28, 28]``) many tasks are solved at once.

        Args:
            support_images: ``[n_support, 1, 28, 28]`` or ``[tasks, n_support, 1, 28, 28]``.
            support_labels: ``[n_support]`` or ``[tasks, n_support]`` integers, any values (e.g. 3, 7,
                42): every distinct label is a class; every task must have the same number of classes.
                Any number of ways and shots, shots may differ between classes.
            query_images: ``[n_query, 1, 28, 28]`` or ``[tasks, n_query, 1, 28, 28]``.

        Returns:
            int64 ``[n_query]`` (or ``[tasks, n_query]``): for each query, one of its task's support labels.

        Raises:
            TypeError, ValueError: wrong dtypes, shapes, or mismatched sizes.
        """
        batched = isinstance(support_images, Tensor) and support_images.dim() == 5
        sx = _images(support_images, "support_images")
        qx = _images(query_images, "query_images")
        if sx.dim() != qx.dim():
            raise ValueError(
                f"support_images and query_images must both have a task dimension or neither, got shapes "
                f"{tuple(support_images.shape)} and {tuple(query_images.shape)}"
            )
        if not batched:
            sx, qx = sx[None], qx[None]
        if sx.shape[0] != qx.shape[0]:
            raise ValueError(f"support_images has {sx.shape[0]} tasks but query_images has {qx.shape[0]}")
        if not isinstance(support_labels, Tensor):
            support_labels = torch.as_tensor(support_labels)
        if support_labels.dtype.is_floating_point or support_labels.dtype in (torch.bool, torch.complex64):
            raise TypeError(f"support_labels must be integers, got dtype {support_labels.dtype}")
        sy = support_labels.long().to(sx.device)
        if not batched:
            sy = sy[None]
        if sy.shape != sx.shape[:2]:
            raise ValueError(
                f"support_labels must have shape {tuple(sx.shape[:2]) if batched else (sx.shape[1],)} "
                f"(one label per support image), got {tuple(support_labels.shape)}"
            )
        classes, index = [], []
        for labels in sy:
            values, inverse = torch.unique(labels, return_inverse=True)
            classes.append(values)
            index.append(inverse)
        n_way = {len(c) for c in classes}
        if len(n_way) != 1:
            raise ValueError(f"every task must have the same number of classes, got {sorted(n_way)}")
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            logits = self._solve(sx.to(device), torch.stack(index).to(device), qx.to(device))
        finally:
            self.train(was_training)
        predicted = torch.gather(torch.stack(classes).to(logits.device), 1, logits.argmax(-1))
        return predicted if batched else predicted[0]


def _images(images: Tensor, name: str) -> Tensor:
    """Check ``[..., n, 1, 28, 28]`` images and return them as float32 in [0, 1]."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(images).__name__}")
    if images.dim() not in (4, 5) or tuple(images.shape[-3:]) != (1, 28, 28):
        raise ValueError(
            f"{name} must have shape [n, 1, 28, 28] or [tasks, n, 1, 28, 28] (the output of "
            f"mlhelpers.data.omniglot.preprocess, stacked), got {tuple(images.shape)}"
        )
    if images.shape[-4] == 0:
        raise ValueError(f"{name} holds no images")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.dtype.is_floating_point:
        raise TypeError(f"{name} must be float in [0, 1] or uint8, got dtype {images.dtype}")
    images = images.float()
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} must be finite")
    return images


LR_SCHEDULES = ("step", "cosine")
"""The learning-rate schedules :func:`train_member` knows (see :func:`lr_schedule`)."""


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


def train_member(
    omniglot: LabelledDataset,
    *,
    seed: int,
    steps: int,
    ways: int = 60,
    shots: int = 1,
    queries: int = 3,
    augment: bool = True,
    channels: int = 64,
    lr: float = 1e-3,
    schedule: str = "step",
    distortion: dict[str, float] | None = None,
    split: str = "train",
    log_every: int = 500,
    val_every: int = 1000,
) -> nn.Module:
    """Meta-train one ProtoNet backbone (conv4) with the protocol of Snell et al. 2017; return it in eval mode.

    ``ways``-way ``shots``-shot episodes of ``split`` with rotations as new classes, one episode per
    Adam step at learning rate ``lr``, halved at 1/3 and 2/3 of the run (``schedule="step"``) or
    decayed to 0 along a half cosine (``schedule="cosine"``). With ``augment`` every image gets its
    own small random affine distortion (:class:`~mlhelpers.samplers.augmented.AugmentedSampler`), whose
    strength ``distortion`` sets (keyword arguments of
    :func:`~mlhelpers.data.augment.random_affine`, e.g. ``{"max_rotate": 15}``; None: its defaults).
    Every ``val_every`` steps (0: never) it prints the within-alphabet 20-way 1-shot accuracy on 300
    meta-validation episodes; printing and validation do not change the result.
    """
    if distortion and not augment:
        raise ValueError(f"distortion={distortion} sets the strength of augmentation, but augment=False")
    seed_everything(seed)
    backbone = conv4(hidden_channels=channels, norm="batch")
    learner = ProtoNet(backbone)
    sampler = EpisodicSampler(omniglot, ways, shots, queries, split, rotations=True, seed=seed + 1000)
    if augment:
        sampler = AugmentedSampler(sampler, seed=seed + 2000, **(distortion or {}))
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    scheduler = lr_schedule(optimizer, steps, schedule)
    learner.train()
    start, recent = time.perf_counter(), []
    for step in range(1, steps + 1):
        loss = learner.meta_loss(sampler.sample(1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        recent.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps):
            print(f"  seed {seed} step {step}/{steps}: loss {sum(recent) / len(recent):.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            recent = []
        if val_every and step % val_every == 0:
            val = within_alphabet(learner, omniglot, "val", 300, seed=1)
            print(f"  seed {seed} step {step}: val within-alphabet 20-way 1-shot {val}", flush=True)
            learner.train()
    return backbone.eval()


def within_alphabet(learner: MetaLearner, omniglot: LabelledDataset, split: str, episodes: int, seed: int) -> EvalResult:
    """Accuracy on Lake et al.'s task: 20-way 1-shot, all 20 classes from one alphabet, no rotations."""
    return evaluate(learner, EpisodicSampler(omniglot, 20, 1, 1, split, within_group=True, seed=seed), episodes)


def train_ensemble(omniglot: LabelledDataset, config: dict, first_member: int = 0, **kwargs) -> EnsembleProtoNet:
    """Train ``config["members"]`` backbones with :func:`train_member` (member ``i`` seeded ``10 * i``).

    ``config`` holds ``steps``, ``ways``, ``shots``, ``queries``, ``augment``, ``channels``,
    ``members`` and ``tta_shift``, and optionally ``schedule`` and ``distortion`` (defaults of
    :func:`train_member` when absent), as stored in a saved learner's ``config``; ``kwargs`` go to
    :func:`train_member` (logging only). The CPU seconds of each member are added to the returned
    learner's ``config["cpu_seconds"]`` (their sum).
    """
    members, cpu = [], []
    for i in range(first_member, first_member + config["members"]):
        start = time.process_time()
        members.append(train_member(omniglot, seed=10 * i, steps=config["steps"], ways=config["ways"],
                                    shots=config["shots"], queries=config["queries"], augment=config["augment"],
                                    channels=config["channels"],
                                    **{k: config[k] for k in ("schedule", "distortion") if k in config}, **kwargs))
        cpu.append(time.process_time() - start)
    learner = EnsembleProtoNet(members, tta_shift=config["tta_shift"]).eval()
    learner.config = dict(config, cpu_seconds=sum(cpu))
    return learner


def build(config: dict) -> EnsembleProtoNet:
    """An untrained learner of the shape a saved ``config`` describes."""
    members = [conv4(hidden_channels=config["channels"], norm="batch") for _ in range(config["members"])]
    return EnsembleProtoNet(members, tta_shift=config["tta_shift"])


def save(learner: EnsembleProtoNet, path: str, config: dict) -> None:
    """Write ``learner``'s weights (float16, to keep the file small) with its ``config``."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in learner.state_dict().items()}
    torch.save({"config": config, "state": state}, path)


def load(name: str = "protonet-omniglot", device: torch.device | str = "cpu",
         transductive_steps: int = 0) -> EnsembleProtoNet:
    """A ready, pretrained learner in eval mode, from weights shipped in the package (no network).

    Args:
        name: one of :data:`PRETRAINED` (``"protonet-omniglot"``).
        device: where to put it.
        transductive_steps: refine the prototypes with each task's query images
            (:class:`EnsembleProtoNet`); 0, the default, keeps the learner inductive.

    Raises:
        ValueError: unknown ``name`` (the message lists the available ones).
    """
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained learner {name!r}; available: {sorted(PRETRAINED)}")
    data = files("mlhelpers").joinpath("assets", PRETRAINED[name].file).read_bytes()
    learner = load_file(io.BytesIO(data)).to(device)
    learner.transductive_steps = check_steps("transductive_steps", transductive_steps)
    return learner


def load_file(file: str | io.BytesIO) -> EnsembleProtoNet:
    """The learner :func:`save` wrote to ``file`` (a path or a file object), on the CPU, in eval mode."""
    saved = torch.load(file, map_location="cpu", weights_only=True)
    learner = build(saved["config"])
    learner.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in saved["state"].items()})
    learner.config = dict(saved["config"])
    return learner.eval()
