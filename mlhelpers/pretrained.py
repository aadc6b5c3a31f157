"""Pretrained few-shot learners shipped with the package: no training, no download. Chapter 4.

::

    from mlhelpers import pretrained
    learner = pretrained.load("protonet-omniglot")
    labels = learner.predict_labels(support_images, support_labels, query_images)

:data:`PRETRAINED` says what each learner is, how it scores and the command that trained it (on
one CPU thread, rerunning it reproduces the weights bit for bit); Chapter 4 compares the variants
and measures them. ``load(transductive_steps=5)`` refines the prototypes with each task's
unlabelled queries (soft k-means, Ren et al. 2018): each prediction then depends on the other
queries of its task. The learner is :class:`mlhelpers.learners.EnsembleProtoNet`; the recipe is
:mod:`mlhelpers.recipe`. Loading imports neither the recipe nor the training loop.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from importlib.resources import files

import torch

from mlhelpers.checkpoint import CHECKSUM_KEY, CorruptCheckpointError, content_sha256, read_verified
from mlhelpers.learners.ensemble import EnsembleProtoNet
from mlhelpers.models import conv4
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


ASSET_SHA256: dict[str, str] = {
    "protonet_omniglot.pt": "6c5c15aa58a12d99d1d355c8f9f4f9e73162df157cbf547a437dfe139eb5bb43",
    "protonet_omniglot_plain.pt": "6e0d65467b0982f8b1472100b832be55411c67c2ce289c2d98e1c689dccc1a0e",
}
"""sha256 of each shipped weights file, checked by :func:`load` before the weights are read. A file
rebuilt with a :data:`PRETRAINED` command needs its new sha256 here (``sha256sum mlhelpers/assets/*.pt``)."""


def build(config: dict) -> EnsembleProtoNet:
    """An untrained learner of the shape a saved ``config`` describes."""
    members = [conv4(hidden_channels=config["channels"], norm="batch") for _ in range(config["members"])]
    return EnsembleProtoNet(members, tta_shift=config["tta_shift"])


def save(learner: EnsembleProtoNet, path: str, config: dict) -> None:
    """Write ``learner``'s weights (float16, to keep the file small) with its ``config`` and a content
    checksum (:func:`mlhelpers.checkpoint.content_sha256`) that :func:`load_file` verifies."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in learner.state_dict().items()}
    content = {"config": config, "state": state}
    torch.save({**content, CHECKSUM_KEY: content_sha256(content)}, path)


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
        CorruptCheckpointError: the shipped file's sha256 is not the one in :data:`ASSET_SHA256`.
    """
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained learner {name!r}; available: {sorted(PRETRAINED)}")
    file = PRETRAINED[name].file
    data = files("mlhelpers").joinpath("assets", file).read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != ASSET_SHA256[file]:
        raise CorruptCheckpointError(
            f"shipped weights file mlhelpers/assets/{file} is damaged or was changed: its sha256 is {found}, "
            f"expected {ASSET_SHA256[file]}. Reinstall mlhelpers (pip install --force-reinstall) or restore the "
            "file from the repository; if you rebuilt it with its command, put its new sha256 in ASSET_SHA256"
        )
    learner = load_file(io.BytesIO(data)).to(device)
    learner.transductive_steps = check_steps("transductive_steps", transductive_steps)
    return learner


def load_file(file: str | io.BytesIO) -> EnsembleProtoNet:
    """The learner :func:`save` wrote to ``file`` (a path or a file object), on the CPU, in eval mode.

    A file that cannot be read or fails its content checksum raises
    :class:`~mlhelpers.checkpoint.CorruptCheckpointError` (files saved before the checksum load unchecked).
    """
    if isinstance(file, (str, os.PathLike)) and not os.path.isfile(file):
        raise FileNotFoundError(f"no weights file at file={os.fspath(file)!r}")
    saved = read_verified(file, what="weights file", advice="save the learner again, or restore the file from a copy")
    if not isinstance(saved.get("config"), dict) or not isinstance(saved.get("state"), dict):
        raise ValueError(f"weights file {file!r} holds keys {sorted(saved)}, not the 'config' and 'state' "
                         "that pretrained.save writes")
    learner = build(saved["config"])
    learner.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in saved["state"].items()})
    learner.config = dict(saved["config"])
    return learner.eval()
