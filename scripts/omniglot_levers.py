"""Levers on the shipped ProtoNet recipe, measured on the meta-validation alphabets only (issue 21):
adds one row per run to notebooks/results/omniglot_levers.json.

Each run trains one network with ``mlhelpers.recipe.train_member`` in the recipe of the shipped
members, read from the shipped learner's ``config`` (steps, ways, shots, queries, channels,
schedule, distortions; member seed 0), changing one lever, and reports within-alphabet 20-way 1-shot (Lake
et al.'s task) and 5-way 1-shot accuracy on 600 meta-validation episodes, with the CPU seconds the
training took and the CPU it ran on (compare CPU seconds only between rows of one CPU; a rerun on
another CPU adds a row rather than replacing one). The levers (each flag left at its default is the
shipped recipe):

- ``--size``: the side of the input images. The shipped data are 28 x 28 (area average of the
  105 x 105 drawings); other sizes are rebuilt here from the two minimal-set zips (by default in
  ``../shared/data/omniglot``, as ``scripts/build_omniglot.py`` reads them) with the same area
  average. At ``--size 28`` the rebuilt images must equal the shipped ones (checked), so only the
  size differs between rows.
- ``--steps``: a longer (or shorter) schedule; the cosine decay stretches with it.
- ``--channels``: a wider (or narrower) conv4 backbone.
- ``--resnet12-width``: a ResNet-12 backbone (``mlhelpers.models.resnet12``) instead of the conv4,
  with block widths of this many channels times 1, 2.5, 5 and 10 (64 is the standard ResNet-12 of
  current few-shot work; 32 took about 4x the conv4's time per step at 28 x 28 in a smoke run).
- ``--distortion-scale``: every affine distortion of the shipped augmentation scaled by this factor
  (0: no augmentation).
- ``--stroke-change``: stroke-level augmentation on top of the affine one: strokes thickened or
  thinned by up to this fraction of a pixel (``mlhelpers.data.augment.random_stroke_width``).
- ``--elastic-alpha``: elastic distortion on top (Simard et al. 2003; ``random_elastic``, smoothing
  sigma 4 pixels, displacements scaled by this many pixels).
- ``--pretrain-steps``: before meta-training, train the backbone as a classifier of all meta-training
  classes (rotations as classes; ``mlhelpers.pretraining.pretrain_classifier``, batches of 64) for
  this many steps, as Chen et al. (2019) and Tian et al. (2020) do; its CPU time counts.
  ``--pretrain-augment`` distorts the pre-training examples as meta-training distorts its episodes
  (the recipe's affine distortion, scaled by ``--distortion-scale``).
- ``--train-alphabets``: meta-train on the first N of the four meta-training alphabets only (in
  the split's order: Japanese (katakana), Korean, Latin, Tagalog), fewer characters to learn from.
  Not a lever to adopt: it measures how accuracy falls with less training data, the trend that
  more background alphabets would continue (or not).
- ``--distill``: train the network on the shipped ensemble's query probabilities instead of the
  labels (``mlhelpers.distillation``; the teacher is the ensemble without its test-time shifts, 3
  forward passes per image rather than 15). ``--teacher-shifts`` keeps the teacher's test-time
  shifts (the shipped learner itself: 15 forward passes per image, five times the teacher's
  3). The row also gives the time to classify one
  within-alphabet 20-way episode with the distilled network and with the shipped learner, measured
  back to back on the same 100 episodes.

Run from the repository root, on one thread::

    OMP_NUM_THREADS=1 python scripts/omniglot_levers.py --size 28
    OMP_NUM_THREADS=1 python scripts/omniglot_levers.py --size 56
    OMP_NUM_THREADS=1 python scripts/omniglot_levers.py --size 28 --steps 12000

``--steps 20 --episodes 20 --out /tmp/x.json`` is a smoke test.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mlhelpers import pretrained
from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.data.omniglot import _ink, load_omniglot
from mlhelpers.evaluation import evaluate
from mlhelpers.learners import EnsembleProtoNet, ProtoNet
from mlhelpers.models import conv4, resnet12
from mlhelpers.pretraining import pretrain_classifier
from mlhelpers.recipe import VAL_SEED, train_member, within_alphabet, within_sampler
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.stepcost import cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_omniglot import DEFAULT_ZIPS, DRAWERS, read_zips  # noqa: E402

SHIPPED_SIZE = 28
"""The side of the shipped images (``load_omniglot``)."""


def rebuilt_images(shipped: LabelledDataset, size: int, zips=DEFAULT_ZIPS) -> torch.Tensor:
    """``[4840, 1, size, size]``: the minimal-set drawings in ``shipped``'s order, area-averaged to ``size``."""
    pngs = read_zips(zips)
    images = torch.empty(len(shipped.labels), 1, size, size)
    for label, name in enumerate(shipped.class_names):
        alphabet, character = name.split("/")
        for drawer in range(1, DRAWERS + 1):
            with Image.open(io.BytesIO(pngs[alphabet, character, drawer])) as png:
                ink = Image.fromarray(np.ascontiguousarray(_ink(png, name), dtype=np.float32))
            small = np.clip(np.asarray(ink.resize((size, size), Image.Resampling.BOX), dtype=np.float32), 0, 1)
            images[label * DRAWERS + drawer - 1, 0] = torch.from_numpy(np.round(small * 255) / 255)
    return images


