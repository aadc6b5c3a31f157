"""The SMAC adapter: one objective for Optuna and SMAC, SMAC finds a known optimum, smac stays optional."""

from __future__ import annotations

import math
import subprocess
import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from test_hpo import build, objective

pytest.importorskip("smac")
from ConfigSpace import Configuration  # noqa: E402

from mlhelpers.smac_adapter import run_smac, search_space, smac_target, to_configspace, to_params  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_optuna_and_smac_give_the_same_configuration_the_same_score():
    space = search_space(build, {"width": 4, "lr": 0.01})
    assert set(space) == {"width", "lr"}
    configspace = to_configspace(space, seed=0)
    for params in ({"width": 4, "lr": 0.01}, {"width": 8, "lr": 0.05}):
        study = optuna.create_study(direction="maximize")
        study.enqueue_trial(params)
        study.optimize(objective(val_episodes=20), n_trials=1)
        cost = smac_target(objective(val_episodes=20))(Configuration(configspace, values=params), seed=0)
        assert cost == -study.trials[0].value
    # SMAC's budget is the objective's number of steps.
    short = smac_target(objective(steps=2, report_every=2, val_episodes=20))
    longer = smac_target(objective(steps=6, report_every=2, val_episodes=20))
    config = Configuration(configspace, values={"width": 4, "lr": 0.05})
    assert longer(config, budget=2) == short(config) != longer(config)


def test_every_kind_of_distribution_round_trips():
    space = {"lr": FloatDistribution(1e-4, 0.3, log=True), "ways": IntDistribution(5, 20, step=5),
             "depth": IntDistribution(1, 4), "norm": CategoricalDistribution(["batch", "none"]),
             "width": CategoricalDistribution([8, 16, 32])}
    configspace = to_configspace(space, seed=0)
    for config in configspace.sample_configuration(20):
        params = to_params(config)
        assert all(space[name]._contains(space[name].to_internal_repr(v)) for name, v in params.items())
        assert params["ways"] in (5, 10, 15, 20) and type(params["width"]) is int
    with pytest.raises(ValueError, match="step"):
        to_configspace({"x": FloatDistribution(0, 1, step=0.1)})


def quadratic(trial, steps=None):
    x, y = trial.suggest_float("x", -5, 5), trial.suggest_float("y", -5, 5)
    return -((x - 1.5) ** 2 + (y + 2.0) ** 2)


@pytest.mark.slow
def test_a_short_smac_run_gets_near_a_known_optimum():
    space = {"x": FloatDistribution(-5, 5), "y": FloatDistribution(-5, 5)}
    study = run_smac(quadratic, space, budget_steps=30, max_steps=1, n_initial=5, seed=0)
    assert len(study.trials) == 30
    best = study.best_params
    # SMAC's run depends on Python's hash seed (PYTHONHASHSEED), not only on `seed`: over five hash seeds its
    # best point was 0.015 to 0.87 from the optimum. 30 random points land within 1.0 of it with probability
    # 1 - (1 - pi/100)^30 = 0.62, so this checks that SMAC optimises, not that it beats random search.
    assert math.dist((best["x"], best["y"]), (1.5, -2.0)) < 1.0
    assert study.best_value == pytest.approx(quadratic(optuna.trial.FixedTrial(best)))


@pytest.mark.slow
def test_multi_fidelity_smac_counts_steps_and_keeps_full_budget_trials_complete():
    def noisy_at_low_budget(trial, steps=None):
        x = trial.suggest_float("x", -5, 5)
        return -((x - 1.5) ** 2) - 1.0 / steps
    study = run_smac(noisy_at_low_budget, {"x": FloatDistribution(-5, 5)}, budget_steps=120, max_steps=9,
                     min_steps=1, multi_fidelity=True, seed=0)
    used = [9 if t.state == optuna.trial.TrialState.COMPLETE else t.last_step for t in study.trials]
    assert 120 <= sum(used) < 120 + 9 and set(used) == {1, 3, 9}  # Hyperband's rungs for eta = 3
    for t in study.trials:
        assert t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        steps = 9 if t.state == optuna.trial.TrialState.COMPLETE else t.last_step
        value = t.value if t.value is not None else t.intermediate_values[steps]
        assert value == pytest.approx(noisy_at_low_budget(optuna.trial.FixedTrial(t.params), steps))
    assert abs(study.best_params["x"] - 1.5) < 0.5


def test_import_mlhelpers_does_not_import_smac():
    code = ("import sys, mlhelpers, mlhelpers.hpo, mlhelpers.darts, mlhelpers.learners\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('smac', 'ConfigSpace')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
