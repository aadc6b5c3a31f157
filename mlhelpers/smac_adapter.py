"""SMAC (SMAC3) on the objective written for Optuna. Chapter 6.

An objective from :func:`mlhelpers.hpo.learner_objective` asks an ``optuna.Trial`` for its
settings (``trial.suggest_*``). SMAC instead hands a ``ConfigSpace.Configuration`` to a target
function ``train(config, seed, budget) -> cost``. This module bridges the two, so the objective is
written once:

- :func:`search_space` reads the Optuna distributions a ``build`` function suggests;
- :func:`to_configspace` turns them into a ``ConfigSpace.ConfigurationSpace``;
- :func:`smac_target` wraps the objective as SMAC's target function (cost = minus accuracy; the
  SMAC budget is the number of training steps);
- :func:`run_smac` runs SMAC's random-forest Bayesian optimisation (``multi_fidelity=False``) or its
  multi-fidelity facade (Hyperband over training steps, the BOHB recipe with a random forest) until
  the trials have used a budget of training steps, and returns every trial as an Optuna study, so
  the chapter's plots and tables read SMAC and Optuna runs alike.

``smac`` and ``ConfigSpace`` are in the book's extra (``pip install "mlhelpers[book]"``);
``import mlhelpers`` does not import them, only this module does::

    objective = learner_objective(build, train_sampler, val_sampler, steps=150, report_every=25)
    space = search_space(build, {"width": 16, "lr": 1e-3})
    study = run_smac(objective, space, budget_steps=1500, max_steps=150, min_steps=25,
                     multi_fidelity=True, seed=0)
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable

import numpy as np
import optuna
from ConfigSpace import (
    CategoricalHyperparameter,
    Configuration,
    ConfigurationSpace,
    Float,
    Integer,
    OrdinalHyperparameter,
)
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from mlhelpers.validation import NonFiniteError, check_bool, check_number, check_positive_int

Distributions = dict[str, BaseDistribution]


def search_space(build: Callable[[optuna.Trial], object], example: dict) -> Distributions:
    """The distributions ``build(trial)`` suggests, read by calling it once on ``FixedTrial(example)``.

    ``example`` is any valid setting (every name ``build`` asks for, with a value inside its range);
    ``build`` is called once, so it should be cheap (constructing a learner is).
    """
    trial = optuna.trial.FixedTrial(example)
    build(trial)
    return dict(trial.distributions)


def to_configspace(distributions: Distributions, seed: int = 0) -> ConfigurationSpace:
    """A ``ConfigurationSpace`` with one hyperparameter per Optuna distribution.

    Floats and integers keep their range and log scale; an integer with ``step > 1`` becomes an
    ordinal hyperparameter over its values (ConfigSpace integers have no step); categoricals stay
    categorical. Values map back unchanged (:func:`to_params`).
    """
    space = ConfigurationSpace(seed=seed)
    for name, d in distributions.items():
        if isinstance(d, FloatDistribution):
            if d.step is not None:
                raise ValueError(f"{name}: a float with a step has no ConfigSpace equivalent; use a categorical")
            space.add(Float(name, (d.low, d.high), log=d.log))
        elif isinstance(d, IntDistribution):
            if d.step != 1:
                space.add(OrdinalHyperparameter(name, list(range(d.low, d.high + 1, d.step))))
            else:
                space.add(Integer(name, (d.low, d.high), log=d.log))
        elif isinstance(d, CategoricalDistribution):
            space.add(CategoricalHyperparameter(name, list(d.choices)))
        else:
            raise TypeError(f"{name}: unsupported distribution {type(d).__name__}")
    return space


def to_params(config: Configuration | dict) -> dict:
    """A SMAC configuration as the plain ``{name: value}`` dict Optuna's ``FixedTrial`` takes."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in dict(config).items()}


def smac_target(
    objective: Callable[..., float], *, maximize: bool = True, failed_value: float = 0.0
) -> Callable[..., float]:
    """SMAC's target function ``train(config, seed=0, budget=None) -> cost`` for an Optuna objective.

    The configuration becomes an ``optuna.trial.FixedTrial`` (whose pruner never stops it), so the
    objective runs exactly as under Optuna; ``budget`` (SMAC's fidelity) is passed on as
    ``objective(trial, steps=round(budget))`` (an objective of :func:`~mlhelpers.hpo.learner_objective`
    takes it). SMAC minimises, so the cost is ``-value`` when ``maximize``. A trial the objective
    prunes (it diverged) scores ``failed_value``. ``seed`` is ignored: the objective seeds itself,
    so a configuration has one score (run SMAC with ``deterministic=True``).
    """
    if not callable(objective):
        raise TypeError(f"objective must be callable, got {type(objective).__name__}")
    check_bool("maximize", maximize)
    failed_value = check_number("failed_value", failed_value)

    def train(config: Configuration, seed: int = 0, budget: float | None = None) -> float:
        trial = optuna.trial.FixedTrial(to_params(config))
        try:
            value = objective(trial) if budget is None else objective(trial, steps=int(round(budget)))
        except optuna.TrialPruned:
            value = failed_value
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"objective must return a number, got {type(value).__name__} {value!r}") from None
        if not math.isfinite(value):
            raise NonFiniteError(
                f"objective returned {value!r} for {to_params(config)}: SMAC needs a finite number; an objective "
                "should raise optuna.TrialPruned for a diverged trial (it then scores failed_value)")
        return -value if maximize else value

    return train


