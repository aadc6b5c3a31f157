"""Levers on the shipped ProtoNet recipe, measured on the meta-validation alphabets only (issue 21):
adds one row per run to notebooks/results/omniglot_levers.json.

Each run trains one network with ``mlhelpers.recipe.train_member`` in the recipe of the shipped
members, read from the shipped learner's ``config`` (steps, ways, shots, queries, channels,
schedule, distortions; member seed 0), changing one lever, and reports within-alphabet 20-way 1-shot (Lake
et al.'s task) and 5-way 1-shot accuracy on 600 meta-validation episodes, with the CPU seconds the
training took. The lever so far:

- ``--size``: the side of the input images. The shipped data are 28 x 28 (area average of the
  105 x 105 drawings); other sizes are rebuilt here from the two minimal-set zips (by default in
  ``../shared/data/omniglot``, as ``scripts/build_omniglot.py`` reads them) with the same area
  average. At ``--size 28`` the rebuilt images must equal the shipped ones (checked), so only the
  size differs between rows.

Run from the repository root, on one thread::

    OMP_NUM_THREADS=1 python scripts/omniglot_levers.py --size 28
    OMP_NUM_THREADS=1 python scripts/omniglot_levers.py --size 56

``--steps 20 --episodes 20 --out /tmp/x.json`` is a smoke test.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import platform
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
from mlhelpers.learners import ProtoNet
from mlhelpers.recipe import VAL_SEED, train_member, within_alphabet
from mlhelpers.samplers.episodic import EpisodicSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_omniglot import DEFAULT_ZIPS, DRAWERS, read_zips  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--steps", type=int, help="training steps (default: the shipped members')")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("notebooks/results/omniglot_levers.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = pretrained.load("protonet-omniglot").config
    steps = args.steps or recipe["steps"]
    omniglot = omniglot_at(args.size)
    start = time.process_time()
    backbone = train_member(omniglot, seed=0, steps=steps, n_way=recipe["ways"], k_shot=recipe["shots"],
                            q_query=recipe["queries"], augment=True, hidden_channels=recipe["channels"],
                            schedule=recipe["schedule"], distortion=recipe["distortion"], val_every=None)
    cpu_seconds = time.process_time() - start
    learner = ProtoNet(backbone).eval()
    within = within_alphabet(learner, omniglot, "val", args.episodes, seed=VAL_SEED)
    five = evaluate(learner, EpisodicSampler(omniglot, 5, 1, 1, "val", seed=VAL_SEED), args.episodes)
    row = {"lever": "size", "size": args.size, "steps": steps, "cpu_seconds": cpu_seconds,
           "val_within_alphabet_20way_1shot": {"mean": within.mean, "ci95": within.ci95},
           "val_5way_1shot": {"mean": five.mean, "ci95": five.ci95}, "episodes": args.episodes,
           "command": f"OMP_NUM_THREADS=1 python scripts/omniglot_levers.py --size {args.size}"
                      + ("" if args.steps is None else f" --steps {args.steps}"),
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    rows = [r for r in rows if r["command"] != row["command"]] + [row]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"size {args.size}: val within-alphabet 20-way 1-shot {within}, 5-way 1-shot {five}; "
          f"{cpu_seconds:.0f} CPU s of training")


if __name__ == "__main__":
    main()
