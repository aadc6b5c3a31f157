"""Chapter 3's explanations of the FOMAML and Reptile gaps, put to experiment: writes
notebooks/results/gradient_learner_protocols.json.

Chapter 3 trains five gradient learners on 5-way 1-shot Omniglot at one budget (conv4 with 32
channels and per-task batch statistics, 1,500 meta-steps of 8 tasks, Adam 1e-3, inner step 0.4) and
finds first-order MAML and Reptile far behind MAML. It offers three explanations, tested here on the
*meta-validation* alphabets (the test alphabets are scored once, for the configuration each family
picks on validation):

1. *FOMAML drops a Hessian term that is large at a large inner step.* Train MAML and FOMAML at
   ``alpha`` = 0.4 and 0.1 and compare the gaps; and measure the dropped term directly: the cosine
   between the first- and second-order meta-gradients, and the first-order one's relative error, at
   the random initialisation and at each trained MAML's weights.
2. *Reptile is run with MAML's inner loop, not its own.* Train Reptile a step closer to its own
   protocol (adapt on the query examples too: 6 drawings per class, three full-batch SGD steps at
   the chapter's step; the README's transductive command samples 15 drawings and takes 3 Adam steps
   on mini-batches of 25) with its outer
   update (plain interpolation, SGD with step 1 annealed linearly to 0, instead of Adam on the
   Reptile direction), beside the chapter's setting. And Reptile with the paper's own 1-shot 5-way
   Omniglot protocol (the README's command): 12 drawings per class, 12 steps of Adam (``beta1 = 0``,
   step 0.00044) on mini-batches of 5, 3 tasks per meta-step, the same interpolation; at test 86
   Adam steps on the 5 support drawings. It runs 6,000 meta-steps (the paper: 200,000), which
   adapts on as many drawings in all as the other Reptile runs' 1,500 meta-steps of 8 tasks.
3. *The rest of Reptile's gap is its budget* (the paper trains 33x as many tasks): the paper's
   protocol again at a quarter and at half of that run's meta-steps, for the trend with budget.

Every other run keeps the chapter's episodes, model, meta-batch and number of meta-steps. Run from
the repository root, on one thread::

    OMP_NUM_THREADS=1 python scripts/gradient_learner_protocols.py

``--add`` trains only the configurations the output file does not hold yet and keeps the rest (a
family's test score is redone if a new configuration now wins its validation).

``--steps 10 --val-episodes 10 --test-episodes 10 --out /tmp/x.json`` is a smoke test.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mlhelpers import seed_everything
from mlhelpers.data.omniglot import load_omniglot
from mlhelpers.evaluation import evaluate
from mlhelpers.gradient_recipe import CHANNELS, META_BATCH, Q_QUERY, TEST_STEPS, make_gradient_learner, train_sampler
from mlhelpers.learners import MAML
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.training import meta_train

N_WAY, K_SHOT = 5, 1
META_BATCH_SIZE = META_BATCH[N_WAY]

PAPER_REPTILE_NAME = "Reptile, the paper's protocol (12 Adam steps on batches of 5, 6,000 steps of 3 tasks)"
# name -> (family: the learner make_gradient_learner builds, its settings (``kind`` is only recorded),
#          outer optimiser: "adam" or "reptile-sgd"; PAPER_REPTILE changes the episodes too)
CONFIGS = {
    "MAML, alpha 0.4 (chapter)": ("MAML", dict(kind="maml", inner_lr=0.4), "adam"),
    "FOMAML, alpha 0.4 (chapter)": ("FOMAML", dict(kind="fomaml", inner_lr=0.4), "adam"),
    "MAML, alpha 0.1": ("MAML", dict(kind="maml", inner_lr=0.1), "adam"),
    "FOMAML, alpha 0.1": ("FOMAML", dict(kind="fomaml", inner_lr=0.1), "adam"),
    "Reptile, 3 support steps, Adam outer (chapter)": (
        "Reptile", dict(kind="reptile", inner_lr=0.4, inner_steps=3, use_query=False), "adam"),
    "Reptile, 3 steps on support + query, SGD outer 1 -> 0": (
        "Reptile", dict(kind="reptile", inner_lr=0.4, inner_steps=3, use_query=True), "reptile-sgd"),
    PAPER_REPTILE_NAME: (
        "Reptile", dict(kind="reptile", inner_lr=0.00044, inner_steps=12, use_query=True, inner_optimizer="adam",
                        inner_batch_size=5, eval_inner_steps=86), "reptile-sgd"),
}
PAPER_REPTILE = {PAPER_REPTILE_NAME: dict(drawings_per_class=12, meta_batch=3, steps_factor=4)}
"""Episodes and budget of the paper's Reptile run: 12 drawings per class (1 support + 11 query, all
adapted on), 3 tasks per meta-step, 4x the meta-steps of the others (as many drawings adapted on)."""
# The budget test: the paper's Reptile at a quarter and half of that run's meta-steps (added last,
# so every earlier configuration keeps its seed).
for factor in (1, 2):
    name = f"Reptile budget: the paper's protocol at {1500 * factor:,} steps of 3 tasks"
    CONFIGS[name] = CONFIGS[PAPER_REPTILE_NAME]
    PAPER_REPTILE[name] = {**PAPER_REPTILE[PAPER_REPTILE_NAME], "steps_factor": factor}


def outer_optimiser(learner, kind: str, steps: int):
    """Adam 1e-3 (the chapter), or Reptile's own update: SGD on theta - mean(phi), step 1 annealed to 0."""
    if kind == "adam":
        return torch.optim.Adam(learner.parameters(), lr=1e-3), None
    sgd = torch.optim.SGD(learner.parameters(), lr=1.0)
    return sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda step: 1 - step / steps)