def omniglot_at(size: int) -> LabelledDataset:
    """The shipped Omniglot (same order, labels and splits) with its images rebuilt at ``size x size``."""
    shipped = load_omniglot()
    images = rebuilt_images(shipped, size)
    if size == shipped.images.shape[-1] and not torch.allclose(images, shipped.images, atol=0.5 / 255):
        raise RuntimeError("images rebuilt from the zips differ from the shipped ones: not the shipped data")
    return dataclasses.replace(shipped, images=images)


def fewer_training_alphabets(omniglot: LabelledDataset, alphabets: int) -> LabelledDataset:
    """``omniglot`` with its ``"train"`` split cut to the classes of its first ``alphabets`` alphabets."""
    train = omniglot.splits["train"]
    groups = omniglot.class_groups[train]
    order = list(dict.fromkeys(groups.tolist()))  # alphabets in the split's order
    if not 1 <= alphabets <= len(order):
        raise ValueError(f"--train-alphabets must be between 1 and {len(order)}, got {alphabets}")
    kept = train[torch.isin(groups, torch.tensor(order[:alphabets]))]
    return dataclasses.replace(omniglot, splits={**omniglot.splits, "train": kept})


def lever_flags(args: argparse.Namespace, recipe: dict) -> list[str]:
    """The command-line flags of the levers ``args`` moves away from the shipped ``recipe``."""
    flags = [f"--size {args.size}"]
    if args.steps not in (None, recipe["steps"]):
        flags.append(f"--steps {args.steps}")
    if args.channels not in (None, recipe["channels"]):
        flags.append(f"--channels {args.channels}")
    if args.resnet12_width:
        flags.append(f"--resnet12-width {args.resnet12_width}")
    if args.distortion_scale != 1:
        flags.append(f"--distortion-scale {args.distortion_scale:g}")
    if args.stroke_change:
        flags.append(f"--stroke-change {args.stroke_change:g}")
    if args.elastic_alpha:
        flags.append(f"--elastic-alpha {args.elastic_alpha:g}")
    if args.pretrain_steps:
        flags.append(f"--pretrain-steps {args.pretrain_steps}")
    if args.pretrain_augment:
        flags.append("--pretrain-augment")
    if args.train_alphabets is not None:
        flags.append(f"--train-alphabets {args.train_alphabets}")
    if args.distill:
        flags.append("--distill")
    if args.teacher_shifts:
        flags.append("--teacher-shifts")
    return flags


