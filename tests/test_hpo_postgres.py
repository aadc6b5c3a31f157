"""Chapter 6's shared study on a real PostgreSQL server (appendix "Scaling out"): two worker processes
add to one study, and a worker killed mid-trial leaves a failed trial that another worker retries.

The server is Debian's (scripts/install-postgres.sh, run by `make test`), started as a throwaway
cluster in a temporary directory (mlhelpers.pgserver); without it the tests skip and say why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from mlhelpers.hpo import is_database_url, open_study
from mlhelpers.pgserver import temporary_postgres, unavailable_reason

COMPLETE, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                           optuna.trial.TrialState.RUNNING)


@pytest.fixture(scope="module")
def database():
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no PostgreSQL here: {reason}")
    with temporary_postgres() as url:
        yield url


def worker(url: str, number: int, *args: str) -> subprocess.Popen:
    """``python -m mlhelpers.hpo_worker --storage URL --worker N ARGS`` in its own process, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "mlhelpers.hpo_worker", "--storage", url, "--worker", str(number),
                             "--val-episodes", "2", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


@pytest.mark.slow
def test_two_workers_at_once_fill_one_study(database):
    url = database
    workers = [worker(url, n, "--trials", "2", "--steps", "2") for n in (1, 2)]
    for n, process in zip((1, 2), workers):
        assert f"worker {n}" in finish(process)
    study = open_study("shared", url)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]  # each trial recorded once
    assert sorted(t.user_attrs["worker"] for t in study.trials) == [1, 1, 2, 2]
    assert all(t.state == COMPLETE and 0 <= t.value <= 1 for t in study.trials)


@pytest.mark.slow
def test_a_killed_workers_trial_is_failed_and_retried(database):
    url = database
    name_args = ("--study", "shared-killed", "--heartbeat", "1", "--retries", "1")
    slow = worker(url, 1, "--trials", "1", "--steps", "1000000", *name_args)  # would run for hours
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # until its trial runs (and beats)
        try:
            running = optuna.load_study(study_name="shared-killed", storage=url).get_trials(states=(RUNNING,))
        except KeyError:  # the study is not created yet
            running = []
        if running:
            break
        assert slow.poll() is None, slow.communicate()[1][-3000:]
        time.sleep(0.5)
    else:
        pytest.fail("the first worker's trial never started")
    time.sleep(1.5)
    slow.send_signal(signal.SIGKILL)  # dies mid-trial: nothing marks its trial finished
    slow.wait()
    time.sleep(3)  # its heartbeat is now older than the grace period (2 x 1 s)
    finish(worker(url, 2, "--trials", "2", "--steps", "2", *name_args))

    trials = optuna.load_study(study_name="shared-killed", storage=url).trials
    assert [t.state for t in trials] == [FAIL, COMPLETE, COMPLETE]
    dead, retry, fresh = trials
    assert dead.user_attrs["worker"] == 1
    assert optuna.storages.RetryFailedTrialCallback.retried_trial_number(retry) == dead.number
    assert retry.params == dead.params and retry.user_attrs["worker"] == 2
    assert optuna.storages.RetryFailedTrialCallback.retried_trial_number(fresh) is None


def test_heartbeats_need_a_database(tmp_path):
    assert is_database_url("postgresql://u@h/db") and not is_database_url(str(tmp_path / "study.log"))
    with pytest.raises(ValueError, match="need a database storage"):
        open_study("s", tmp_path / "study.log", heartbeat=10)
    with pytest.raises(ValueError, match="retries"):
        open_study("s", "sqlite:///" + str(tmp_path / "s.db"), retries=-1)


def test_sqlite_url_opens_the_same_study_twice(tmp_path):
    url = "sqlite:///" + str(tmp_path / "s.db")
    open_study("s", url).optimize(lambda t: t.suggest_float("a", 0, 1), n_trials=2)
    assert len(open_study("s", url).trials) == 2


def test_importing_mlhelpers_loads_no_database_driver():
    code = ("import sys, mlhelpers, mlhelpers.hpo, mlhelpers.hpo_worker, mlhelpers.pgserver, mlhelpers.training; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg2', 'psycopg', 'sqlalchemy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
