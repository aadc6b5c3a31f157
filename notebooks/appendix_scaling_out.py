# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Scaling out: meta-training over processes and GPUs, studies on a database
#
# Every chapter runs in one process on a laptop's CPU. A reader who outgrows that (a larger
# backbone, a miniImageNet-sized meta-batch, a machine with several GPUs, a lab cluster) should not
# have to rewrite the training loop. This appendix shows how the book's code runs, unchanged, on
# PyTorch's own distributed engine, and how Chapter 6's shared hyperparameter study moves from a
# journal file to a database server that several machines reach:
#
# 1. the idea: a meta-gradient is a mean over tasks, so processes can split the tasks of a
#    meta-batch and average what they computed;
# 2. what `meta_train` does under `torchrun`, the commands for one machine with several GPUs and for
#    several machines, and what changes (the meta-batch, the learning rate);
# 3. a live run of two processes on this machine, checked against one process, and the committed
#    benchmark of one process with two threads against two processes with one thread each;
# 4. an Optuna study on PostgreSQL, with two workers and a worker that dies mid-trial.
#
# A word of honesty first: the machine that runs this notebook for the website has two CPU cores.
# Two processes on two cores show the *mechanism* (that the split computes the same thing, what it
# costs to talk), not the speed-up a box of GPUs gives.

# %%
# On Colab, install the book's helper package first; elsewhere this cell does nothing.
import sys

if "google.colab" in sys.modules:
    # %pip install -q "mlhelpers @ git+https://github.com/learning-to-learn-book/learning-to-learn"
    pass

# %%
import json
import os
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from IPython.display import Markdown, display

import mlhelpers
from mlhelpers import budget, quick_mode
from mlhelpers.diagrams import arrow, box, canvas
from mlhelpers.learners import MAML
from mlhelpers.models import mlp
from mlhelpers.samplers.regression import SinusoidTasks
from mlhelpers.stepcost import cpu_model
from mlhelpers.tasks import Task

torch.set_num_threads(1)
REPO = Path(mlhelpers.__file__).resolve().parent.parent

print(f"{cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}; "
      f"CUDA {'available' if torch.cuda.is_available() else 'not available'}; quick mode {quick_mode()}")

# %% [markdown]
# ## S.1 The idea: a meta-gradient is a mean over tasks
#
# Every learner in the book minimises the mean query loss of a meta-batch of $B$ tasks,
# $\mathcal{L}(\theta) = \frac{1}{B}\sum_{i=1}^{B} \mathcal{L}_i(\theta)$, and its meta-gradient is
# the mean of the tasks' meta-gradients. Split the $B$ tasks into $N$ equal shares of $B/N$, one per
# process ("rank"): rank $r$ computes the mean over its share, $g_r$, and the mean of the ranks'
# means is the mean over all tasks,
#
# $$\nabla \mathcal{L}(\theta) = \frac{1}{N}\sum_{r=1}^{N} g_r, \qquad
#   g_r = \frac{N}{B}\sum_{i \in \text{share}_r} \nabla \mathcal{L}_i(\theta).$$
#
# So if every rank starts from the same parameters, averages the $g_r$ (one *all-reduce*: every rank
# sends its vector and receives the sum) and takes the same optimizer step, all ranks hold the same
# parameters after every step, the ones a single process with the whole meta-batch would hold. That
# is data parallelism, and for meta-learning the "data" are tasks. The whole MAML inner loop of a task
# stays inside one rank; only one vector of the size of $\theta$ crosses between ranks per step.
#
# Before any process is started, the arithmetic can be checked in this one: the MAML meta-gradient
# of 8 sinusoid tasks, against the mean of the meta-gradients of tasks 1-4 and tasks 5-8, in float64.

# %%
torch.manual_seed(0)
maml = MAML(mlp(1, 1, hidden=(40, 40)).double(), inner_lr=0.01, inner_steps=1)
task = SinusoidTasks(10, 10, seed=1).sample(8)
batch = Task(task.support_x.double(), task.support_y.double(), task.query_x.double(), task.query_y.double())


def meta_gradient(task) -> torch.Tensor:
    maml.zero_grad()
    maml.meta_loss(task).backward()
    return torch.cat([p.grad.flatten() for p in maml.parameters()])