def seconds_per_episode(learner: torch.nn.Module, omniglot: LabelledDataset, episodes: int = 100) -> float:
    """Wall seconds to classify one within-alphabet 20-way 1-shot meta-validation episode."""
    tasks = within_sampler(omniglot, "val", VAL_SEED).sample(episodes)
    with torch.no_grad():
        learner(tasks[:1])  # warm-up
        start = time.perf_counter()
        for i in range(episodes):
            learner(tasks[i:i + 1])
    return (time.perf_counter() - start) / episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--steps", type=int, help="training steps (default: the shipped members')")
    parser.add_argument("--channels", type=int, help="conv4 width (default: the shipped members')")
    parser.add_argument("--resnet12-width", type=int, help="a ResNet-12 of widths W, 2.5W, 5W, 10W, not the conv4")
    parser.add_argument("--distortion-scale", type=float, default=1.0)
    parser.add_argument("--stroke-change", type=float, default=0.0)
    parser.add_argument("--elastic-alpha", type=float, default=0.0)
    parser.add_argument("--pretrain-steps", type=int, default=0)
    parser.add_argument("--pretrain-augment", action="store_true", help="distort the pre-training examples too")
    parser.add_argument("--train-alphabets", type=int, help="meta-train on this many of the 4 training alphabets")
    parser.add_argument("--distill", action="store_true")
    parser.add_argument("--teacher-shifts", action="store_true", help="distil from the ensemble with its shifted views")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("notebooks/results/omniglot_levers.json"))
    args = parser.parse_args()
    if min(args.distortion_scale, args.stroke_change, args.elastic_alpha, args.pretrain_steps) < 0:
        parser.error("--distortion-scale, --stroke-change, --elastic-alpha and --pretrain-steps must be at least 0")
    if args.pretrain_augment and not args.pretrain_steps:
        parser.error("--pretrain-augment needs --pretrain-steps")
    if args.teacher_shifts and not args.distill:
        parser.error("--teacher-shifts needs --distill")
    if args.resnet12_width is not None and (args.resnet12_width < 1 or args.channels or args.pretrain_steps):
        parser.error("--resnet12-width must be at least 1, and goes without --channels and --pretrain-steps")
    torch.set_num_threads(1)
    shipped = pretrained.load("protonet-omniglot")
    recipe = shipped.config
    steps = args.steps or recipe["steps"]
    channels = args.channels or recipe["channels"]
    distortion = {name: args.distortion_scale * value for name, value in recipe["distortion"].items()}
    if args.stroke_change:
        distortion["max_stroke_change"] = args.stroke_change
    if args.elastic_alpha:
        distortion["elastic_alpha"] = args.elastic_alpha
    augment = any(distortion.values())
    flags = lever_flags(args, recipe)
    omniglot = omniglot_at(args.size)
    if args.train_alphabets is not None:
        omniglot = fewer_training_alphabets(omniglot, args.train_alphabets)
    train_classes = omniglot.splits["train"]
    start = time.process_time()
    backbone = None
    if args.resnet12_width:
        torch.manual_seed(0)
        w = args.resnet12_width
        backbone = resnet12(widths=(w, round(2.5 * w), 5 * w, 10 * w))
    if args.pretrain_steps:
        torch.manual_seed(0)
        backbone = pretrain_classifier(conv4(hidden_channels=channels, norm="batch"), omniglot, "train",
                                       steps=args.pretrain_steps, seed=0,
                                       distortion=distortion if args.pretrain_augment and augment else None)
    teacher = (shipped if args.teacher_shifts else EnsembleProtoNet(list(shipped.backbones))) if args.distill else None
    backbone = train_member(omniglot, seed=0, steps=steps, n_way=recipe["ways"], k_shot=recipe["shots"],
                            q_query=recipe["queries"], augment=augment, hidden_channels=channels,
                            schedule=recipe["schedule"], distortion=distortion if augment else None,
                            val_every=None, backbone=backbone,
                            teacher=teacher)
    cpu_seconds = time.process_time() - start
    learner = ProtoNet(backbone).eval()
    within = within_alphabet(learner, omniglot, "val", args.episodes, seed=VAL_SEED)
    five = evaluate(learner, EpisodicSampler(omniglot, 5, 1, 1, "val", seed=VAL_SEED), args.episodes)
    moved = [flag.split()[0][2:] for flag in flags if flag != f"--size {SHIPPED_SIZE}"]
    row = {"lever": ", ".join(moved) or "none", "size": args.size,
           "steps": steps, "channels": None if args.resnet12_width else channels,
           "resnet12_width": args.resnet12_width,
           "distortion_scale": args.distortion_scale,
           "stroke_change": args.stroke_change, "elastic_alpha": args.elastic_alpha,
           "pretrain_steps": args.pretrain_steps, "pretrain_augment": args.pretrain_augment,
           "cpu_seconds": cpu_seconds,
           "train_characters": len(train_classes),
           "train_alphabets": sorted({omniglot.class_names[c].split("/")[0] for c in train_classes.tolist()}),
           "val_within_alphabet_20way_1shot": {"mean": within.mean, "ci95": within.ci95},
           "val_5way_1shot": {"mean": five.mean, "ci95": five.ci95}, "episodes": args.episodes,
           "command": "OMP_NUM_THREADS=1 python scripts/omniglot_levers.py " + " ".join(flags),
           "cpu": cpu_model(), "torch": torch.__version__}
    if args.distill:  # what distillation is for: speed
        row["episode_seconds"] = seconds_per_episode(learner, omniglot)
        row["shipped_episode_seconds"] = seconds_per_episode(shipped.eval(), omniglot)
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    rows = [r for r in rows if (r["command"], r["cpu"]) != (row["command"], row["cpu"])] + [row]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{' '.join(flags)}: val within-alphabet 20-way 1-shot {within}, 5-way 1-shot {five}; "
          f"{cpu_seconds:.0f} CPU s of training")


if __name__ == "__main__":
    main()
