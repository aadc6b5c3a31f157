"""Benchmark: meta-training in 1 process x 2 threads against 2 processes x 1 thread (torchrun, gloo).

Two learners on the shipped Omniglot, both on conv4 with 64 channels: MAML (5-way 1-shot, 15
queries per class, second order, 1 inner step of 0.4, per-task batch statistics) and ProtoNet
(5-way 5-shot, 15 queries per class, no batch norm, so that no statistic spans the tasks of a
rank's share), a meta-batch of 8 tasks, plain SGD with learning rate 0.01 (Adam would turn the
rounding noise of parameters whose exact meta-gradient is 0, such as a conv bias before a norm,
into steps of its full learning rate, and the check below would measure that instead). Each
configuration runs ``mlhelpers.training.meta_train`` in fresh processes from the same
initialisation and seed: a warm-up run of 2 steps, then ``--steps`` timed steps (the time of
``meta_train`` alone, its ``History.elapsed``; process start and ``init_process_group`` left out). Rows:

- ``1 x 2``: one process, two threads (PyTorch's intra-op threads share each kernel);
- ``2 x 1``: ``torchrun --nproc_per_node=2``, one thread each: each rank takes 4 of the 8 tasks and
  ``mlhelpers.distributed`` averages the meta-gradient in one flat all-reduce;
- ``2 x 1 DDP``: the same split, the meta-gradient averaged by ``DistributedDataParallel`` wrapped
  around the meta-loss (bucketed all-reduces overlapping the backward pass), in a hand-written loop
  with the same steps; measured to choose between the two;
- ``1 x 1``: one process, one thread, the baseline of both.

The identical-result check compares each row's final parameters with the ``1 x 2`` row's (largest
absolute difference, float32: summation order changes the last bits). The float64 tests
(tests/test_distributed.py) show the two agree to rounding. Also printed: the CPU model and the
arithmetic peak measured as in ``bench/meta_step.py``.

Every configuration runs ``--rounds`` times, the configurations in turn, and the table keeps each
one's fastest round (the one least slowed by other jobs) beside all of them.

Usage (about 20 minutes on the loaded 2-core machine that made the committed results)::

    python bench/distributed_step.py --high-priority     # writes bench/distributed.md and .json
    python bench/distributed_step.py --steps 3 --learners protonet --out /tmp/d   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from meta_step import PEAK, torch_version  # noqa: E402  (the peak and version helpers of the MAML bench)

META_BATCH = 8
LR = 0.01
WARMUP = 2
CONFIGS = {  # key: (label, processes, threads per process, averaging)
    "1x2": ("1 process x 2 threads", 1, 2, "none"),
    "2x1": ("2 processes x 1 thread, flat all-reduce", 2, 1, "flat"),
    "2x1-ddp": ("2 processes x 1 thread, DDP", 2, 1, "ddp"),
    "1x1": ("1 process x 1 thread", 1, 1, "none"),
}
LEARNERS = {
    "maml": "MAML, 5-way 1-shot, second order, 1 inner step",
    "protonet": "ProtoNet, 5-way 5-shot",
}



# --- the worker: one configuration, in this process or as one torchrun rank -------------------------


def build(kind: str):
    import torch

    from mlhelpers.data.omniglot import load_omniglot
    from mlhelpers.learners import MAML, ProtoNet
    from mlhelpers.models import conv4
    from mlhelpers.samplers.episodic import EpisodicSampler

    data = load_omniglot()
    torch.manual_seed(0)
    if kind == "maml":
        learner = MAML(conv4(out_features=5, norm="task"), inner_lr=0.4, inner_steps=1)
        return learner, EpisodicSampler(data, 5, 1, 15, split="train", seed=1)
    learner = ProtoNet(conv4(norm="none"))
    return learner, EpisodicSampler(data, 5, 5, 15, split="train", seed=1)


def ddp_train(learner, sampler, steps: int) -> float:
    """``steps`` meta-steps with the meta-gradient averaged by DDP; return the seconds they took."""
    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from mlhelpers import distributed

    class MetaLoss(nn.Module):  # DDP synchronises what its forward's graph produces
        def __init__(self, learner: nn.Module) -> None:
            super().__init__()
            self.learner = learner

        def forward(self, task):
            return self.learner.meta_loss(task)

    model = DistributedDataParallel(MetaLoss(learner))
    optimizer = torch.optim.SGD(learner.parameters(), lr=LR)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        model(distributed.shard(sampler.sample(META_BATCH))).backward()
        optimizer.step()
    return time.perf_counter() - start


def worker(kind: str, averaging: str, steps: int, out: str) -> None:
    import torch

    from mlhelpers import distributed
    from mlhelpers.training import meta_train

    for timed in (False, True):  # a warm-up run, then the timed one, each from the same start
        learner, sampler = build(kind)
        n = steps if timed else WARMUP
        if averaging == "ddp":
            distributed.setup("cpu")
            seconds = ddp_train(learner, sampler, n)
        else:
            seconds = meta_train(learner, sampler, steps=n, meta_batch_size=META_BATCH, seed=0,
                                 optimizer=torch.optim.SGD(learner.parameters(), lr=LR), progress=False).elapsed
    if distributed.is_main():
        start = build(kind)[0].state_dict()
        moved = max(float((v - start[k]).abs().max()) for k, v in learner.state_dict().items())
        torch.save({k: v.detach().clone() for k, v in learner.state_dict().items()}, out + ".pt")
        Path(out + ".json").write_text(json.dumps({"seconds": seconds, "steps": steps, "moved": moved,
                                                   "threads": torch.get_num_threads()}))


# --- the driver ---------------------------------------------------------------------------------------


def run_config(kind: str, config: str, steps: int, tmp: str) -> dict:
    _, processes, threads, averaging = CONFIGS[config]
    out = os.path.join(tmp, f"{kind}-{config}")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    args = [__file__, "--worker", kind, averaging, str(steps), out]
    if processes == 1:
        command = [sys.executable, *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   *args]
    subprocess.run(command, env=env, check=True, cwd=ROOT)
    return {**json.loads(Path(out + ".json").read_text()), "params_file": out + ".pt"}


def max_difference(a_file: str, b_file: str) -> float:
    import torch

    a, b = torch.load(a_file, weights_only=True), torch.load(b_file, weights_only=True)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed meta-steps per configuration (default 10)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of every configuration, taken in turn; the table keeps the fastest (default 2)")
    parser.add_argument("--learners", default=",".join(LEARNERS), help="comma-separated subset of "
                        + ",".join(LEARNERS))
    parser.add_argument("--out", default=str(HERE / "distributed"), help="write OUT.md and OUT.json")
    parser.add_argument("--high-priority", action="store_true",
                        help="run ahead of other jobs on a shared machine (Linux autogroup nice -20; needs root)")
    parser.add_argument("--worker", nargs=4, metavar=("LEARNER", "AVERAGING", "STEPS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, averaging, steps, out = args.worker
        worker(kind, averaging, int(steps), out)
        return
    priority = "normal priority"
    if args.high_priority:
        try:
            Path("/proc/self/autogroup").write_text("-20")
            priority = "high priority (autogroup nice -20, ahead of the other jobs)"
        except OSError as error:
            print(f"--high-priority ignored: {error}")
    learners = args.learners.split(",")
    if set(learners) - set(LEARNERS):
        parser.error(f"unknown learners {sorted(set(learners) - set(LEARNERS))}; choose from {', '.join(LEARNERS)}")

    from mlhelpers.stepcost import cpu_model

    cpu = cpu_model()
    peak = float(subprocess.run([sys.executable, "-c", PEAK], capture_output=True, text=True, check=True).stdout)
    print(f"CPU: {cpu}, {os.cpu_count()} cores; measured arithmetic peak: {peak / 1e9:.0f} GFLOP/s "
          "(float32 2048x2048 matmul, all threads)", flush=True)
    load_before = os.getloadavg()[0]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in learners:
            for _ in range(args.rounds):  # configurations in turn, so that a burst of load hits all alike
                for config in CONFIGS:
                    start = time.perf_counter()
                    r = run_config(kind, config, args.steps, tmp)
                    rate = r["steps"] / r["seconds"]
                    kept = results.setdefault((kind, config), {**r, "rates": []})
                    kept["rates"].append(rate)
                    kept.update(params_file=r["params_file"], steps_per_s=max(kept["rates"]))
                    print(f"  {LEARNERS[kind]:<48} {CONFIGS[config][0]:<40} {rate:6.2f} steps/s "
                          f"({time.perf_counter() - start:.0f} s with start-up and warm-up)", flush=True)
            for config in CONFIGS:
                r = results[kind, config]
                r["max_param_diff"] = max_difference(r["params_file"], results[kind, "1x2"]["params_file"])
            for config in CONFIGS:
                results[kind, config].pop("params_file")
    load_after = os.getloadavg()[0]

    header = ["learner", "configuration", "meta-steps / s (fastest round)", "all rounds", "x (1 process x 2 threads)",
              "max |param diff| from 1 x 2", "max |param change| in training"]
    rows = []
    for kind in learners:
        base = results[kind, "1x2"]["steps_per_s"]
        for config in CONFIGS:
            r = results[kind, config]
            rows.append([LEARNERS[kind], CONFIGS[config][0], f"{r['steps_per_s']:.2f}",
                         ", ".join(f"{x:.2f}" for x in r["rates"]),
                         f"{r['steps_per_s'] / base:.2f}", f"{r['max_param_diff']:.1e}", f"{r['moved']:.1e}"])
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                      + ["| " + " | ".join(row) + " |" for row in rows])
    notes = [f"CPU: {cpu}, {os.cpu_count()} cores, measured peak {peak / 1e9:.0f} GFLOP/s (float32 matmul). "
             f"Meta-batch of {META_BATCH} tasks, {args.steps} timed meta-steps after a warm-up run of {WARMUP}, "
             f"{args.rounds} rounds of every configuration taken in turn (the table keeps each one's fastest), "
             f"conv4 with 64 channels on the shipped Omniglot, float32; torch {torch_version()}, backend gloo; "
             f"run at {priority}; load average {load_before:.1f} before and {load_after:.1f} after.",
             "x (1 process x 2 threads): meta-steps per second relative to the first row of the learner (higher is "
             "faster). Max |param diff|: largest absolute difference of the final parameters from that row's "
             "(float32), beside the largest change training made to any parameter, for scale; the float64 tests "
             "(tests/test_distributed.py) find 2 processes equal to 1 process to 1e-10."]
    text = table + "\n\n" + "\n\n".join(notes) + "\n"
    print("\n" + text)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(
        {"cpu": cpu, "cores": os.cpu_count(), "peak_flops": peak, "meta_batch": META_BATCH, "steps": args.steps,
         "rounds": args.rounds,
         "priority": priority, "load": [load_before, load_after],
         "labels": {"learners": LEARNERS, "configs": {k: v[0] for k, v in CONFIGS.items()}},
         "results": [{"learner": k, "config": c, **results[k, c]} for k, c in results]}, indent=1))
    print(f"wrote {args.out}.md and {args.out}.json")


if __name__ == "__main__":
    main()
