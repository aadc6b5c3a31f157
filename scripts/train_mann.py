"""Chapter 5's memory-augmented network experiment at its full budget: writes notebooks/results/mann_omniglot.json
(learning curves, accuracy by instance on the meta-test alphabets) and mann_omniglot.pt (the trained MANN).

Santoro et al. (2016)'s episodes at a CPU scale: 5 Omniglot classes, labels shuffled per episode,
10 drawings of each in a random order (a stream of 50 steps), each drawing replaced by the frozen
features of the shipped ProtoNet (``pretrained.load("protonet-omniglot-plain")``, standardised on
the meta-training alphabets). Three learners, trained on the same episodes with the same budget and
the loss at every step of the stream: the MANN, an LSTM without external memory
(``MANN(external_memory=False)``) and the chapter's causal transformer (interleaved layout). Run
from the repository root, on one thread (the committed run took about 22 minutes on a shared 2-core machine)::

    OMP_NUM_THREADS=1 python scripts/train_mann.py

``--steps 20 --eval-episodes 20 --out /tmp/x`` is a smoke test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mlhelpers import pretrained
from mlhelpers.data.omniglot import load_omniglot
from mlhelpers.evaluation import mean_confidence_interval
from mlhelpers.learners import MANN, InContextLearner, accuracy_by_instance
from mlhelpers.samplers.label_streams import LabelStreams, rotated_features

INSTANCES = (1, 2, 3, 5, 10)


def make_learners(n_way: int, features: int, length: int) -> dict:
    """The three learners of Chapter 5's table (the chapter builds the same)."""
    return {
        "MANN": lambda: MANN(features, n_way, controller=128, slots=64, width=32, heads=1, add_vector=True,
                             key_strength=True),
        "LSTM (no external memory)": lambda: MANN(features, n_way, controller=128, external_memory=False),
        "transformer (interleaved)": lambda: InContextLearner(features, n_way=n_way, d_model=64, n_layers=2, n_heads=4,
                                                              max_len=2 * length, loss_on_all_positions=True),
    }


def stream_logits(learner, task) -> torch.Tensor:
    """``[tasks, T, n_way]``: the prediction at every step of the stream, from the steps before it."""
    if isinstance(learner, MANN):
        return learner.stream(task.support_x, task.support_y)
    return learner.prefix_predictions(task)


def by_instance(learner, task) -> torch.Tensor:
    """``[tasks, 10]`` accuracy on the 1st .. 10th presentation of a class, per episode."""
    learner.eval()
    with torch.no_grad():
        acc = accuracy_by_instance(stream_logits(learner, task), task.support_y, max_instance=10)
    learner.train()
    return acc


def train(learner, sampler, steps: int, batch: int, lr: float, val_task, every: int, desc: str) -> dict:
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    curve, losses = [], []
    start = time.perf_counter()
    for step in (bar := tqdm(range(1, steps + 1), desc=desc, mininterval=10)):
        task = sampler.sample(batch)
        loss = F.cross_entropy(stream_logits(learner, task).flatten(0, 1), task.support_y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(learner.parameters(), 10.0)
        optimizer.step()
        losses.append(loss.item())
        if step % every == 0 or step == steps:
            acc = by_instance(learner, val_task).nanmean(dim=0)
            curve.append({"step": step, "loss": sum(losses[-every:]) / len(losses[-every:]),
                          "val": [float(acc[i - 1]) for i in INSTANCES]})
            bar.set_postfix_str(f"val 2nd {100 * acc[1]:.1f}% 10th {100 * acc[9]:.1f}%")
    return {"curve": curve, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--val-episodes", type=int, default=200)
    parser.add_argument("--eval-episodes", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="notebooks/results/mann_omniglot")
    args = parser.parse_args()
    torch.set_num_threads(1)

    omniglot = load_omniglot()
    table = rotated_features(omniglot, pretrained.load("protonet-omniglot-plain").backbones[0])

    def streams(split: str, seed: int) -> LabelStreams:
        return LabelStreams(table, omniglot.labels, omniglot.classes_of(split), n_way=5, per_class=10,
                            turns=4 if split == "train" else 1, seed=seed)

    val_task = streams("val", args.seed + 100).sample(args.val_episodes)
    test_task = streams("test", args.seed + 200).sample(args.eval_episodes)
    results = {"command": "OMP_NUM_THREADS=1 python scripts/train_mann.py", "args": vars(args),
               "instances": list(INSTANCES), "learners": {}}
    trained = {}
    for name, make in make_learners(5, table.shape[-1], 50).items():
        torch.manual_seed(args.seed)
        learner = make()
        record = train(learner, streams("train", args.seed + 1), args.steps, args.batch, args.lr, val_task,
                       args.every, name)  # the same episodes for every learner
        acc = by_instance(learner, test_task)  # [episodes, 10]
        record["test"] = [list(mean_confidence_interval(acc[:, i - 1][~acc[:, i - 1].isnan()]))
                          for i in INSTANCES]
        record["parameters"] = sum(p.numel() for p in learner.parameters())
        results["learners"][name] = record
        trained[name] = learner
        print(name, {i: f"{100 * m:.1f} ± {100 * c:.1f}" for i, (m, c) in zip(INSTANCES, record["test"])}, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    torch.save({k: v.half() for k, v in trained["MANN"].state_dict().items()}, out.with_suffix(".pt"))
    print("wrote", out.with_suffix(".json"), out.with_suffix(".pt"))


if __name__ == "__main__":
    main()
