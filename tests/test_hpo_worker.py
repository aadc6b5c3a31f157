"""A worker process of Chapter 6's shared study: workers add to one study and see each other's trials."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

from conftest import synthetic_dataset
from mlhelpers.hpo import open_study
from mlhelpers.hpo_worker import main, run_worker

pytestmark = pytest.mark.usefixtures("one_thread")


def data():
    """The synthetic classes with a validation split (the worker needs "train" and "val")."""
    base = synthetic_dataset()
    return dataclasses.replace(base, splits={"train": torch.arange(12), "val": torch.arange(12, 20)})


def test_two_workers_share_one_study_and_mark_their_trials(tmp_path):
    journal = tmp_path / "study.log"
    for worker in (1, 2):
        study = run_worker(journal, worker, trials=2, steps=2, val_episodes=2, data=data())
    # The second worker's study already held the first worker's trials: one study, four trials.
    assert len(study.trials) == 4
    shared = open_study("shared", journal)
    assert [t.user_attrs["worker"] for t in shared.trials] == [1, 1, 2, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE and 0 <= t.value <= 1 for t in shared.trials)


def test_the_command_line_runs_a_worker(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("mlhelpers.hpo_worker.small_omniglot", data)
    journal = tmp_path / "cli.log"
    main(["--journal", str(journal), "--worker", "3", "--trials", "1", "--steps", "1", "--val-episodes", "1"])
    assert "worker 3" in capsys.readouterr().out
    assert [t.user_attrs["worker"] for t in open_study("shared", journal).trials] == [3]


def test_bad_arguments_name_themselves(tmp_path):
    with pytest.raises(ValueError, match="worker"):
        run_worker(tmp_path / "a.log", 0, trials=1, steps=1, val_episodes=1, data=data())
    with pytest.raises(ValueError, match="'val' split"):
        run_worker(tmp_path / "b.log", 1, trials=1, steps=1, val_episodes=1, data=synthetic_dataset())