whole = meta_gradient(batch)
halves = (meta_gradient(batch[0:4]) + meta_gradient(batch[4:8])) / 2
split_error = float((whole - halves).abs().max() / whole.abs().max())
print(f"largest |whole - mean of halves| / largest |whole|: {split_error:.1e}")
assert split_error < 1e-12

# %% [markdown]
# The two agree to float64 rounding. The schematic below is what `meta_train` does with this fact
# when it runs as several processes.

# %% tags=["schematic"]
fig, ax = canvas(10, 4.4, scale=1.0)
sampler = box(ax, 1.3, 2.2, "seeded sampler\n(same seed\non every rank)", width=2.0, height=1.2, color="model")
ranks = []
for r, y in enumerate((3.4, 1.0)):
    share = box(ax, 4.0, y, f"rank {r}: tasks\n{4 * r + 1}-{4 * r + 4} of 8", width=2.0, height=0.8, color="support")
    grad = box(ax, 6.4, y, "meta-loss, backward\n" + f"$g_{r}$", width=2.0, height=0.8, color="inner")
    arrow(ax, sampler.right, share.left, "slice" if r == 0 else None)
    arrow(ax, share.right, grad.left)
    ranks.append(grad)
reduce = box(ax, 8.8, 2.2, "all-reduce\n" r"$\frac{1}{2}(g_0 + g_1)$" "\nsame step\non every rank", width=2.0,
             height=1.5, color="outer")
for grad in ranks:
    arrow(ax, grad.right, reduce.left)
ax.text(8.8, 0.45, "rank 0 alone: validation,\nprogress bar, checkpoint", ha="center", va="center", fontsize=9)
ax.set_title("One meta-step on 2 ranks: each draws the whole meta-batch, keeps its share, and the "
             "meta-gradients are averaged", fontsize=10)
fig.tight_layout()

# %% [markdown]
# ## S.2 `meta_train` under `torchrun`
#
# `torchrun` (PyTorch's launcher) starts $N$ copies of a script and tells each its rank through
# environment variables (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, where to meet). A training script of
# the book needs no change to run under it. When `mlhelpers.training.meta_train` finds
# `WORLD_SIZE` > 1, it (through `mlhelpers.distributed`):
#
# - joins the process group, with the `gloo` backend when the learner is on the CPU and `nccl` when
#   it is on a GPU (chosen by the device; the rest of the code is the same for both), and a timeout:
#   a rank left waiting for a peer that died or hangs raises an error after `MLHELPERS_DIST_TIMEOUT`
#   seconds (600 by default) instead of waiting forever;
# - gives every rank rank 0's initial weights and sampler states, checks that all ranks were given
#   the same settings, and gives each rank a global random stream of its own (so dropout masks of
#   different tasks differ);
# - at every step, lets every rank draw the *whole* meta-batch from its sampler (the same tasks on
#   every rank, since the samplers are in the same state) and keep its share of `meta_batch_size / N`
#   tasks; averages the meta-gradients and the loss in one flat all-reduce; then every rank takes the
#   same optimizer step;
# - validates, shows the progress bar, locks and writes the checkpoint on rank 0 only (with every
#   rank's random state in it); on resume, rank 0 reads the checkpoint and hands its state to all
#   ranks, so only rank 0 needs to see the checkpoint file.
#
# Drawing the whole batch on every rank wastes a little sampling work (cheap next to a meta-step) and
# buys the property tested below: $N$ ranks compute what one process computes.
#
# On one machine with, say, four GPUs, put the learner on `mlhelpers.default_device()`, which under
# `torchrun` is the rank's own GPU (`cuda:LOCAL_RANK`), and start
#
# ```bash
# torchrun --standalone --nproc_per_node=4 train.py
# ```
#
# On two machines with four GPUs each, run on each machine (the `--rdzv_endpoint` is a host both reach,
# and any free port):
#
# ```bash
# torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=node0.example:29500 \
#          --rdzv_id=maml-run-1 train.py
# ```
#
# **What changes.** `meta_batch_size` stays the size of the *whole* meta-batch; each rank computes
# $1/N$ of it. With the same `meta_batch_size` and learning rate, $N$ ranks train the same model as one
# process, in less time per step when the ranks have hardware of their own. To use more devices for
# a *larger* meta-batch instead, raise `meta_batch_size` with $N$ (it must stay a multiple of $N$): the
# meta-gradient then averages over more tasks and is less noisy, and the learning rate may need to
# change with it. The common rule of thumb for SGD scales the learning rate with the batch (Goyal et
# al., 2017, for image classification), and Adam is often left alone or scaled more gently; neither is
# tested for meta-learning in this book, so treat a larger meta-batch as a new setting to validate.
# Validation costs rank 0 alone its usual time, while the other ranks wait.
#
# The live run: the script below is an ordinary training script (MAML on sinusoids, float64 so that
# the comparison is exact to rounding). It runs once as one process and once under `torchrun` as two
# processes with the `gloo` backend on this CPU.

