# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Under the hood: making meta-learning fast on a CPU
#
# The chapters read as argument, experiment, result. Behind some of their experiments sits
# engineering that a student does not need in order to follow the ideas, but may want when
# running meta-learning on a laptop, or when wondering whether a measured cost can be trusted.
# This appendix collects it:
#
# 1. how the book's gradient-based learners process the tasks of a meta-batch (a loop, threads,
#    `vmap`), what a second core is worth, and why the chapters run on one thread
#    ([Chapter 3](03_maml_from_scratch.ipynb), section 3.3);
# 2. how Chapter 3 measures the time and the memory of one meta-step, in a fresh process, and why;
# 3. how [Chapter 2](02_bilevel_optimisation.ipynb) (section 2.7) counts the memory of the
#    meta-gradient's graph exactly;
# 4. the embedding cache that makes the evaluation of [Chapter 4](04_prototypical_networks.ipynb)
#    cheap.
#
# Everything this notebook measures, it measures when it runs, on the machine it prints first. In
# quick mode (`MLHELPERS_QUICK=1`) it repeats each measurement fewer times.

# %%
# On Colab, install the book's helper package first; elsewhere this cell does nothing.
import sys

if "google.colab" in sys.modules:
    # %pip install -q "mlhelpers @ git+https://github.com/learning-to-learn-book/learning-to-learn"
    pass

# %%
import json
import os
import platform
import tracemalloc
from pathlib import Path

import torch
from IPython.display import Markdown, display
from torch.profiler import ProfilerActivity, profile

import mlhelpers
from mlhelpers import budget, quick_mode
from mlhelpers.data.omniglot import load_omniglot
from mlhelpers.display import markdown_table
from mlhelpers.learners import MAML
from mlhelpers.models import conv4
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.stepcost import cpu_model, measure_meta_step

torch.set_num_threads(1)
print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; load average (1 min) {os.getloadavg()[0]:.1f}")
print(f"mlhelpers {mlhelpers.__version__}, torch {torch.__version__}, Python {platform.python_version()}, quick mode {quick_mode()}")

# %% [markdown]
# ## A.1 The tasks of a meta-batch: a loop, threads or `vmap`
#
# A meta-batch is a *sum of independent tasks*: each task adapts its own copy of the weights on
# its support set and contributes its query loss. The gradient-based learners of `mlhelpers`
# (`MAML`, `MetaSGD`, `ANIL`, `Reptile`) can process those tasks in three ways, chosen with
# `strategy=`, and all three give the same meta-gradient:
#
# - **`"loop"`**: task after task in the calling thread. As soon as a task's query loss is known,
#   its meta-gradient is computed with `torch.autograd.grad` and the task's graph is freed;
#   `meta_loss` returns the mean loss, whose `backward()` delivers the mean of the precomputed
#   gradients. Memory holds one task's graph, whatever the size of the meta-batch, as in a
#   hand-written per-task loop. The price: that loss cannot be differentiated a second time
#   (`create_graph=True` raises an error that says so); `"vmap"` keeps the whole graph.
# - **`"threads"`**: the same, with whole tasks run in worker threads, one per intra-op thread
#   PyTorch has (`torch.get_num_threads()`), each worker with single-threaded kernels; PyTorch
#   releases Python's global lock inside its kernels, so the threads really run at once. Memory
#   holds the graphs of as many tasks as there are workers. One
#   detail matters: `functional_call` swaps a module's parameters for the fast weights *in place*
#   while it runs, so two threads must never share module objects; each worker gets a replica of
#   the learner whose modules are new objects but whose parameters are the very same tensors.
# - **`"vmap"`**: `torch.func.vmap` over the task dimension, one batched kernel for all tasks.
#   On a GPU that turns many small kernels into a few large ones. For second order the learners
#   replace every norm layer by the same formula written as plain means and products, because
#   the derivative of PyTorch's fused batch-norm kernel under `vmap` is wrong (Chapter 3,
#   section 3.4, pitfall 4, shows it).
# - **`"auto"`** (the default) is `"vmap"` off the CPU. On the CPU it is `"loop"` when PyTorch
#   has one intra-op thread; with more, the learner times `"loop"` against `"threads"` on its
#   first meta-batch in training (each twice, in turn, keeping each one's fastest time) and keeps
#   the faster one, which `learner.measured_strategy` tells (timed again if the thread count
#   changes). Which one wins depends on the CPU, on its load and on the sizes of the tasks, so
#   the helper measures rather than guesses. Since the two add up the same numbers in different
#   orders, name the strategy when a run must be reproducible bit for bit.
#
# And there is PyTorch's own way to use several cores: *intra-op* parallelism, where every
# convolution, batch norm and pooling is split across all threads, which meet at the end of each
# operation. A few-shot meta-step is made of many small operations (five support images,
# twenty-five query images per task), so the threads spend part of their time waiting for each
# other, and more when another program needs a core for a moment. Parallelising over *tasks*
# instead gives each thread long stretches of independent work.
#
# We measure the four options on Chapter 3's setting: MAML, second order, one inner step of
# $\alpha = 0.4$, conv4 with 32 channels and per-task batch statistics, meta-batches of 8 tasks
# of 5-way 1-shot with 5 queries per class. Every measurement runs in a fresh process (section A.2
# explains why), on the same weights and the same meta-batches; the options take turns, round
# after round, so that a burst of load from other programs hits all of them alike, and we keep
# each option's fastest round.