def window_means(values: list[float], window: int) -> list[float]:
    return [sum(values[i:i + window]) / len(values[i:i + window]) for i in range(0, len(values), window)]


def meta_gradient(learner, task) -> torch.Tensor:
    learner.zero_grad(set_to_none=True)
    learner.meta_loss(task).backward()
    grads = torch.cat([p.grad.flatten() for p in learner.parameters()])
    learner.zero_grad(set_to_none=True)
    return grads


def dropped_term(model, inner_lr: float, tasks: list) -> dict:
    """How far FOMAML's meta-gradient is from MAML's at ``model``'s weights, over the given meta-batches."""
    second = MAML(model, inner_lr=inner_lr, inner_steps=1, strategy="loop")
    first = MAML(model, inner_lr=inner_lr, inner_steps=1, first_order=True, strategy="loop")
    cosines, errors = [], []
    for task in tasks:
        g2, g1 = meta_gradient(second, task), meta_gradient(first, task)
        cosines.append(float(torch.nn.functional.cosine_similarity(g1, g2, dim=0)))
        errors.append(float((g1 - g2).norm() / g2.norm()))
    return {"cosine": cosines, "relative_error": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--val-episodes", type=int, default=300)
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--gradient-batches", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("notebooks/results/gradient_learner_protocols.json"))
    parser.add_argument("--add", action="store_true", help="train only the configurations --out does not hold")
    args = parser.parse_args()
    torch.set_num_threads(1)
    omniglot = load_omniglot()
    started = time.perf_counter()
    earlier = json.loads(args.out.read_text()) if args.add and args.out.exists() else None
    runs, models = dict(earlier["runs"]) if earlier else {}, {}
    for i, (name, (family, build, outer)) in enumerate(CONFIGS.items()):
        if name in runs:
            continue
        seed_everything(100 + i)
        options = {k: v for k, v in build.items() if k != "kind"}
        learner = make_gradient_learner(family, N_WAY, **options)
        episodes = PAPER_REPTILE.get(name, dict(drawings_per_class=K_SHOT + Q_QUERY, meta_batch=META_BATCH_SIZE,
                                                steps_factor=1))
        steps = args.steps * episodes["steps_factor"]
        optimizer, scheduler = outer_optimiser(learner, outer, steps)
        # the chapter's 5-way episodes (seed 205), with more query drawings for the paper's Reptile
        train = EpisodicSampler(omniglot, N_WAY, K_SHOT, episodes["drawings_per_class"] - K_SHOT, "train",
                                rotations=True, seed=205)
        start = time.perf_counter()
        history = meta_train(learner, train, steps=steps, meta_batch_size=episodes["meta_batch"], optimizer=optimizer,
                             scheduler=scheduler, seed=300 + i)
        seconds = time.perf_counter() - start
        val = evaluate(learner, EpisodicSampler(omniglot, N_WAY, K_SHOT, Q_QUERY, "val", seed=6005), args.val_episodes)
        runs[name] = {"family": family, "settings": {**build, "outer": outer, **episodes, "steps": steps},
                      "train_seconds": seconds,
                      "train_loss_per_50_steps": window_means(history.train_loss, 50),
                      "val": {"mean": val.mean, "ci95": val.ci95}}
        models[name] = learner
        print(f"{name}: val {100 * val.mean:.1f} +- {100 * val.ci95:.1f}% ({seconds:.0f} s)", flush=True)

    chosen = dict(earlier["chosen"]) if earlier else {}
    for family in ("MAML", "FOMAML", "Reptile"):
        best = max((n for n, r in runs.items() if r["family"] == family), key=lambda n: runs[n]["val"]["mean"])
        if chosen.get(family, {}).get("config") == best:
            continue
        test = evaluate(models[best], EpisodicSampler(omniglot, N_WAY, K_SHOT, Q_QUERY, "test", seed=7006),
                        args.test_episodes)
        chosen[family] = {"config": best, "test": {"mean": test.mean, "ci95": test.ci95,
                                                   "values": test.values.tolist()}}
        print(f"{family}: chose {best!r} on validation; test {100 * test.mean:.1f} +- {100 * test.ci95:.1f}%")

    if earlier:
        gradients = earlier["meta_gradient_gap"]
    else:
        sampler = train_sampler(omniglot, N_WAY, seed=9005)
        tasks = [sampler.sample(META_BATCH_SIZE) for _ in range(args.gradient_batches)]
        gradients = {}
        for alpha in (0.4, 0.1):
            seed_everything(100)
            fresh = make_gradient_learner("MAML", N_WAY, inner_lr=alpha).model
            gradients[f"alpha {alpha}, random initialisation"] = dropped_term(fresh, alpha, tasks)
            trained = models[f"MAML, alpha {alpha}" + (" (chapter)" if alpha == 0.4 else "")].model
            gradients[f"alpha {alpha}, trained MAML"] = dropped_term(trained, alpha, tasks)

    command = "OMP_NUM_THREADS=1 python scripts/gradient_learner_protocols.py" + (
        "" if args.steps == 1500 else f" --steps {args.steps}")
    if earlier:
        command = f"{earlier['command']}, then {command} --add"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": command,
        "protocol": {"n_way": N_WAY, "k_shot": K_SHOT, "q_query": Q_QUERY, "channels": CHANNELS,
                     "meta_batch": META_BATCH_SIZE, "steps": args.steps, "test_inner_steps": TEST_STEPS,
                     "val_episodes": args.val_episodes, "test_episodes": args.test_episodes},
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "seconds": time.perf_counter() - started + (earlier["seconds"] if earlier else 0),
        "runs": runs, "chosen": chosen, "meta_gradient_gap": gradients,
    }, indent=1) + "\n")
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