# %%
live_steps = budget(full=60, quick=20)
script = textwrap.dedent(f'''
    """train.py: MAML on sinusoids; the same file runs alone or under torchrun."""
    import sys
    import torch
    from mlhelpers import default_device, distributed
    from mlhelpers.learners import MAML
    from mlhelpers.models import mlp
    from mlhelpers.samplers.regression import SinusoidTasks
    from mlhelpers.training import meta_train

    torch.set_default_dtype(torch.float64)  # for an exact comparison; float32 runs the same way
    torch.manual_seed(0)
    learner = MAML(mlp(1, 1, hidden=(40, 40)), inner_lr=0.01, inner_steps=1).to(default_device())
    history = meta_train(learner, SinusoidTasks(10, 10, seed=1, device=default_device()),
                         steps={live_steps}, meta_batch_size=8, seed=0, progress=False)
    if distributed.is_main():
        torch.save(learner.state_dict(), sys.argv[1])
        print(f"{{distributed.world_size()}} process(es): {{len(history)}} steps in {{history.elapsed:.1f}} s, "
              f"final loss {{history.train_loss[-1]:.4f}}")
''')
print(script)

# %%
workdir = Path(tempfile.mkdtemp(prefix="scaling-out-"))
(workdir / "train.py").write_text(script)
env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    env.pop(key, None)


