"""The Optuna objective builder: intermediate reports reach the pruner, studies resume, trials are fair."""

from __future__ import annotations

import json
import math
import os

import optuna
import pytest
import torch

from conftest import synthetic_dataset
from mlhelpers.hpo import TrialSetup, learner_objective, open_study, warm_start
from mlhelpers.learners import ProtoNet
from mlhelpers.models import conv4
from mlhelpers.samplers.episodic import EpisodicSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


pytestmark = pytest.mark.usefixtures("one_thread")


def build(trial: optuna.Trial) -> TrialSetup:
    width = trial.suggest_categorical("width", [4, 8])
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    learner = ProtoNet(conv4(hidden_channels=width, num_blocks=2, norm="none", image_size=8))
    return TrialSetup(learner, torch.optim.Adam(learner.parameters(), lr=lr), meta_batch_size=2)


def objective(steps: int = 4, report_every: int = 2, val_episodes: int = 6):
    data = synthetic_dataset()
    return learner_objective(build, EpisodicSampler(data, 3, 1, 2, "train", seed=0),
                             EpisodicSampler(data, 3, 1, 2, "test", seed=1),
                             steps=steps, report_every=report_every, val_episodes=val_episodes)


def test_every_report_reaches_the_study_and_the_pruner_can_stop_a_trial():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective(steps=6, report_every=2), n_trials=2)
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert sorted(trial.intermediate_values) == [2, 4, 6]
        assert trial.value == trial.intermediate_values[6]
    # Accuracy is at most 1, so a threshold of 1.5 prunes every trial at its first report.
    pruned = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.5))
    pruned.optimize(objective(steps=6, report_every=2), n_trials=1)
    assert pruned.trials[0].state == optuna.trial.TrialState.PRUNED
    assert list(pruned.trials[0].intermediate_values) == [2]


def test_the_same_setting_gets_the_same_score_whatever_ran_before():
    study = optuna.create_study(direction="maximize")
    for params in ({"width": 4, "lr": 0.01}, {"width": 8, "lr": 0.05}, {"width": 4, "lr": 0.01}):
        study.enqueue_trial(params)
    study.optimize(objective(val_episodes=40), n_trials=3)
    first, other, again = (t.value for t in study.trials)
    assert first == again
    assert first != other


def test_a_study_resumes_from_its_journal_file(tmp_path):
    path = tmp_path / "studies" / "demo.log"
    study = open_study("demo", path, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective(), n_trials=2)
    values = [t.value for t in study.trials]
    resumed = open_study("demo", path, sampler=optuna.samplers.RandomSampler(seed=1))
    assert [t.value for t in resumed.trials] == values
    resumed.optimize(objective(), n_trials=1)
    assert len(open_study("demo", path).trials) == 3


def test_reopening_a_study_with_the_other_direction_is_refused(tmp_path):
    """Optuna's load_if_exists used to hand back the maximising study, silently."""
    path = tmp_path / "demo.log"
    open_study("demo", path).optimize(objective(), n_trials=1)
    with pytest.raises(ValueError, match="exists with direction='maximize', but direction='minimize'"):
        open_study("demo", path, direction="minimize")
    assert len(open_study("demo", path).trials) == 1


def one_trial(build_setup) -> optuna.trial.FrozenTrial:
    """The single trial of a study optimising a short objective built from ``build_setup``."""
    data = synthetic_dataset()
    study = optuna.create_study(direction="maximize")
    study.optimize(learner_objective(build_setup, EpisodicSampler(data, 3, 1, 2, "train", seed=0),
                                     EpisodicSampler(data, 3, 1, 2, "test", seed=1), steps=4, report_every=2,
                                     val_episodes=2), n_trials=1)
    return study.trials[0]


def test_a_diverging_trial_is_pruned_and_says_where():
    def exploding(trial):
        setup = build(trial)
        with torch.no_grad():
            next(setup.learner.parameters()).fill_(math.nan)
        return setup

    trial = one_trial(exploding)
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["diverged_at"] == 0