# %%
omniglot = load_omniglot()
cost_sampler = EpisodicSampler(omniglot, 5, 1, 5, "train", rotations=True, seed=0)
batches = [cost_sampler.sample(8) for _ in range(budget(full=4, quick=2))]  # warm-up + timed steps


def chapter3_maml(strategy):
    """Chapter 3's MAML on a conv4 with 32 channels, the same initial weights every time."""
    torch.manual_seed(0)
    return MAML(conv4(hidden_channels=32, out_features=5, norm="task"), inner_lr=0.4, eval_inner_steps=3,
                strategy=strategy)


OPTIONS = {"loop, 1 thread": ("loop", 1), "loop, 2 intra-op threads": ("loop", 2),
           "tasks in 2 threads": ("threads", 2), "vmap, 1 thread": ("vmap", 1)}
ROUNDS = budget(full=3, quick=1)
load_before = os.getloadavg()[0]
runs = {name: [] for name in OPTIONS}
for _ in range(ROUNDS):
    for name, (strategy, threads) in OPTIONS.items():
        runs[name].append(measure_meta_step(chapter3_maml(strategy), batches, threads=threads))
best = {name: min(r, key=lambda c: c.wall_seconds) for name, r in runs.items()}
display(markdown_table(
    ["option", "wall-clock s / step", "CPU s / step", "peak memory MB"],
    [[name, f"{c.wall_seconds:.2f}", f"{c.cpu_seconds:.2f}", f"{c.peak_mb:.0f}"] for name, c in best.items()]))