def run(command: list[str]) -> float:
    """Run ``command`` in the work directory; print its output; return the wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    print(result.stdout.strip())
    return time.perf_counter() - start


one_wall = run([sys.executable, "train.py", "one.pt"])
two_wall = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "train.py", "two.pt"])
one, two = (torch.load(workdir / name, weights_only=True) for name in ("one.pt", "two.pt"))
live_diff = max(float((one[k] - two[k]).abs().max()) for k in one)
print(f"largest |difference| of the final weights, 1 process vs 2: {live_diff:.1e} "
      f"(wall time with start-up: {one_wall:.0f} s and {two_wall:.0f} s)")
assert live_diff < 1e-9

# %% [markdown]
# Two processes with half the meta-batch each end where one process with the whole meta-batch ends,
# to float64 rounding. The wall times include starting Python and PyTorch in every process, which
# dominates a run this small. The package's tests (`tests/test_distributed.py`) check the same for a
# MAML and a ProtoNet learner, check that a checkpoint written during a two-process run that then
# failed resumes to the result of an uninterrupted run, and that a rank that raises or hangs stops
# the whole job with its error instead of leaving the others waiting.
#
# ## S.3 One process with two threads, or two processes with one thread?
#
# On two cores there are two ways to use both: one process whose matrix kernels use two threads
# (PyTorch's intra-op threads), or two processes of one thread each, one per half of the meta-batch.
# `bench/distributed_step.py` measures both for a MAML and a ProtoNet learner on conv4 (64 channels)
# with the shipped Omniglot, a meta-batch of 8 tasks, and two variants of the two-process run: the
# flat all-reduce `meta_train` uses, and PyTorch's `DistributedDataParallel` (DDP) wrapped around the
# meta-loss, which splits the gradient into buckets and starts their all-reduces while the backward
# pass still runs (Li et al., 2020). It takes several minutes, so it runs outside the notebook
# (`python bench/distributed_step.py --high-priority` from a clone of the repository), and its results
# are committed with the CPU, its measured peak and the load average. The cell below shows them as
# committed.

# %%
bench = REPO / "bench" / "distributed.json"
if bench.exists():
    measured = json.loads(bench.read_text())
    display(Markdown((REPO / "bench" / "distributed.md").read_text()))
    print("bench/distributed.md, made by: python bench/distributed_step.py --high-priority")
    rate = {(r["learner"], r["config"]): r["steps_per_s"] for r in measured["results"]}
    display(Markdown(
        f"Measured on {measured['cpu']} ({measured['cores']} cores, load average "
        f"{measured['load'][0]:.1f} at the start): two processes ran MAML at "
        f"{rate['maml', '2x1'] / rate['maml', '1x2']:.2f} and ProtoNet at "
        f"{rate['protonet', '2x1'] / rate['protonet', '1x2']:.2f} times the meta-steps per second of one process "
        f"with two threads; DDP reached {rate['maml', '2x1-ddp'] / rate['maml', '2x1']:.2f} (MAML) and "
        f"{rate['protonet', '2x1-ddp'] / rate['protonet', '2x1']:.2f} (ProtoNet) times the rate of the flat "
        "all-reduce."))
    from mlhelpers.models import conv4

    numbers = sum(p.numel() for p in conv4(out_features=5, norm="task").parameters())
    print(f"one meta-step sends conv4's meta-gradient: {numbers} numbers, {4 * numbers / 1e3:.0f} kB in float32")
    ddp_ratio = max(rate[k, "2x1-ddp"] / rate[k, "2x1"] for k in ("maml", "protonet"))
    assert ddp_ratio < 1.05, "DDP was faster than the flat all-reduce in the committed run: revise S.3"
else:
    print("bench/distributed.json is not here (an installed package); see bench/distributed.md in the repository.")

# %% [markdown]
# How to read it. The machine that measured the table was shared with other jobs (the load average
# above is several times its two cores), and under such load the one process with two threads was no
# faster than one thread alone (the last row of each learner), and for MAML many times slower. A
# hypothesis this table does not test: two threads
# meet at the end of every kernel, so each waits for the slower of the two, and a core taken by
# another job stalls both, while two processes meet once per meta-step. On an idle machine the gap
# between one and two threads is smaller (the appendix "Under the hood" measures it), so read the
# ratios as this machine's on that day. On GPUs the question is another one: one GPU per rank is the
# standard layout, and the speed-up comes from adding devices, which two CPU cores cannot show.
#
# The last two columns are the identical-result check in float32, beside how far training moved the
# parameters. Two processes, or one thread against two, add the same numbers in another order, so
# the results differ by rounding; for ProtoNet that stays invisible, for MAML's second-order
# meta-gradient it has grown to a visible fraction of the change after a dozen steps. The split is
# not the cause: one thread against two (the last row, no split at all) differs as much as two
# processes do. In float64 (the live run above, the tests) the runs agree to rounding.
#
# **Why a flat all-reduce and not DDP.** Both average the same meta-gradient, and on this machine DDP
# was not faster (the ratios above). Its advantage, overlapping communication with the backward
# pass, pays when the model is large and the network between the devices slow; the book's
# backbones send one vector of a few hundred kilobytes per step (printed above). The flat all-reduce works with every `MetaLearner` as it is: DDP needs the meta-loss to
# be the wrapped module's `forward`, registers hooks on every parameter, and treats a parameter that
# gets no gradient as an error unless told otherwise, while the flat all-reduce keeps a missing
# gradient missing (as in one process, so the optimizer skips it), averages the loss in the same
# message, and lets every rank agree on a non-finite loss before anyone takes a step.
#
# ## S.4 A hyperparameter study on a database server
#
# Chapter 6 (section 6.4) runs two worker processes on one Optuna study kept in a journal file. A
# file works for processes that see the same file system; workers on several machines share a
# database instead. `mlhelpers.hpo.open_study` takes a database URL wherever it takes a journal file,
# and the worker of Chapter 6 takes it on its command line:
#
# ```bash
# # once, on the database server: a database the workers may write
# createdb studies
# # on every machine, as many workers as it has cores or GPUs
# python -m mlhelpers.hpo_worker --storage postgresql://user@dbhost/studies --worker 1 --heartbeat 30 --retries 1
# ```
#
# With `--heartbeat`, a running trial records a heartbeat in the database; when a worker dies
# mid-trial, the next worker to start a trial finds the stale heartbeat, marks that trial failed and
# (with `--retries`) enqueues its settings again, so the study loses nothing. The test suite checks
# both on a real PostgreSQL server (`tests/test_hpo_postgres.py`): two workers at once fill one study,
# and a worker killed mid-trial leaves a failed trial that the other worker runs again.
#
# The cell below starts a throwaway PostgreSQL server on this machine (`mlhelpers.pgserver`, a private
# cluster in a temporary directory, deleted afterwards) if the server's programs and the Python driver
# are installed (`scripts/install-postgres.sh`, `pip install "mlhelpers[postgres]"`), and runs
# Chapter 6's two workers on it at once, with a tiny budget: the point is where the trials land, not
# their accuracy.

# %%
import warnings  # noqa: E402

warnings.filterwarnings("ignore", message="IProgress not found")  # Optuna's tqdm, without Jupyter widgets
import optuna  # noqa: E402

from mlhelpers.hpo import open_study  # noqa: E402
from mlhelpers.pgserver import temporary_postgres, unavailable_reason  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
reason = unavailable_reason()
if reason is not None:
    print(f"Not run here: {reason}. With a server, the same cell starts two workers on one study.")
else:
    trials_each = budget(full=2, quick=1)
    with temporary_postgres() as url:
        workers = [subprocess.Popen([sys.executable, "-m", "mlhelpers.hpo_worker", "--storage", url, "--worker",
                                     str(n), "--trials", str(trials_each), "--steps", "20", "--val-episodes", "20"],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for n in (1, 2)]
        for process in workers:
            out, err = process.communicate(timeout=600)
            assert process.returncode == 0, err[-2000:]
        study = open_study("shared", url)
        rows = [f"| {t.number} | {t.user_attrs['worker']} | {t.params['width']} | {t.params['lr']:.2g} | "
                f"{100 * t.value:.1f}% |" for t in study.trials]
        display(Markdown("| trial | worker | width | lr | validation accuracy |\n|---|---|---|---|---|\n"
                         + "\n".join(rows)))
        by_worker = sorted(t.user_attrs["worker"] for t in study.trials)
        assert by_worker == [1] * trials_each + [2] * trials_each
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        print(f"{len(study.trials)} trials of 2 workers in one study on PostgreSQL, numbered "
              f"{sorted(t.number for t in study.trials)}")

# %% [markdown]
# Both workers' trials are in the one study, each recorded once, numbered by the database in the
# order they started; each worker's sampler saw the trials the other had finished.
#
# > **Common mistakes**
# >
# > - **A meta-batch that does not split.** `meta_batch_size` is the whole meta-batch and must be a
# >   multiple of the number of processes; `meta_train` refuses anything else rather than weigh some
# >   tasks more than others.
# > - **Batch norm across the tasks of a meta-batch.** A learner that normalises over all the tasks it
# >   sees at once (ProtoNet's backbone with ordinary `BatchNorm`) sees only its rank's share on each
# >   rank, so its statistics, and its results, differ from one process's. Per-task statistics
# >   (`conv4(norm="task")` with MAML) or no batch norm keep the split exact; otherwise expect results
# >   that are alike, not equal.
# > - **Every rank on the same GPU.** Under `torchrun`, `device="cuda"` puts every rank on GPU 0;
# >   `mlhelpers.default_device()` gives each its own, and `meta_train` stops with an error naming the
# >   right device otherwise.
# > - **Different arguments on different ranks.** Every rank must run the same training (the same
# >   sampler settings, steps, seed); `meta_train` compares them at the start and names what differs.
# > - **Reading a larger meta-batch as a free speed-up.** Raising `meta_batch_size` with the number of
# >   devices changes the optimisation; validate the learning rate again.
# > - **A journal file across machines.** Chapter 6's journal file needs one file system that every
# >   worker sees, with working file locks; across machines, use a database URL.
#
# ## Summary
#
# - Meta-gradients are means over tasks, so processes can split a meta-batch's tasks and average what
#   they computed; `meta_train` does this under `torchrun` with no change to the training script, and
#   two processes end with the parameters of one (float64, checked live and in the tests).
# - The same code runs with `gloo` on CPUs and `nccl` on GPUs; rank 0 alone validates and writes
#   checkpoints, and a failing rank stops the job.
# - On a 2-core CPU, the measurement shows the mechanism and its cost; a GPU box shows the speed-up.
# - Studies that several machines share live in a database: `open_study("name", "postgresql://...")`,
#   with heartbeats so that a dead worker's trial is retried.
#
# **References.** Goyal, P., et al. (2017). Accurate, large minibatch SGD: training ImageNet in 1 hour.
# arXiv:1706.02677. Li, S., et al. (2020). PyTorch Distributed: experiences on accelerating data
# parallel training. *VLDB*. Akiba, T., et al. (2019). Optuna: a
# next-generation hyperparameter optimization framework. *KDD*.
