import math

import pytest
import torch

from mlhelpers.samplers.regression import LinearTasks, SinusoidTasks


def test_sinusoids_follow_finn_et_al():
    task = SinusoidTasks(k_shot=5, q_query=10, seed=0).sample(2000)
    assert task.support_x.shape == (2000, 5, 1) and task.query_y.shape == (2000, 10, 1)
    amplitude, phase = task.info["amplitude"], task.info["phase"]
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0
    assert 0.0 <= phase.min() and phase.max() <= math.pi
    x = torch.cat([task.support_x, task.query_x], dim=1)
    assert -5.0 <= x.min() and x.max() <= 5.0
    # Uniform ranges are covered, not just respected.
    assert amplitude.min() < 0.2 and amplitude.max() > 4.9 and x.min() < -4.95 and x.max() > 4.95
    expected = amplitude[:, None, None] * torch.sin(task.support_x - phase[:, None, None])
    torch.testing.assert_close(task.support_y, expected)


def test_sinusoid_seeding():
    a = SinusoidTasks(5, 5, seed=1).sample(3)
    b = SinusoidTasks(5, 5, seed=1).sample(3)
    c = SinusoidTasks(5, 5, seed=2).sample(3)
    assert torch.equal(a.query_y, b.query_y) and not torch.equal(a.query_y, c.query_y)


def test_linear_tasks_are_linear_and_noise_has_its_scale():
    task = LinearTasks(dim=5, k_shot=10, q_query=3, seed=0).sample(4)
    torch.testing.assert_close(task.support_y[..., 0], torch.einsum("tnd,td->tn", task.support_x, task.info["w"]))
    noisy = LinearTasks(dim=3, k_shot=500, q_query=1, noise_std=0.5, seed=0).sample(20)
    residual = noisy.support_y[..., 0] - torch.einsum("tnd,td->tn", noisy.support_x, noisy.info["w"])
    assert abs(residual.std().item() - 0.5) < 0.02


def test_linear_inputs_scale():
    task = LinearTasks(dim=4, k_shot=1000, q_query=1, x_scale=3.0, seed=0).sample(5)
    assert abs(task.support_x.std().item() - 3.0) < 0.1


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: SinusoidTasks(0, 5), ValueError, "k_shot must be at least 1"),
        (lambda: SinusoidTasks(5, 5, amplitude=(5.0, 0.1)), ValueError, "low <= high"),
        (lambda: LinearTasks(0, 5, 5), ValueError, "dim must be at least 1"),
        (lambda: LinearTasks(2, 5, 5, noise_std=-1.0), ValueError, "noise_std must be >= 0"),
        (lambda: LinearTasks(2.5, 5, 5), TypeError, "dim must be an int"),
    ],
)
def test_bad_family_options(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_true_function_reproduces_the_labels():
    task = SinusoidTasks(3, 4, seed=5).sample(6)
    torch.testing.assert_close(SinusoidTasks.true_function(task.query_x, task), task.query_y)