print(f"Fastest of {ROUNDS} round(s) per option, {len(batches) - 1} timed meta-steps each, Adam step included; "
      f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.")

# %% [markdown]
# Is it the same meta-gradient? The strategies differ only in the order in which the same numbers
# are added up, so they should agree to float32 rounding. One meta-batch, the same weights:

# %%
def meta_gradient(strategy, threads=1):
    learner = chapter3_maml(strategy)
    torch.set_num_threads(threads)  # "threads" uses as many workers as PyTorch has threads
    try:
        grads = torch.autograd.grad(learner.meta_loss(batches[0]), list(learner.parameters()))
    finally:
        torch.set_num_threads(1)
    return torch.cat([g.flatten() for g in grads])


reference = meta_gradient("loop")
for strategy, threads in (("threads", 2), ("vmap", 1)):
    difference = (meta_gradient(strategy, threads) - reference).norm() / reference.norm()
    print(f"{strategy:7s} vs loop: relative difference of the meta-gradient {difference:.1e}")

# %%
one, two, tasks2 = best["loop, 1 thread"], best["loop, 2 intra-op threads"], best["tasks in 2 threads"]
fastest = min(best, key=lambda n: best[n].wall_seconds)
display(Markdown(
    f"On this run the fastest option in wall-clock time was **{fastest}**. A second intra-op thread turned "
    f"{one.wall_seconds:.2f} s per step into {two.wall_seconds:.2f} s ({one.wall_seconds / two.wall_seconds:.2f} times "
    f"as fast) for {two.cpu_seconds / one.cpu_seconds:.2f} times the CPU time; tasks in two threads took "
    f"{tasks2.wall_seconds:.2f} s for {tasks2.cpu_seconds / one.cpu_seconds:.2f} times the CPU time, and kept "
    f"{tasks2.peak_mb:.0f} MB instead of the loop's {one.peak_mb:.0f} MB. `vmap` took "
    f"{best['vmap, 1 thread'].wall_seconds:.2f} s and {best['vmap, 1 thread'].peak_mb:.0f} MB."))

# %% [markdown]
# **Why the chapters use one thread.** The book's machine is a 2-core CPU shared by several jobs
# at once (chapters run side by side), so a second thread only speeds a step up when a core
# happens to be free for it, and what the jobs share is CPU time. The table shows what a second
# thread cost in CPU time for what it gained in wall-clock time on this run. The chapters
# therefore call `torch.set_num_threads(1)` and spend their CPU time on one thread each. On your
# own machine, with idle cores, leave PyTorch its default thread count and the learner its
# default `strategy="auto"`, which measures the loop against threads on your CPU, or measure
# yourself as above: which one wins depends on the CPU and on its load.
#
# ### The committed benchmark: the helper against a plain loop, `higher` and `learn2learn`
#
# `bench/meta_step.py` makes the same comparison at the size of Finn et al.'s Omniglot setting
# (conv4 with 64 channels, 32 tasks of 5-way 1-shot with 15 queries per class; second order with
# one and with five inner steps, and first order), for each of the helper's CPU strategies (loop,
# threads, and auto with the choice it made), a
# plain per-task `torch.autograd` loop (with PyTorch's default thread count, and single-threaded),
# and the two libraries people use for MAML in PyTorch, `higher` and `learn2learn`, each in a
# fresh process on the same weights and tasks. It checks that all compute the same meta-gradient,
# measures the memory a step adds, and divides the arithmetic of a step (counted by
# `torch.utils.flop_counter`) by its time and by the machine's measured peak (a large matrix
# product). One row is not a meta-step but a **bound**: the forward and backward pass over the
# query sets alone, with no adaptation at all, which every implementation has to do (with adapted
# weights) on top of its inner loop; it runs the same kernels for everybody, so it says how much
# room for speed-up there is at all. It is computed twice, task after task and with tasks in
# threads, because the threads strategy does its query passes the second way. Two more rows are
# marked *tried*: ways of computing the meta-step that were measured as candidates and not
# adopted, all of a meta-batch's support passes batched by `vmap` (the support sets are small, so
# one might expect their many small operations to gain from becoming a few large ones) and
# `torch.compile` of each task's meta-gradient. The benchmark takes about twenty minutes, so it runs
# outside the notebooks, `python bench/meta_step.py --high-priority` from a clone of the repository
# (`bench/README.md`; the flag lets it run ahead of other jobs on a shared machine), and its results
# are committed with the CPU, PyTorch version and load they were measured under. The cell below
# shows them as committed.

# %%
bench_md = Path(mlhelpers.__file__).resolve().parent.parent / "bench" / "results.md"
if bench_md.exists():
    display(Markdown(bench_md.read_text()))
    print(f"{bench_md.parent.name}/{bench_md.name}, made by: python bench/meta_step.py --high-priority "
          f"({json.loads(bench_md.with_suffix('.json').read_text())['tasks']} tasks per meta-batch)")
else:
    print("bench/results.md is not here (an installed package); see bench/results.md in the repository.")

# %%
if bench_md.exists():
    peak = {(r["setting"], r["implementation"]): r["peak_mb"]
            for r in json.loads(bench_md.with_suffix(".json").read_text())["results"]}
    display(Markdown(
        "Note the memory column: every per-task loop, the helper's included, frees each task's graph as soon "
        f"as its gradient is taken. At second order with one inner step the helper's loop adds "
        f"{peak['so1', 'ours-loop']:.0f} MB to the process and the plain loop {peak['so1', 'plain']:.0f} MB, "
        f"while the bound (the query passes alone) adds {peak['so1', 'floor']:.0f} MB."))

# %% [markdown]
# And the two tried rows, read from the same file: how each candidate compared with the helper's
# fastest strategy in every setting, what memory it added, and how far its meta-gradient was from
# the plain loop's.

# %%
if bench_md.exists():
    row = {(r["setting"], r["implementation"]): r
           for r in json.loads(bench_md.with_suffix(".json").read_text())["results"]}
    wall = {key: sum(r["wall"]) / len(r["wall"]) for key, r in row.items()}
    settings = [key for key in ("so1", "so5", "fo1") if (key, "ours-loop") in row]
    ours = {key: min((impl for impl in ("ours", "ours-loop", "ours-auto") if (key, impl) in wall),
                     key=lambda impl: wall[key, impl]) for key in settings}
    tried_rows = []
    for impl, label in (("vmap-support", "support passes batched by vmap"), ("compiled", "torch.compile per task")):
        for key in settings:
            if (key, impl) in row:
                tried, helper = row[key, impl], row[key, ours[key]]
                tried_rows.append([label, key, f"{wall[key, impl] / wall[key, ours[key]]:.2f}",
                                   f"{tried['peak_mb']:.0f} (helper {helper['peak_mb']:.0f})",
                                   f"{tried['grad_diff']:.0e} (helper {helper['grad_diff']:.0e})"])
    if tried_rows:
        display(markdown_table(["tried", "setting", "time / helper's fastest", "memory MB", "max grad diff"],
                               tried_rows))
        print("so1, so5: second order with 1 and 5 inner steps; fo1: first order, 1 step. Read from "
              f"{bench_md.parent.name}/{bench_md.with_suffix('.json').name}.")
    else:
        print("The committed results have no tried rows.")

# %% [markdown]
# Where does a query pass spend its time? PyTorch's profiler splits the forward and backward pass
# of a few tasks' query sets (the benchmark's model and sizes, with the initial weights) into the
# operations it runs:

# %%
profile_sampler = EpisodicSampler(omniglot, 5, 1, 15, "train", seed=0)
profile_tasks = profile_sampler.sample(budget(full=8, quick=2))
torch.manual_seed(0)
bench_model = conv4(out_features=5, norm="task")


def query_passes():
    for i in range(len(profile_tasks)):
        torch.nn.functional.cross_entropy(bench_model(profile_tasks.query_x[i]), profile_tasks.query_y[i]).backward()


query_passes()  # warm-up
# The profiler's C++ library logs its start and stop straight to the process's stderr: silence it.
quiet, saved_stderr = os.open(os.devnull, os.O_WRONLY), os.dup(2)
os.dup2(quiet, 2)
try:
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        query_passes()
finally:
    os.dup2(saved_stderr, 2)
    os.close(quiet), os.close(saved_stderr)
self_us = {e.key: e.self_cpu_time_total for e in profiled.key_averages()}
total_us = sum(self_us.values())
CONVOLUTION = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::addmm", "aten::mm")
convolution_share = sum(self_us.get(k, 0) for k in CONVOLUTION) / total_us
top = sorted(self_us.items(), key=lambda kv: -kv[1])[:8]
display(markdown_table(["operation", "share of the query passes' CPU time"],
                       [[name, f"{us / total_us:.0%}"] for name, us in top]))
print(f"{len(profile_tasks)} tasks, one thread. Convolutions and the linear head (forward and backward): "
      f"{convolution_share:.0%}; everything else (normalisation, ReLU, pooling, filling): {1 - convolution_share:.0%}.")

# %%
if bench_md.exists() and tried_rows:
    def spread(values, fmt):
        return f"{fmt(min(values))} to {fmt(max(values))}" if len(values) > 1 else fmt(values[0])

    def over(impl, field):
        return [row[key, impl][field] for key in settings if (key, impl) in row]

    def ratio(impl):
        return [wall[key, impl] / wall[key, ours[key]] for key in settings if (key, impl) in row]

    helper_diff = max(row[key, ours[key]]["grad_diff"] for key in settings)
    display(Markdown(
        f"So the convolutions and the head, where the arithmetic is, take only {convolution_share:.0%} of a query "
        "pass's time on this run; the rest is work on every entry of the activations, with little arithmetic per "
        "entry. "
        "That tells what the tried rows could and could not gain. Batching the support passes by `vmap` took "
        f"{spread(ratio('vmap-support'), lambda x: f'{x:.2f}')} times the helper's time and added "
        f"{spread(over('vmap-support', 'peak_mb'), lambda x: f'{x:.0f}')} MB (it keeps the support graph of the "
        "whole meta-batch to the end, where the helper holds one task's graph per worker). With one inner step the "
        "query passes alone take "
        f"{min(wall['so1', b] for b in ('floor', 'floor-threads') if ('so1', b) in wall) / wall['so1', ours['so1']]:.0%} "
        "of the helper's meta-step (the bound rows), so the support side has little time to give. "
        "Compiling can fuse the elementwise work; it took "
        f"{spread(ratio('compiled'), lambda x: f'{x:.2f}')} times the helper's time after compiling for "
        f"{spread(over('compiled', 'warm_up'), lambda x: f'{x:.0f}')} s in the warm-up step, and its meta-gradient "
        "was off by up to "
        f"{max(over('compiled', 'grad_diff')):.0e} of the largest entry, where the helper's strategies stay within "
        f"{helper_diff:.0e}. Neither became part of the helper."))

# %% [markdown]
# ## A.2 How Chapter 3 measures a meta-step, and why in a fresh process
#
# Chapter 3 reports, for each of its five learners, the CPU time and the peak memory of one
# meta-step (`meta_loss`, `backward`, Adam step). `mlhelpers.stepcost.measure_meta_step(learner,
# batches)` saves the learner and a few meta-batches to a temporary file and starts a new Python
# process (`python -m mlhelpers.stepcost FILE`) that loads them and measures:
#
# 1. **One warm-up step** first: Adam creates its state, PyTorch and the allocator make their
#    one-off allocations. None of that is the cost of a step.
# 2. **Peak memory.** Linux keeps a process's peak resident set size, `VmHWM` in
#    `/proc/self/status`, and lets the process reset it to the current size by writing `5` to
#    `/proc/self/clear_refs`. So: reset, read the current size (`VmRSS`), take one step, read the
#    peak. The difference counts everything the step allocated, as the operating system sees it:
#    saved activations, the second-order graph, gradients.
# 3. **Time** of the remaining steps, as CPU time of the process (`time.process_time`) and
#    wall-clock time. On a shared machine, wall-clock time depends on what else runs; CPU time of a
#    single-threaded process depends on it much less (not at all is too much to ask: other
#    programs still compete for caches and memory bandwidth).
#
# Three details make the numbers trustworthy:
#
# - **A fresh process.** In the notebook's own process, memory freed by earlier cells (other
#   models, earlier training runs) stays with the process and is reused, so a step may not raise
#   the resident size at all; and whatever else the notebook holds changes from run to run. A new
#   process holds only the learner and the batches.
# - **`malloc` that gives memory back.** Even in a fresh process, the memory the warm-up step
#   freed could be reused by the measured step and hide it. With `MALLOC_MMAP_THRESHOLD_=65536`,
#   glibc's `malloc` serves every block from 64 kB up with its own mapping, which goes back to the
#   system as soon as the block is freed; the measured step must then map its memory afresh.
# - **Not `tracemalloc`.** Python's `tracemalloc` sees only what Python's own allocator hands
#   out; PyTorch allocates tensor memory outside it.
#
# The last two are claims we can check, on the same learner and batches as in section A.1:

# %%
default_malloc = measure_meta_step(chapter3_maml("loop"), batches, malloc_threshold=None)
learner = chapter3_maml("loop")
tracemalloc.start()
learner.meta_loss(batches[1]).backward()
traced_peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
tracemalloc.stop()
print(f"peak memory of one step, malloc returning freed blocks (as measured above): {best['loop, 1 thread'].peak_mb:.0f} MB")
print(f"the same with malloc's default threshold:                                  {default_malloc.peak_mb:.0f} MB")
print(f"what tracemalloc sees of a meta-step (its peak):                            {traced_peak_mb:.1f} MB")

# %%
ratio = default_malloc.peak_mb / best["loop, 1 thread"].peak_mb
display(Markdown(
    f"With `malloc`'s default threshold the same step appears to add {default_malloc.peak_mb:.0f} MB, "
    f"{ratio:.2f} times what the measurement with the lower threshold finds"
    + (" (less: part of the step ran in memory that the warm-up step had freed and the process kept). "
       if ratio < 0.95 else " (about the same on this run: the warm-up's freed memory was not reused much). ")
    + f"And `tracemalloc` sees a peak of {traced_peak_mb:.1f} MB for a step whose tensors take tens of MB: "
    "it is blind to PyTorch's tensor memory."))

# %% [markdown]
# ## A.3 How Chapter 2 counts the memory of the meta-gradient's graph
#
# [Chapter 2](02_bilevel_optimisation.ipynb), section 2.7, measures something narrower and exact:
# how many bytes autograd keeps alive for the backward pass when the meta-loss is ready to be
# differentiated, for second- and first-order MAML with 1 to 10 inner steps. Measuring the process
# would be too coarse there (the sinusoid MLP's graph is well under a megabyte, the
# process's memory moves by more than that for unrelated reasons), so the chapter counts tensors
# instead, with a small context manager, `RetainedGraphMemory`, defined in that section:
#
# - Inside `with RetainedGraphMemory() as memory:`, a `torch.autograd.graph.saved_tensors_hooks`
#   pair is active. Autograd calls its *pack* hook for every tensor it saves for the backward
#   pass (an activation, an input of a product, the intermediate results of a differentiable
#   inner gradient); the hook records a **weak reference** to the tensor, the address of its
#   storage (`untyped_storage().data_ptr()`) and the storage's size in bytes, and returns the
#   tensor unchanged. The *unpack* hook returns it as it is, so the computation is untouched.
# - `memory.alive_bytes()` then adds up the sizes of the storages whose tensors are **still
#   alive** (the weak reference has not died) and counts each **storage once** (a dict keyed by
#   address). Weak references matter because first-order MAML frees each inner step's graph once
#   its gradient is taken: those tensors were saved, but are no longer held. Counting storages,
#   not tensors, matters because views share memory: the per-task copies of the weights made
#   with `p.expand(25, ...)` are 25 views of one storage, and a saved view of a saved tensor
#   costs nothing extra.
#
# What it does not count: tensors that autograd does not save (a step's output that nothing
# needs for backward) and memory outside tensors (the graph's nodes themselves, the allocator's
# slack). For the question of section 2.7, "what does backpropagating through $k$ inner steps
# keep?", that is exactly the right quantity, and it is the same on every machine and every run.
#
# ## A.4 The embedding cache of Chapter 4
#
# A metric learner (ProtoNet, Matching Networks, Relation Networks, the nearest-centroid
# baseline) embeds every image with a backbone that does not depend on the task. Evaluating one
# on 600 episodes per setting would embed the same test drawings over and over. [Chapter
# 4](04_prototypical_networks.ipynb) (section 4.4, "Evaluating metric learners cheaply", and
# section 4.5) instead embeds every image once:
#
# - **`cached(learner)`** returns two things: a copy of the Omniglot dataset in which every image
#   of the test split is replaced by its embedding (images of other splits become zeros; they
#   are never drawn), and the same kind of learner with an **identity backbone** (for ProtoNet
#   and Matching Networks a flatten, with Matching Networks' learned scale kept fixed; the
#   nearest-centroid baseline keeps its base-class mean; Relation Networks keep their relation
#   module). Episodes on the cached dataset give the same per-episode accuracies as the full
#   network, because the samplers choose dataset indices by label and only then look up the
#   "images"; with the same seed they draw the very same episodes. The chapter checks this on ten
#   episodes per learner (`torch.allclose` of the per-episode accuracies).
# - **`cached_ensemble(nets, tta)`** does the same for the shipped ensemble of ProtoNets. A
#   memo (`STORED`) keeps each network's embeddings of the validation and test images, computed
#   once per network and test-time-augmentation setting (with augmentation: the mean embedding of
#   an image and its four 1-pixel shifts), so the variants that section 4.6 compares, which share
#   members, never embed an image twice. The members' embeddings are stacked into a dataset of
#   shape `[images, members, D, 1]`, and the ensemble is rebuilt from "backbones" that each pick
#   their member's slice, with the test-time shifts switched off (they are already averaged into
#   the stored embeddings).
#
# MAML has no such shortcut: its network changes with every task, so each episode runs it anew.
# What the cache saves, in embeddings computed for Chapter 4's evaluation of one learner
# (600 episodes per setting, 5 queries per class at 5-way and 2 at 20-way):

# %%
test_images = int(torch.isin(omniglot.labels, omniglot.classes_of("test")).sum())
per_episode = {(n, k): n * (k + {5: 5, 20: 2}[n]) for n, k in [(5, 1), (5, 5), (20, 1), (20, 5)]}
episodes = 600  # per setting, as in Chapter 4 (arithmetic only, so the same in quick mode)
without_cache = episodes * sum(per_episode.values())
print(f"test split: {test_images:,} images, embedded once with the cache")
print("without it: " + " + ".join(f"{episodes} x {v}" for v in per_episode.values())
      + f" = {without_cache:,} embeddings ({without_cache / test_images:.0f} times as many)")

# %% [markdown]
# ---
# Back to the chapters: [Chapter 2](02_bilevel_optimisation.ipynb) (section 2.7),
# [Chapter 3](03_maml_from_scratch.ipynb) (section 3.3), [Chapter 4](04_prototypical_networks.ipynb)
# (sections 4.4 and 4.5).
