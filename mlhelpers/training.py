"""The meta-training loop every chapter shares: sample tasks, minimise the meta-loss, validate, checkpoint.

Chapter 1 introduces it; Chapter 3 checks it against MAML written from scratch.

::

    history = meta_train(learner, train_sampler, steps=2000, meta_batch_size=4,
                         val_sampler=val_sampler, checkpoint_path="runs/protonet.pt", seed=0)

Run it again with the same ``checkpoint_path`` and it resumes where it stopped (or returns at once
if it already finished); on the CPU a resumed run ends with exactly the parameters of an
uninterrupted one.

The same script runs unchanged under ``torchrun --nproc_per_node=N`` (appendix "Scaling out",
:mod:`mlhelpers.distributed`): every rank takes ``meta_batch_size / N`` tasks of each meta-batch and
the meta-gradients are averaged, so the run computes what one process with the whole meta-batch
would; rank 0 alone validates, shows progress and writes (and locks) the checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from tqdm import tqdm  # text bars: readable live and in stored notebook outputs

from mlhelpers import __version__
from mlhelpers import distributed as dist
from mlhelpers.checkpoint import (
    _check_plain,
    check_writable,
    checkpoint_lock,
    config_differences,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mlhelpers.evaluation import evaluate
from mlhelpers.seeding import seed_everything
from mlhelpers.validation import NonFiniteError, check_positive, check_positive_int, describe


@dataclass
class History:
    """What a training run recorded, step by step.

    Attributes:
        steps, train_loss: the meta-loss of every optimizer step (steps count from 1).
        val_steps, val_metric, val_ci: the validation mean and 95% CI half-width at those steps.
        metric: what ``val_metric`` measures, ``"accuracy"`` or ``"mse"`` (None before validation).
        elapsed: wall-clock seconds spent training, summed over resumed runs.
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    val_ci: list[float] = field(default_factory=list)
    metric: str | None = None
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers, for checkpoints."""
        return {k: list(v) if isinstance(v, list) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> History:
        """The inverse of :meth:`to_dict`; a ValueError names unknown keys."""
        unknown = set(state) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"History.from_dict got unknown keys {sorted(unknown)}; expected a subset of "
                             f"{sorted(cls.__dataclass_fields__)}")
        return cls(**{k: list(v) if isinstance(v, (list, tuple)) else v for k, v in state.items()})

    def __len__(self) -> int:
        return len(self.steps)


def meta_train(
    learner: nn.Module,
    train_sampler,
    *,
    steps: int,
    meta_batch_size: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    val_sampler=None,
    val_every: int = 100,
    val_episodes: int = 100,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    seed: int | None = None,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    grad_clip: float | None = None,
) -> History:
    """Meta-train ``learner`` for ``steps`` optimizer steps on batches of ``meta_batch_size`` tasks.

    Each step minimises ``learner.meta_loss(train_sampler.sample(meta_batch_size))`` with ``optimizer``
    (default ``Adam(lr=1e-3)``), clipping the gradient norm to ``grad_clip`` if given, then steps
    ``scheduler`` (which must wrap ``optimizer``). At multiples of ``val_every`` the learner is
    evaluated on ``val_episodes`` episodes of ``val_sampler``. A non-finite loss stops the run with a
    :class:`~mlhelpers.validation.NonFiniteError` (a RuntimeError) naming the step, before anything is saved.

    Checkpoints go to ``checkpoint_path`` every ``checkpoint_every`` steps and at the end; if the file
    exists, training resumes from it, provided its configuration matches (``config`` plus
    ``meta_batch_size``, ``grad_clip`` and the optimizer's and scheduler's classes; a ValueError lists
    differences). A resumed run must also be given the same optimizer settings (learning rate,
    betas, weight decay, ...; with a scheduler, its initial learning rate) and a training sampler of
    the same kind and settings (ways, shots, ...; :func:`sampler_settings`) and a learner with the same
    settings (``inner_lr``, ``inner_steps``, ...; :func:`learner_settings`) as the run that wrote the
    checkpoint, else a ValueError names what differs: the checkpoint's values would silently replace
    the ones given. ``seed`` seeds Python, NumPy and PyTorch at the start of a fresh run. Batches are
    moved to the device of the learner's parameters.

    Under ``torchrun`` (``WORLD_SIZE`` > 1; :mod:`mlhelpers.distributed`) every rank must be given the
    same arguments; it draws the whole meta-batch from its sampler (rank 0's random state is given to
    every rank at the start) and trains on its share, ``meta_batch_size`` divided by the number of
    processes (a ValueError if it does not divide); the ranks' meta-gradients and losses are averaged
    before each optimizer step, so the parameters follow the run of one process with the whole
    meta-batch. Rank 0 alone validates (every rank's History gets the result), shows the progress
    bar, locks and writes the checkpoint (with every rank's global random state); on resume rank 0
    reads it and gives its state to every rank. An error that rank 0 meets alone (a config that does
    not match the checkpoint, a locked path) is raised on every rank.

    While it runs, ``checkpoint_path`` is locked (:func:`~mlhelpers.checkpoint.checkpoint_lock`): a
    second run on the same path, in this process or another, raises
    :class:`~mlhelpers.checkpoint.CheckpointInUseError` instead of overwriting the first one's
    checkpoints. An empty path, a directory or a place where no file can be written is refused before
    any training time is spent.
    """
    params, optimizer, grad_clip = _check_arguments(
        learner, train_sampler, val_sampler, optimizer, scheduler, seed=seed, grad_clip=grad_clip, steps=steps,
        meta_batch_size=meta_batch_size, val_every=val_every, val_episodes=val_episodes,
        checkpoint_every=checkpoint_every)
    loop = {"meta_batch_size": meta_batch_size, "grad_clip": grad_clip, "optimizer": type(optimizer).__name__}
    if scheduler is not None:  # only then, so that checkpoints of runs without one still resume
        loop["scheduler"] = type(scheduler).__name__
    run_config = _run_config(config, **loop)
    if dist.setup(params[0].device):
        _check_same_on_every_rank(run_config, train_sampler, steps=steps, val_every=val_every,
                                  val_episodes=val_episodes, checkpoint_every=checkpoint_every, seed=seed,
                                  checkpointing=checkpoint_path is not None)
        if meta_batch_size % dist.world_size():
            raise ValueError(f"meta_batch_size={meta_batch_size} does not split evenly over {dist.world_size()} "
                             "processes; choose a multiple of the number of processes")
    if checkpoint_path is None:
        return _meta_train(learner, train_sampler, val_sampler, None, params, optimizer, scheduler, run_config,
                           grad_clip=grad_clip, steps=steps, meta_batch_size=meta_batch_size, val_every=val_every,
                           val_episodes=val_episodes, checkpoint_every=checkpoint_every, seed=seed, progress=progress)
    lock = contextlib.ExitStack()  # held by rank 0 only

    def acquire() -> None:
        check_writable(checkpoint_path)
        lock.enter_context(checkpoint_lock(checkpoint_path))

    dist.on_main(acquire if dist.is_main() else None)
    with lock:
        return _meta_train(learner, train_sampler, val_sampler, Path(checkpoint_path), params, optimizer, scheduler,
                           run_config, grad_clip=grad_clip, steps=steps, meta_batch_size=meta_batch_size,
                           val_every=val_every, val_episodes=val_episodes, checkpoint_every=checkpoint_every,
                           seed=seed, progress=progress)


def _meta_train(
    learner: nn.Module, train_sampler: Any, val_sampler: Any, path: Path | None, params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer, scheduler: LRScheduler | None, run_config: dict[str, Any], *,
    grad_clip: float | None, steps: int, meta_batch_size: int, val_every: int, val_episodes: int,
    checkpoint_every: int, seed: int | None, progress: bool,
) -> History:
    """The loop of :func:`meta_train`, its arguments checked (and ``path`` locked by rank 0)."""
    samplers = {"train": train_sampler, "val": val_sampler}
    main, several = dist.is_main(), dist.is_distributed()

    def resume() -> dict[str, Any] | None:
        if path is None or not path.exists():
            return None
        return _resume(path, run_config, learner, optimizer, scheduler, samplers, steps=steps, seed=seed)

    state = dist.on_main(resume if main else None)  # rank 0 reads the checkpoint and restores from it
    if state is not None:
        if not main:
            _restore(path, state, learner, optimizer, scheduler, samplers)
        start, history, seed = int(state["step"]), History.from_dict(state["history"]), state.get("seed", seed)
        ranks = state.get("rng_ranks") or [state["rng"]]
        if dist.rank() < len(ranks):
            set_rng_state(ranks[dist.rank()])
        else:  # resumed on more processes than wrote the checkpoint
            _seed_rank(seed)
    else:
        if seed is not None:
            seed_everything(seed)
        start, history = 0, History()
        if several:  # every rank starts from rank 0's weights and sampler states, as DDP does
            _restore(None, dist.broadcast(_start_state(learner, optimizer, scheduler, samplers) if main else None),
                     learner, optimizer, scheduler, samplers)
            _seed_rank(seed)

    was_training = learner.training
    elapsed_before, t0 = history.elapsed, time.perf_counter()
    last_saved = start if state is not None else None
    learner.train()
    try:
        with tqdm(total=steps, initial=start, desc="meta-train", unit="step", disable=not (progress and main),
                  dynamic_ncols=True) as bar:
            for step in range(start + 1, steps + 1):
                batch = train_sampler.sample(meta_batch_size)
                value = _train_step(learner, dist.shard(batch) if several else batch, optimizer, params, grad_clip,
                                    where=(step, path, last_saved))
                if scheduler is not None:
                    scheduler.step()
                history.steps.append(step)
                history.train_loss.append(value)
                if val_sampler is not None and step % val_every == 0:
                    _validate(learner, val_sampler, val_episodes, history, step)
                history.elapsed = elapsed_before + time.perf_counter() - t0
                if path is not None and (step % checkpoint_every == 0 or step == steps):
                    rngs = dist.gather(rng_state()) if several else None
                    dist.on_main(functools.partial(_save, path, step, learner, optimizer, scheduler, samplers,
                                                   history, run_config, seed, rngs) if main else None)
                    last_saved = step
                bar.set_postfix_str(_postfix(history), refresh=False)
                bar.update(1)
    finally:
        learner.train(was_training)
    return history


def _check_arguments(
    learner: Any, train_sampler: Any, val_sampler: Any, optimizer: Any, scheduler: Any, *, seed: Any,
    grad_clip: Any, **counts: Any,
) -> tuple[list[nn.Parameter], torch.optim.Optimizer, float | None]:
    """Check :func:`meta_train`'s arguments; return the trainable parameters, the optimizer (Adam by
    default) and ``grad_clip`` as a float (or None)."""
    if not isinstance(learner, nn.Module) or not callable(getattr(learner, "meta_loss", None)):
        raise TypeError(f"learner must be a MetaLearner (an nn.Module with meta_loss), got {type(learner).__name__}")
    if not callable(getattr(train_sampler, "sample", None)):
        raise TypeError(f"train_sampler must be a TaskSampler, got {type(train_sampler).__name__}")
    if val_sampler is not None and not callable(getattr(val_sampler, "sample", None)):
        raise TypeError(f"val_sampler must be a TaskSampler or None, got {type(val_sampler).__name__}")
    for name, value in counts.items():
        check_positive_int(name, value)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")
    if grad_clip is not None:
        grad_clip = check_positive("grad_clip", grad_clip)
    params = [p for p in learner.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"learner {type(learner).__name__} has no trainable parameters")
    if optimizer is None:
        optimizer = torch.optim.Adam(params, lr=1e-3)
    elif not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if scheduler is not None:
        if not isinstance(scheduler, LRScheduler):
            raise TypeError(f"scheduler must be a torch.optim.lr_scheduler.LRScheduler or None, "
                            f"got {type(scheduler).__name__}")
        if scheduler.optimizer is not optimizer:
            raise ValueError("scheduler must schedule the optimizer given to meta_train (scheduler.optimizer "
                             "is another one; with optimizer=None, build the optimizer yourself and pass both)")
    return params, optimizer, grad_clip


def _resume(
    path: Path,
    run_config: dict[str, Any],
    learner: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None,
    samplers: dict[str, Any],
    *,
    steps: int,
    seed: int | None,
) -> dict[str, Any]:
    """Restore a run from the checkpoint at ``path`` (whose config must be ``run_config``); return its
    state, whose step, history, seed and random states the caller takes."""
    state = load_checkpoint(path, expected_config=run_config)
    if seed is not None and state.get("seed") is not None and state["seed"] != seed:
        raise ValueError(
            f"checkpoint {str(path)!r} was written by a run with seed={state['seed']}, "
            f"but seed={seed} was given"
        )
    missing = sorted(_CHECKPOINT_KEYS - set(state))
    if missing:
        raise ValueError(
            f"checkpoint {str(path)!r} lacks {missing}: it was not written by meta_train; "
            "use another checkpoint_path"
        )
    _check_same_optimizer(path, state["optimizer"], optimizer, scheduler)
    _check_same_settings(path, state.get("sampler_settings"), sampler_settings(samplers["train"]),
                         "on another train_sampler", "mix two task distributions", "the sampler")
    _check_same_settings(path, state.get("learner_settings"), learner_settings(learner),
                         "with other learner settings", "continue with the new ones on weights meta-learned "
                         "for the saved ones", "the learner")
    start = int(state["step"])
    if start > steps:
        raise ValueError(f"checkpoint {str(path)!r} is at step {start}, beyond steps={steps}")
    _restore(path, state, learner, optimizer, scheduler, samplers)
    return state


def _restore(path: Path | None, state: dict[str, Any], learner: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: LRScheduler | None, samplers: dict[str, Any]) -> None:
    """Load the weights, optimizer, scheduler and sampler states of a checkpoint (or of
    :func:`_start_state`) into the run's objects."""
    try:
        learner.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(
            f"checkpoint {str(path)!r} holds the weights of another model than "
            f"learner={type(learner).__name__}: {error}"
        ) from None
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as error:
        raise ValueError(
            f"checkpoint {str(path)!r} holds the state of another optimizer than the "
            f"{type(optimizer).__name__} given: {error}"
        ) from None
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    samplers["train"].load_state_dict(state["samplers"]["train"])
    if samplers["val"] is not None and state["samplers"].get("val") is not None:
        samplers["val"].load_state_dict(state["samplers"]["val"])


def _start_state(learner: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler | None,
                 samplers: dict[str, Any]) -> dict[str, Any]:
    """What rank 0 gives every rank at the start of a fresh distributed run (as :func:`_restore` reads it)."""
    return {
        "model": learner.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "samplers": {name: s.state_dict() if s is not None else None for name, s in samplers.items()},
    }


def _seed_rank(seed: int | None) -> None:
    """Give ranks other than 0 global random streams of their own (dropout in one rank's tasks must
    not repeat another's): derived from ``seed``, or fresh entropy without one."""
    rank = dist.rank()
    if rank == 0:
        return
    if seed is not None:
        seed_everything((seed + rank * 0x9E3779B97F4A7C15) % 2**63)
    else:
        seed_everything(int(torch.seed()) % 2**63)


def _check_same_on_every_rank(run_config: dict[str, Any], train_sampler: Any, **settings: Any) -> None:
    """A ValueError on every rank if the ranks were given different settings (config, sampler, steps, ...)."""
    mine = {"config": run_config, "sampler": sampler_settings(train_sampler), **settings}
    everyone = dist.gather(mine)
    for rank, theirs in enumerate(everyone):
        differences = config_differences(everyone[0], theirs)
        if differences:
            lines = "; ".join(f"{k!r}: rank 0 {a!r}, rank {rank} {b!r}" for k, (a, b) in differences.items())
            raise ValueError(f"meta_train was given other settings on rank {rank} than on rank 0 ({lines}); "
                             "every process must run the same training")


_SCHEDULED = ("lr", "initial_lr")
"""Optimizer settings a scheduler changes as it steps (its initial learning rate is compared instead)."""


def _check_same_optimizer(path: Path, saved: Any, optimizer: torch.optim.Optimizer,
                          scheduler: LRScheduler | None) -> None:
    """A ValueError if ``optimizer``'s settings (learning rate, betas, ...) differ from the saved ones,
    which loading the saved state would silently put in their place."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        count = len(groups) if isinstance(groups, list) else "no"
        raise ValueError(
            f"checkpoint {str(path)!r} holds an optimizer with {count} parameter groups, the "
            f"{type(optimizer).__name__} given has {len(optimizer.param_groups)}"
        )
    lines = []
    for i, (old, new) in enumerate(zip(groups, optimizer.param_groups)):
        def settings(group: dict) -> dict:
            skip = {"params", "initial_lr", "lr"} if scheduler is not None else {"params", "initial_lr"}
            kept = {k: v for k, v in group.items() if k not in skip}
            if scheduler is not None and "initial_lr" in group:
                kept["initial lr"] = group["initial_lr"]
            return kept
        for key, (a, b) in config_differences(settings(old), settings(new)).items():
            lines.append(f"{key!r}" + (f" of group {i}" if len(groups) > 1 else "") + f": saved {a!r}, given {b!r}")
    if lines:
        raise ValueError(
            f"checkpoint {str(path)!r} was written with other optimizer settings ({'; '.join(lines)}); "
            "resuming would silently use the saved ones. Pass the settings the run started with, or "
            "another checkpoint_path to train with the new ones"
        )


def _check_same_settings(path: Path, saved: dict[str, Any] | None, given: dict[str, Any], trained: str,
                         consequence: str, what: str) -> None:
    """A ValueError naming every setting of ``given`` that differs from the ``saved`` ones (None: a
    checkpoint written before they were stored, which resumes as before)."""
    differences = config_differences(saved, given) if saved is not None else {}
    if differences:
        lines = "; ".join(f"{k!r}: saved {a!r}, given {b!r}" for k, (a, b) in differences.items())
        raise ValueError(
            f"checkpoint {str(path)!r} was trained {trained} ({lines}); resuming would {consequence}. "
            f"Pass {what} the run started with, or another checkpoint_path"
        )


def learner_settings(learner: nn.Module) -> dict[str, Any]:
    """The learner's class and the settings it was built with that are not weights (``inner_lr``,
    ``inner_steps``, ``first_order``, ``num_context``, ``gamma``, ...): the attributes, read as
    :func:`sampler_settings` reads a sampler's, named like an argument of the ``__init__`` of one of
    the package's learner classes it derives from, but ``strategy`` (how the tasks of a batch are run,
    with the same results). A subclass's own attributes are not read (they may be counters). Stored
    in checkpoints to refuse resuming with other settings."""
    names = {"class"}
    for klass in type(learner).__mro__:
        if klass.__module__.startswith("mlhelpers.") and "__init__" in vars(klass):
            names |= set(inspect.signature(klass.__init__).parameters) - {"self", "strategy"}
    return {key: value for key, value in sampler_settings(learner).items() if key in names}


def sampler_settings(sampler: Any) -> dict[str, Any]:
    """What defines a sampler's task distribution, as plain values: its class and every public
    attribute that is a number, string, bool or None (ways, shots, split, ranges, ...), with those of
    a wrapped ``sampler.sampler`` under ``"inner"``. Stored in checkpoints to refuse resuming with
    another sampler."""
    settings: dict[str, Any] = {"class": type(sampler).__name__}
    for key, value in sorted(vars(sampler).items()) if hasattr(sampler, "__dict__") else []:
        if key.startswith("_"):
            continue
        if isinstance(value, (str, int, float, bool, type(None))):
            settings[key] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, (str, int, float, bool)) for v in value):
            settings[key] = list(value)
        elif key == "sampler" and callable(getattr(value, "sample", None)):
            settings["inner"] = sampler_settings(value)
    return settings


def _train_step(
    learner: nn.Module, batch: Any, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
    grad_clip: float | None, where: tuple[int, Path | None, int | None],
) -> float:
    """One optimizer step on ``batch`` (moved to the parameters' device); return the loss.

    A non-finite loss or clipped gradient norm stops it before the optimizer step with a NonFiniteError
    naming ``where``: (step, checkpoint path, step of the last checkpoint saved)."""
    if batch.device != params[0].device:
        batch = batch.to(params[0].device)
    optimizer.zero_grad(set_to_none=True)
    loss = learner.meta_loss(batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"learner.meta_loss must return a scalar tensor, got {describe(loss)}")
    if dist.is_distributed():  # the ranks' mean loss and meta-gradient: every rank decides alike
        loss.backward()
        value = dist.average_gradients(params, loss)
        if not math.isfinite(value):
            raise NonFiniteError(_non_finite_message("loss", value, *where))
    else:
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteError(_non_finite_message("loss", value, *where))
        loss.backward()
    if grad_clip is not None:
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
        if not math.isfinite(norm):
            raise NonFiniteError(_non_finite_message("gradient norm", norm, *where))
    optimizer.step()
    return value


def _save(
    path: Path, step: int, learner: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler | None,
    samplers: dict[str, Any], history: History, run_config: dict[str, Any], seed: int | None,
    rngs: list[dict[str, Any]] | None = None,
) -> None:
    """Write the checkpoint of a run at ``step`` (what :func:`_resume` reads back); ``rngs``: every
    rank's global random state, in a distributed run."""
    extra = {"rng_ranks": rngs} if rngs is not None else {}
    save_checkpoint(path, {
        "model": learner.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": step,
        "history": history.to_dict(),
        "samplers": {name: s.state_dict() if s is not None else None for name, s in samplers.items()},
        "rng": rng_state(),
        "config": run_config,
        "seed": seed,
        "sampler_settings": sampler_settings(samplers["train"]),
        "learner_settings": learner_settings(learner),
        "version": __version__,
        **extra,
    })


def _validate(learner: nn.Module, val_sampler: Any, val_episodes: int, history: History, step: int) -> None:
    """Evaluate ``learner`` on ``val_episodes`` episodes (on rank 0; every rank gets the result), record it
    at ``step``, back to train mode."""
    result = dist.on_main((lambda: evaluate(learner, val_sampler, num_episodes=val_episodes)) if dist.is_main()
                          else None)
    learner.train()
    history.val_steps.append(step)
    history.val_metric.append(result.mean)
    history.val_ci.append(result.ci95)
    history.metric = result.metric


_CHECKPOINT_KEYS = frozenset({"model", "optimizer", "step", "history", "samplers", "rng", "config", "seed", "version"})
"""What a checkpoint of :func:`meta_train` holds."""


def _run_config(config: dict[str, Any] | None, **loop: Any) -> dict[str, Any]:
    """The user's ``config`` plus the loop settings that change the trained parameters."""
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise TypeError(f"config must be a plain dict or None, got {type(config).__name__}")
    _check_plain(config, "config")
    merged = dict(config)
    for key, value in loop.items():
        if key in merged and merged[key] != value:
            raise ValueError(f"config[{key!r}]={merged[key]!r} disagrees with the argument {key}={value!r}")
        merged[key] = value
    return merged


def _non_finite_message(what: str, value: float, step: int, path: Path | None, last_saved: int | None) -> str:
    message = f"meta_train: non-finite {what} ({value}) at step {step}; stopped before the optimizer step"
    if path is not None:
        if last_saved is not None:
            message += f". The last checkpoint {str(path)!r} (step {last_saved}) is left unchanged"
        else:
            message += f". No checkpoint was written to {str(path)!r}"
    return message


def _postfix(history: History) -> str:
    recent = history.train_loss[-50:]
    text = f"loss={sum(recent) / len(recent):.4f}"
    if history.val_metric:
        mean, ci = history.val_metric[-1], history.val_ci[-1]
        if history.metric == "accuracy":
            text += f" val_acc={100 * mean:.1f}%±{100 * ci:.1f}"
        else:
            text += f" val_{history.metric}={mean:.3g}±{ci:.2g}"
    return text
