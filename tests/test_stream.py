"""The drifting task stream and the replay buffer of Chapter 7 (mlhelpers.samplers.stream)."""

from __future__ import annotations

import math

import pytest
import torch

from mlhelpers.learners import MAML
from mlhelpers.models import mlp
from mlhelpers.samplers.stream import DriftingSinusoidTasks, ReplaySampler
from mlhelpers.training import meta_train


def test_stream_moves_its_phase_window_linearly_then_stays_at_the_end():
    stream = DriftingSinusoidTasks(5, 5, rounds=11, seed=0)
    for r in range(14):
        batch = stream.sample(50)
        expected = min(r / 10, 1.0)
        assert torch.allclose(batch.info["position"], torch.full((50,), expected))
        low, high = expected * math.pi, expected * math.pi + math.pi / 2
        phase = batch.info["phase"]
        assert bool(((phase >= low - 1e-5) & (phase <= high + 1e-5)).all()), r
        # the curves are the documented ones
        assert torch.allclose(batch.support_y, batch.info["amplitude"][:, None, None]
                              * torch.sin(batch.support_x - phase[:, None, None]))
    assert stream.round == 14


def test_the_last_tasks_are_the_first_ones_upside_down():
    """Phase pi later, sin(x - phi - pi) = -sin(x - phi): the default drift flips every curve."""
    stream = DriftingSinusoidTasks(5, 5, rounds=2, seed=0)
    low0, high0 = stream.phase_window(0.0)
    low1, high1 = stream.phase_window(1.0)
    assert math.isclose(float(low1 - low0), math.pi, rel_tol=1e-6)
    assert math.isclose(float(high1 - high0), math.pi, rel_tol=1e-6)


def test_segment_mixes_the_positions_of_its_stretch_uniformly():
    stream = DriftingSinusoidTasks(5, 5, rounds=100, seed=0)
    early = stream.segment(0.0, 0.25, q_query=20, seed=1)
    batch = early.sample(4000)
    position = batch.info["position"]
    assert float(position.min()) >= 0.0 and float(position.max()) <= 0.25
    assert abs(float(position.mean()) - 0.125) < 0.005
    assert batch.query_x.shape == (4000, 20, 1)
    low, high = stream.phase_window(position)
    assert bool(((batch.info["phase"] >= low - 1e-5) & (batch.info["phase"] <= high + 1e-5)).all())
    # a segment is a fixed mixture: drawing does not move it
    assert abs(float(early.sample(4000).info["position"].mean()) - 0.125) < 0.005


def test_stream_resumes_exactly_from_its_state():
    a = DriftingSinusoidTasks(5, 5, rounds=20, seed=3)
    for _ in range(7):
        a.sample(4)
    state = a.state_dict()
    expected = [a.sample(4) for _ in range(3)]
    b = DriftingSinusoidTasks(5, 5, rounds=20, seed=99)
    b.load_state_dict(state)
    assert b.round == 7
    for task in expected:
        got = b.sample(4)
        assert torch.equal(got.support_x, task.support_x) and torch.equal(got.query_y, task.query_y)
        assert torch.equal(got.info["position"], task.info["position"])


def test_replay_keeps_the_new_tasks_first_and_replays_only_past_ones():
    stream, twin = DriftingSinusoidTasks(5, 5, rounds=50, seed=0), DriftingSinusoidTasks(5, 5, rounds=50, seed=0)
    replay = ReplaySampler(stream, fresh=4, seed=1)
    for r in range(30):
        batch = replay.sample(10)
        new = twin.sample(4)
        assert torch.equal(batch.support_x[:4], new.support_x)  # the round's new tasks, untouched
        assert bool((batch.info["position"][4:] <= new.info["position"][0] + 1e-6).all())  # never from the future
        assert len(replay) == replay.seen == 4 * (r + 1)
    # with a full buffer, the replayed half comes from the whole past, not only from recent rounds
    positions = torch.cat([replay.sample(10).info["position"][4:] for _ in range(50)])
    assert float(positions.min()) < 0.2


