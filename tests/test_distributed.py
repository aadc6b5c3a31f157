"""Meta-training over 2 processes (torchrun, gloo on the CPU) against 1 process: same parameters, a
checkpoint that resumes, a failing or hanging rank that stops the job (mlhelpers.distributed)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distributed_worker as worker
from mlhelpers import distributed
from mlhelpers.checkpoint import load_checkpoint
from mlhelpers.tasks import Task

WORKER = Path(worker.__file__)
ROOT = WORKER.parent.parent


def torchrun(*args: str, timeout_s: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 tests/distributed_worker.py ARGS`` with one thread a rank."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(WORKER), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=environment)


def assert_close_states(got: dict, want: dict) -> None:
    """Equal to 1e-10 (weights are of order 0.1). Summing the meta-gradient in two halves rounds
    differently (1e-17); Adam divides a gradient by its size plus eps=1e-8, which turns that
    rounding into 1e-11 steps where the exact gradient is 0 (ProtoNet's last embedding bias: moving
    every embedding alike changes no distance)."""
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-10, msg=key)


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two_ranks")
    result = torchrun("maml,protonet", str(out), "--steps", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["maml", "protonet"])
def test_two_ranks_with_half_the_batch_each_match_one_process(two_rank_runs, kind):
    saved = torch.load(two_rank_runs / f"{kind}.pt", weights_only=True)
    assert saved["world"] == 2
    learner, history = worker.train(kind, steps=3)
    untrained, _, _ = worker.build(kind)
    moved = max((v - untrained.state_dict()[k]).abs().max().item() for k, v in learner.state_dict().items())
    assert moved > 1e-3  # three Adam steps of lr 1e-2 moved the weights: the comparison means something
    assert_close_states(saved["state"], learner.state_dict())
    torch.testing.assert_close(saved["history"]["train_loss"], history.train_loss, rtol=1e-12, atol=0)
    assert saved["history"]["val_steps"] == history.val_steps == [2]  # validated on rank 0, recorded by all
    assert saved["history"]["val_metric"] == pytest.approx(history.val_metric, rel=1e-12)


@pytest.mark.slow
def test_failing_rank_stops_the_job_and_its_checkpoint_resumes(tmp_path):
    checkpoint = tmp_path / "run.pt"
    failed = torchrun("maml", str(tmp_path), "--steps", "4", "--checkpoint", str(checkpoint),
                      "--fail-rank", "1", "--fail-step", "3")
    assert failed.returncode != 0
    assert "rank 1 broke at step 3 on purpose" in failed.stderr
    assert not (tmp_path / "maml.pt").exists()
    state = load_checkpoint(checkpoint)  # written by rank 0 at step 2, before rank 1 failed
    assert state["step"] == 2 and len(state["rng_ranks"]) == 2

    resumed = torchrun("maml", str(tmp_path), "--steps", "4", "--checkpoint", str(checkpoint))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    saved = torch.load(tmp_path / "maml.pt", weights_only=True)
    learner, history = worker.train("maml", steps=4)  # uninterrupted, one process
    assert_close_states(saved["state"], learner.state_dict())
    assert saved["history"]["steps"] == [1, 2, 3, 4]
    torch.testing.assert_close(saved["history"]["train_loss"], history.train_loss, rtol=1e-12, atol=0)


@pytest.mark.slow
def test_hanging_rank_stops_the_job_by_the_timeout(tmp_path):
    result = torchrun("maml", str(tmp_path), "--steps", "3", "--fail-rank", "1", "--fail-step", "2", "--hang",
                      env={distributed.TIMEOUT_ENV_VAR: "5"}, timeout_s=240)
    assert result.returncode != 0
    assert f"did not arrive within {distributed.TIMEOUT_ENV_VAR}=5 s" in result.stderr, result.stderr[-3000:]
    assert "rank 0 of 2: the all-reduce of the meta-gradient failed" in result.stderr


def test_shard_takes_each_ranks_slice():
    x = torch.arange(6.0).view(6, 1, 1)
    task = Task(x, x, x, x)
    parts = [distributed.shard(task, i, 3).support_x.flatten().tolist() for i in range(3)]
    assert parts == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert distributed.shard(task) is task  # one process keeps the whole batch
    with pytest.raises(ValueError, match="6 tasks does not split evenly over 4 processes"):
        distributed.shard(task, 0, 4)


def test_plain_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.setup("cpu")
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.gather("x") == ["x"] and distributed.broadcast(3) == 3
    assert distributed.backend_for("cuda:1") == "nccl" and distributed.backend_for("cpu") == "gloo"
    monkeypatch.setenv(distributed.TIMEOUT_ENV_VAR, "0")
    with pytest.raises(ValueError, match="positive number of seconds"):
        distributed.timeout()


def test_default_device_under_torchrun_is_the_ranks_gpu(monkeypatch):
    from mlhelpers import default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert default_device() == torch.device("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK")
    assert default_device() == torch.device("cuda")


def test_cuda_device_must_be_the_ranks_own(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="owns cuda:1"):
        distributed._check_device(torch.device("cuda:0"))


def pretend_three_ranks(monkeypatch, others=lambda mine: mine):
    """meta_train as rank 0 of 3, the other ranks' settings made by ``others`` from this one's."""
    monkeypatch.setattr(distributed, "setup", lambda device: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(distributed, "gather", lambda obj: [obj, others(obj), others(obj)])


def test_a_meta_batch_that_does_not_split_is_refused(monkeypatch):
    pretend_three_ranks(monkeypatch)
    learner, sampler, _ = worker.build("maml")
    with pytest.raises(ValueError, match="meta_batch_size=4 does not split evenly over 3 processes"):
        worker.meta_train(learner, sampler, steps=1, meta_batch_size=4, progress=False)


def test_ranks_given_other_settings_are_named(monkeypatch):
    pretend_three_ranks(monkeypatch, lambda mine: {**mine, "steps": 7})
    learner, sampler, _ = worker.build("maml")
    with pytest.raises(ValueError, match="other settings on rank 1 than on rank 0 \\('steps': rank 0 1, rank 1 7\\)"):
        worker.meta_train(learner, sampler, steps=1, meta_batch_size=3, progress=False)