def run_smac(
    objective: Callable[..., float],
    distributions: Distributions,
    *,
    budget_steps: int,
    max_steps: int,
    min_steps: int | None = None,
    multi_fidelity: bool = False,
    n_initial: int = 5,
    eta: int = 3,
    seed: int = 0,
    name: str | None = None,
) -> optuna.Study:
    """Run SMAC on ``objective`` until its trials have used ``budget_steps`` training steps.

    ``multi_fidelity=False``: SMAC's ``HyperparameterOptimizationFacade`` (random-forest surrogate,
    expected improvement, ``n_initial`` Sobol points), every trial trained for ``max_steps``.
    ``multi_fidelity=True``: SMAC's ``MultiFidelityFacade``, Hyperband (``eta``) over budgets from
    ``min_steps`` to ``max_steps`` training steps, the random forest proposing the configurations
    (BOHB's recipe, with SMAC's model in place of BOHB's kernel densities). A configuration
    promoted to a larger budget is trained again from scratch, so each trial costs its full budget.

    Returns an in-memory Optuna study (maximising) with one trial per SMAC trial, in order: a trial
    at ``max_steps`` is COMPLETE with its value; one at a smaller budget is PRUNED with its value as
    the intermediate value at its step. Stops at the first trial that reaches ``budget_steps``.
    """
    from smac import HyperparameterOptimizationFacade, MultiFidelityFacade, Scenario
    from smac.model.random_forest import RandomForest
    from smac.runhistory.dataclasses import TrialValue

    check_positive_int("budget_steps", budget_steps)
    check_positive_int("max_steps", max_steps)
    check_positive_int("n_initial", n_initial)
    if check_bool("multi_fidelity", multi_fidelity):
        check_positive_int("min_steps", min_steps)
        if min_steps > max_steps:
            raise ValueError(f"min_steps ({min_steps}) must be <= max_steps ({max_steps})")
        if check_positive_int("eta", eta) < 2:
            raise ValueError(f"eta must be an int >= 2 (Hyperband keeps 1/eta of the trials at each rung), got {eta}")
    space = to_configspace(distributions, seed=seed)
    train = smac_target(objective)
    output = tempfile.mkdtemp(prefix="smac_")
    n_trials = 10 * math.ceil(budget_steps / (min_steps if multi_fidelity else max_steps)) + 10
    budgets = dict(min_budget=min_steps, max_budget=max_steps) if multi_fidelity else {}
    scenario = Scenario(space, deterministic=True, n_trials=n_trials, seed=seed, output_directory=output, **budgets)
    facade = MultiFidelityFacade if multi_fidelity else HyperparameterOptimizationFacade
    # The facades' default forest, but on one thread: SMAC's default (all cores, joblib threads)
    # spends most of its time waiting when the cores are shared.
    model = RandomForest(space, log_y=True, n_trees=10, ratio_features=1.0, min_samples_split=2, min_samples_leaf=1,
                         max_depth=2**20, seed=seed, n_jobs=1)
    smac = facade(
        scenario, train, model=model,
        initial_design=facade.get_initial_design(scenario, n_configs=n_initial),
        intensifier=facade.get_intensifier(scenario, eta=eta) if multi_fidelity else None,
        overwrite=True, logging_level=40,
    )
    study = optuna.create_study(direction="maximize", study_name=name)
    used = 0
    while used < budget_steps:
        info = smac.ask()
        steps = max_steps if info.budget is None else int(round(info.budget))
        cost = train(info.config, seed=info.seed, budget=info.budget if multi_fidelity else None)
        smac.tell(info, TrialValue(cost=cost), save=False)
        value = -cost
        params = to_params(info.config)
        if steps >= max_steps:
            trial = optuna.trial.create_trial(params=params, distributions=distributions, value=value,
                                              intermediate_values={max_steps: value})
        else:
            trial = optuna.trial.create_trial(params=params, distributions=distributions,
                                              state=optuna.trial.TrialState.PRUNED, intermediate_values={steps: value})
        study.add_trial(trial)
        used += steps
    return study