def test_sample_of_fresh_tasks_is_the_stream_itself():
    stream, twin = DriftingSinusoidTasks(5, 5, rounds=10, seed=0), DriftingSinusoidTasks(5, 5, rounds=10, seed=0)
    replay = ReplaySampler(stream, fresh=3, seed=1)
    for _ in range(5):
        assert torch.equal(replay.sample(3).query_y, twin.sample(3).query_y)


def test_bounded_buffer_keeps_a_uniform_sample_of_everything_seen():
    """Reservoir sampling: after 100 rounds the buffer's positions average about the middle of the
    stream (0.5); a first-in-first-out buffer of the same size would hold only the last rounds (~0.97)."""
    replay = ReplaySampler(DriftingSinusoidTasks(5, 5, rounds=100, seed=0), fresh=10, capacity=60, seed=2)
    for _ in range(100):
        replay.sample(10)
        assert len(replay) <= 60
    assert len(replay) == 60 and replay.seen == 1000
    buffer_positions = torch.cat([t.info["position"] for t in replay._buffer])
    assert 0.35 < float(buffer_positions.mean()) < 0.65
    assert float(buffer_positions.min()) < 0.2 and float(buffer_positions.max()) > 0.8


def test_replay_resumes_with_its_buffer():
    def make(seed):
        return ReplaySampler(DriftingSinusoidTasks(5, 5, rounds=40, seed=seed), fresh=2, capacity=5, seed=seed + 1)

    a = make(0)
    for _ in range(9):
        a.sample(6)
    state = a.state_dict()
    expected = [a.sample(6) for _ in range(4)]
    b = make(7)
    b.load_state_dict(state)
    assert len(b) == 5 and b.seen == 18
    for task in expected:
        assert torch.equal(b.sample(6).support_y, task.support_y)


def test_meta_train_on_the_replayed_stream_resumes_bit_for_bit(tmp_path):
    """A checkpoint in the middle of a stream (its round and its buffer) resumes to the parameters of
    an uninterrupted run."""
    def run(steps, path):
        torch.manual_seed(0)
        learner = MAML(mlp(1, 1, hidden=(8,)), inner_lr=0.01, inner_steps=1, strategy="loop")
        sampler = ReplaySampler(DriftingSinusoidTasks(3, 3, rounds=12, seed=0), fresh=2, seed=1)
        meta_train(learner, sampler, steps=steps, meta_batch_size=4, checkpoint_path=path, checkpoint_every=3,
                   seed=0, progress=False)
        return learner

    whole = run(10, None)
    run(5, tmp_path / "stream.pt")
    resumed = run(10, tmp_path / "stream.pt")
    for p, q in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_continual_meta_training_tracks_the_stream_and_replay_remembers_its_start():
    """The effect Chapter 7 measures, at a tiny scale: meta-training only on the newest tasks adapts
    worse to the start of the stream at its end than meta-training with a replay buffer."""
    def train(replayed: bool):
        torch.manual_seed(0)
        learner = MAML(mlp(1, 1, hidden=(32, 32)), inner_lr=0.01, inner_steps=1, strategy="vmap")
        stream = DriftingSinusoidTasks(10, 10, rounds=600, seed=0)
        sampler = ReplaySampler(stream, fresh=8, seed=1) if replayed else stream
        meta_train(learner, sampler, steps=600, meta_batch_size=16 if replayed else 8, seed=0, progress=False)
        return learner, stream

    def mse(learner, stream, start, end):
        task = stream.segment(start, end, q_query=50, seed=5).sample(200)
        return float((learner(task).detach() - task.query_y).pow(2).mean())

    online, stream = train(False)
    replay, _ = train(True)
    assert mse(replay, stream, 0.0, 0.2) < 0.8 * mse(online, stream, 0.0, 0.2)
    # it tracks the end of the stream: predicting 0 scores E[A^2] / 2 = 4.25
    assert mse(online, stream, 0.8, 1.0) < 3.0


@pytest.mark.parametrize("bad", [{"phase_start": (1.0, 0.0)}, {"amplitude": (0.1, float("nan"))}])
def test_bad_ranges_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        DriftingSinusoidTasks(5, 5, rounds=3, **bad)
