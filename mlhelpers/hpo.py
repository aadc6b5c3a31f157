"""Hyperparameter optimisation of meta-learners with Optuna. Chapter 6.

:func:`learner_objective` turns a learner configuration into an Optuna objective: a trial trains
on the meta-training tasks and reports validation accuracy as it goes, so a pruner can stop it
early; every trial sees the same tasks (the samplers are rewound), so trials differ by their
settings, not their luck. :func:`open_study` keeps a study in a journal file that processes share
and later runs resume, or in a database (``postgresql://...``) that workers on several machines
share; :func:`warm_start` enqueues the best settings of earlier studies::

    def build(trial):
        learner = MAML(conv4(out_features=5, norm="task"),
                       inner_lr=trial.suggest_float("inner_lr", 0.01, 1.0, log=True))
        return TrialSetup(learner, torch.optim.Adam(learner.parameters(), lr=1e-3), meta_batch_size=4)

    objective = learner_objective(build, train_sampler, val_sampler, steps=600, report_every=100)
    study = open_study("maml", "studies/maml.log", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=30)
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import optuna
import torch
from torch import nn

from mlhelpers.evaluation import evaluate
from mlhelpers.journal import SafeJournalFileBackend, repair_journal
from mlhelpers.seeding import seed_everything
from mlhelpers.training import meta_train
from mlhelpers.validation import NonFiniteError, check_positive_int, check_steps


@dataclass
class TrialSetup:
    """What a trial trains: a learner, its outer optimiser and the meta-batch size."""

    learner: nn.Module
    optimizer: torch.optim.Optimizer
    meta_batch_size: int = 4


def _rewinder(name: str, sampler) -> Callable[[], None]:
    """A function that puts ``sampler`` back in its current random state."""
    if not callable(getattr(sampler, "state_dict", None)):
        raise TypeError(f"{name} must be a TaskSampler (with state_dict()), got {type(sampler).__name__}")
    state = copy.deepcopy(sampler.state_dict())
    return lambda: sampler.load_state_dict(copy.deepcopy(state))


def learner_objective(
    build: Callable[[optuna.Trial], TrialSetup],
    train_sampler,
    val_sampler,
    *,
    steps: int,
    report_every: int,
    val_episodes: int = 100,
    seed: int = 0,
) -> Callable[[optuna.Trial], float]:
    """An Optuna objective: build a learner from the trial, meta-train it, return validation accuracy.

    ``build(trial)`` returns a :class:`TrialSetup` (it calls ``trial.suggest_*``). A trial trains for
    ``steps`` steps on ``train_sampler`` and every ``report_every`` steps reports the accuracy on the
    same ``val_episodes`` episodes of ``val_sampler`` (a trial the pruner rejects raises
    ``optuna.TrialPruned``). ``seed`` seeds every trial's initialisation. A trial that diverges (a
    :class:`~mlhelpers.validation.NonFiniteError` in training or validation) is pruned, with the step
    in its user attribute ``"diverged_at"``.

    The objective also takes ``objective(trial, steps=n)``: train for ``n`` steps instead (the
    fidelity a multi-fidelity optimiser such as SMAC's Hyperband asks for; Chapter 6); reports stay
    every ``report_every`` steps, and the value is the accuracy after ``n`` steps.
    """
    if not callable(build):
        raise TypeError(f"build must be a callable trial -> TrialSetup, got {type(build).__name__}")
    check_positive_int("steps", steps)
    check_positive_int("report_every", report_every)
    check_positive_int("val_episodes", val_episodes)
    rewind_train, rewind_val = _rewinder("train_sampler", train_sampler), _rewinder("val_sampler", val_sampler)

    default_steps = steps

    def objective(trial: optuna.Trial, steps: int | None = None) -> float:
        steps = default_steps if steps is None else check_positive_int("steps", steps)
        seed_everything(seed)
        setup = build(trial)
        if not isinstance(setup, TrialSetup):
            raise TypeError(f"build(trial) must return a TrialSetup, got {type(setup).__name__}")
        rewind_train()
        done, value = 0, float("nan")
        while done < steps:
            chunk = min(report_every, steps - done)
            try:
                meta_train(setup.learner, train_sampler, steps=chunk, meta_batch_size=setup.meta_batch_size,
                           optimizer=setup.optimizer, progress=False)
                rewind_val()
                value = evaluate(setup.learner, val_sampler, val_episodes).mean
            except NonFiniteError as error:
                trial.set_user_attr("diverged_at", done)
                raise optuna.TrialPruned(f"diverged within steps {done + 1}..{done + chunk}") from error
            done += chunk
            trial.report(value, done)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {done} with validation {value:.3f}")
        return value

    return objective


def is_database_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a database URL (``postgresql://...``, ``sqlite:///...``) rather than a file."""
    return isinstance(path, str) and "://" in path


def open_study(
    name: str,
    path: str | os.PathLike,
    *,
    direction: str = "maximize",
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    heartbeat: int | None = None,
    retries: int = 0,
) -> optuna.Study:
    """Create the study ``name`` in the journal file or database ``path``, or load it if it exists (a
    ValueError if it exists with another ``direction``).

    A journal file (append-only, with file locks) can be shared by processes on one machine or a
    network file system, and a later run resumes the study. A journal torn by a crash or a full disk
    is repaired first (:func:`~mlhelpers.journal.repair_journal`, with a warning) and appends never
    follow a torn line (:class:`~mlhelpers.journal.SafeJournalFileBackend`): every completed trial
    stays readable.

    A database URL (``postgresql://user@host:5432/db``; SQLAlchemy's form, ``postgresql+psycopg2://``
    too) is what workers on several machines share (appendix "Scaling out"; the driver comes with
    ``pip install "mlhelpers[postgres]"``). There, with ``heartbeat`` (seconds), each running trial
    records a heartbeat; a trial whose worker died is marked failed once its heartbeat is
    ``2 * heartbeat`` seconds old (checked when any worker starts a trial) and, with ``retries`` > 0,
    its settings are enqueued again up to ``retries`` times (Optuna's ``RetryFailedTrialCallback``).
    Heartbeats need a database: a ValueError for a journal file.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str (the study's name), got {type(name).__name__} {name!r}")
    retries = check_steps("retries", retries)
    if heartbeat is not None:
        check_positive_int("heartbeat", heartbeat)
    if is_database_url(path):
        storage = _database_storage(path, heartbeat, retries)
    else:
        if heartbeat is not None or retries:
            raise ValueError(f"heartbeat and retries need a database storage (postgresql://...), got the "
                             f"journal file {os.fspath(path)!r}")
        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        repair_journal(path)
        storage = optuna.storages.JournalStorage(SafeJournalFileBackend(path))
    study = optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ValueError(
            f"study {name!r} in {path!r} exists with direction={study.direction.name.lower()!r}, "
            f"but direction={direction!r} was given: pass its direction, or another name or path"
        )
    return study


def _database_storage(url: str, heartbeat: int | None, retries: int) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage on ``url``; a ModuleNotFoundError that names the extra if the driver is missing."""
    import sqlalchemy.engine
    import sqlalchemy.exc  # Optuna's own dependency, needed only here

    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        os.makedirs(os.path.dirname(parsed.database) or ".", exist_ok=True)  # as for a journal file

    callback = optuna.storages.RetryFailedTrialCallback(max_retry=retries) if retries else None
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat if heartbeat is not None else None, failed_trial_callback=callback)
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                f"the database driver for {url.split('://')[0]}:// is missing ({error}); for PostgreSQL: "
                "pip install 'mlhelpers[postgres]'") from error
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers that open a fresh database at once race to create Optuna's tables (PostgreSQL:
            # "duplicate key ... pg_type_typname_nsp_index"); the loser finds them made on its next try.
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def warm_start(study: optuna.Study, sources: Iterable[optuna.Study], top_k: int = 3) -> int:
    """Enqueue the ``top_k`` best complete trials' settings of each source study into ``study``.

    Returns how many settings were enqueued (duplicates once). The new study evaluates them first,
    then its sampler takes over: knowledge from related tasks is a starting point, not an answer.
    Parameters the new study does not suggest are ignored by Optuna.
    """
    check_positive_int("top_k", top_k)
    seen, count = [], 0
    for source in sources:
        complete = [t for t in source.trials if t.state == optuna.trial.TrialState.COMPLETE]
        reverse = source.direction == optuna.study.StudyDirection.MAXIMIZE
        for trial in sorted(complete, key=lambda t: t.value, reverse=reverse)[:top_k]:
            if trial.params not in seen:
                seen.append(trial.params)
                study.enqueue_trial(trial.params)
                count += 1
    return count