def test_warm_start_enqueues_the_best_settings_of_earlier_studies():
    source = optuna.create_study(direction="maximize")
    for value, width in ((0.3, 4), (0.9, 8), (0.6, 4)):
        source.add_trial(optuna.trial.create_trial(
            params={"width": width, "lr": value / 10}, value=value,
            distributions={"width": optuna.distributions.CategoricalDistribution([4, 8]),
                           "lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}))
    target = optuna.create_study(direction="maximize")
    assert warm_start(target, [source, source], top_k=2) == 2  # the same study twice: no duplicates
    target.optimize(lambda t: t.suggest_categorical("width", [4, 8]) + t.suggest_float("lr", 1e-3, 1e-1, log=True),
                    n_trials=2)
    assert [t.params for t in target.trials] == [{"width": 8, "lr": 0.09}, {"width": 4, "lr": 0.06}]


def test_bad_arguments_name_themselves():
    data = synthetic_dataset()
    sampler = EpisodicSampler(data, 3, 1, 2, "train", seed=0)
    with pytest.raises(ValueError, match="report_every must be"):
        learner_objective(build, sampler, sampler, steps=4, report_every=0)
    with pytest.raises(TypeError, match="build must be a callable"):
        learner_objective("conv4", sampler, sampler, steps=4, report_every=2)
    with pytest.raises(TypeError, match="train_sampler must be a TaskSampler"):
        learner_objective(build, [1, 2], sampler, steps=4, report_every=2)
    with pytest.raises(TypeError, match="build\\(trial\\) must return a TrialSetup, got ProtoNet"):
        study = optuna.create_study()
        study.optimize(learner_objective(lambda t: build(t).learner, sampler, sampler, steps=2, report_every=1),
                       n_trials=1)


def test_a_trial_whose_validation_outputs_diverge_is_pruned():
    """Training stays finite but the learner's validation outputs are NaN: the trial is pruned (it used
    to abort the whole study, or to score the NaN logits' argmax as an accuracy)."""

    class NaNAtEval(ProtoNet):
        def _predict(self, adapted, query_x):
            logits = super()._predict(adapted, query_x)
            return logits if self.training else logits * float("nan")

    def nan_at_eval(trial):
        setup = build(trial)
        learner = NaNAtEval(setup.learner.backbone)
        return TrialSetup(learner, torch.optim.Adam(learner.parameters(), lr=1e-3), meta_batch_size=2)

    trial = one_trial(nan_at_eval)
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["diverged_at"] == 0


# --- a journal torn by a crash or a full disk (issue 24, item 8) ------------------------------


def _complete(study: optuna.Study, n: int, start: float = 0.0) -> None:
    for i in range(n):
        trial = study.ask()
        study.tell(trial, start + i)


def _values(path, name: str = "s") -> list[float]:
    study = optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path))))
    return sorted(t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)


def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path):
    """A torn last line used to be glued to the next append: from then on JSONDecodeError."""
    path = tmp_path / "s.log"
    _complete(open_study("s", path), 3)
    with open(path, "ab") as file:  # the disk filled in the middle of a write
        file.write(b'{"op_code":5,"worker_id":"x","trial_id":3,"sta')
    with pytest.warns(UserWarning, match="torn line"):
        study = open_study("s", path)
    _complete(study, 2, start=10.0)
    assert _values(path) == [0.0, 1.0, 2.0, 10.0, 11.0]  # plain Optuna reads it back
    assert path.read_bytes().endswith(b"}\n")


def test_a_worker_appending_after_another_one_died_mid_write_keeps_the_journal_readable(tmp_path):
    """Two workers share a journal; one dies in the middle of a write while the other keeps its study
    open (no repair on open): the living worker's next append must not be glued to the torn line.
    (The test above goes through open_study, whose repair alone would pass it.)"""
    path = tmp_path / "s.log"
    study = open_study("s", path)
    _complete(study, 2)
    with open(path, "ab") as file:  # the other worker, killed mid-write
        file.write(b'{"op_code":5,"worker_id":"x","trial_id":2,"sta')
    with pytest.warns(UserWarning, match="torn line"):
        _complete(study, 2, start=10.0)
    assert _values(path) == [0.0, 1.0, 10.0, 11.0]  # plain Optuna reads every complete trial


def test_a_journal_glued_by_the_old_code_is_repaired(tmp_path):
    path = tmp_path / "s.log"
    _complete(open_study("s", path), 2)
    lines = path.read_bytes().split(b"\n")[:-1]
    torn = lines[-1][: len(lines[-1]) // 2]  # the last log was cut in half, the next one glued to it
    glued = b"\n".join(lines[:-1]) + b"\n" + torn + lines[-1] + b"\n" + lines[-1][:10]
    path.write_bytes(glued)
    with pytest.raises(json.JSONDecodeError):
        _values(path)
    with pytest.warns(UserWarning, match="2 torn line"):
        study = open_study("s", path)
    assert sorted(t.value for t in study.trials) == [0.0, 1.0]
    _complete(study, 1, start=5.0)
    assert _values(path) == [0.0, 1.0, 5.0]


def test_a_failed_append_leaves_no_torn_line(tmp_path, monkeypatch):
    path = tmp_path / "s.log"
    study = open_study("s", path)
    _complete(study, 1)
    before = path.read_bytes()
    real_fsync = os.fsync

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        study.ask()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == before  # the partial append was undone
    _complete(open_study("s", path), 1, start=3.0)
    assert _values(path) == [0.0, 3.0]
