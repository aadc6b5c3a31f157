import math

import pytest
import torch
from torch import nn

from conftest import synthetic_dataset
from mlhelpers.evaluation import EvalResult, evaluate, mean_confidence_interval
from mlhelpers.learners import MetaLearner, ProtoNet
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.samplers.regression import LinearTasks
from mlhelpers.validation import NonFiniteError


class OneStepLinear(MetaLearner):
    """A tiny MAML: one inner gradient step of a linear regressor, with autograd inside adapt."""

    def __init__(self, dim: int, inner_lr: float = 0.1) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim, 1))
        self.inner_lr = inner_lr
        self.modes_seen: list[bool] = []

    def _adapt(self, support_x, support_y):
        self.modes_seen.append(self.training)
        w = self.w.expand(len(support_x), -1, -1)
        loss = (support_x @ w - support_y).pow(2).mean()
        (grad,) = torch.autograd.grad(loss, w, create_graph=self.training)
        return w - self.inner_lr * grad

    def _predict(self, adapted, query_x):
        return query_x @ adapted


class RecordingSampler:
    """Wraps a sampler and records the batch sizes asked for and the batches it gave."""

    def __init__(self, sampler):
        self.sampler, self.sizes, self.batches = sampler, [], []

    def sample(self, num_tasks):
        self.sizes.append(num_tasks)
        self.batches.append(self.sampler.sample(num_tasks))
        return self.batches[-1]


def test_mean_confidence_interval_matches_hand_computation():
    mean, half = mean_confidence_interval([0.0, 1.0, 2.0, 3.0, 4.0])
    # sample std (ddof=1) of 0..4 is sqrt(10 / 4) = sqrt(2.5)
    assert mean == pytest.approx(2.0, abs=1e-12)
    assert half == pytest.approx(1.96 * math.sqrt(2.5) / math.sqrt(5), abs=1e-9)
    _, half99 = mean_confidence_interval(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]), confidence=0.99)
    assert half99 == pytest.approx(2.5758293 * math.sqrt(2.5) / math.sqrt(5), abs=1e-6)
    _, half90 = mean_confidence_interval([0.0, 1.0, 2.0, 3.0, 4.0], confidence=0.9)
    assert half90 == pytest.approx(1.6448536 * math.sqrt(2.5) / math.sqrt(5), abs=1e-6)


def test_mean_confidence_interval_edge_cases():
    mean, half = mean_confidence_interval([0.7])
    assert mean == pytest.approx(0.7) and math.isnan(half)
    assert mean_confidence_interval([0.5, 0.5, 0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="empty"):
        mean_confidence_interval([])
    with pytest.raises(ValueError, match="confidence must be .* got 95"):
        mean_confidence_interval([1.0, 2.0], confidence=95)


def test_eval_result_strings():
    acc = EvalResult(mean=0.97312, ci95=0.00421, values=torch.zeros(600), metric="accuracy")
    assert str(acc) == "97.31% ± 0.42% (600 episodes)"
    mse = EvalResult(mean=0.41234, ci95=0.0312, values=torch.zeros(600), metric="mse")
    assert str(mse) == "0.412 ± 0.031 MSE (600 episodes)"


def test_evaluate_protonet_accuracy_is_deterministic_and_in_range():
    torch.manual_seed(0)
    learner = ProtoNet(nn.Flatten())
    result = evaluate(learner, EpisodicSampler(synthetic_dataset(), 5, 5, 5, split="test", seed=3), num_episodes=50)
    again = evaluate(learner, EpisodicSampler(synthetic_dataset(), 5, 5, 5, split="test", seed=3), num_episodes=50)
    assert result.metric == "accuracy"
    assert result.values.shape == (50,)
    assert torch.equal(result.values, again.values)
    assert 0.2 < result.mean < 1.0  # pixel-space prototypes beat chance (0.2) on these classes
    assert result.mean == pytest.approx(result.values.mean().item())
    assert str(result).endswith("(50 episodes)")


def test_nan_logits_are_an_error_not_an_accuracy():
    """NaN logits have an argmax (label 0), which used to be scored as a 1-in-n_way accuracy."""

    class NaNOnEpisode3(ProtoNet):
        calls = 0

        def _predict(self, adapted, query_x):
            logits = super()._predict(adapted, query_x)
            NaNOnEpisode3.calls += 1
            return logits * float("nan") if NaNOnEpisode3.calls == 2 else logits

    learner = NaNOnEpisode3(nn.Flatten())
    with pytest.raises(NonFiniteError, match="non-finite outputs on episode 3"):
        evaluate(learner, EpisodicSampler(synthetic_dataset(), 3, 1, 2, split="test", seed=0), num_episodes=6,
                 batch_size=3)


def test_ci_shrinks_like_one_over_sqrt_n():
    torch.manual_seed(0)
    learner = ProtoNet(nn.Flatten())
    dataset = synthetic_dataset(noise=3.0)  # hard enough that episodes vary
    small = evaluate(learner, EpisodicSampler(dataset, 5, 1, 2, split="test", seed=1), num_episodes=100, batch_size=50)
    large = evaluate(learner, EpisodicSampler(dataset, 5, 1, 2, split="test", seed=2),
                     num_episodes=1600, batch_size=200)
    ratio = small.ci95 / large.ci95
    assert 2.8 < ratio < 5.5, ratio  # sqrt(1600 / 100) = 4


def test_last_batch_holds_the_remainder():
    sampler = RecordingSampler(LinearTasks(3, 4, 4, seed=0))
    result = evaluate(OneStepLinear(3), sampler, num_episodes=7, batch_size=3)
    assert sampler.sizes == [3, 3, 1]
    assert result.values.shape == (7,)
    assert result.metric == "mse"


def test_gradient_based_adaptation_works_and_mode_is_restored():
    learner = OneStepLinear(3)
    sampler = LinearTasks(3, 10, 10, seed=0)
    with torch.no_grad():
        learner.w.copy_(torch.ones(3, 1))
    learner.train()
    result = evaluate(learner, sampler, num_episodes=4, batch_size=2)
    assert learner.training is True  # restored
    assert learner.modes_seen == [False, False]  # evaluated in eval mode
    assert not result.values.requires_grad
    learner.eval()
    evaluate(learner, sampler, num_episodes=2)
    assert learner.training is False
    # The inner step must actually have used gradients: on the very tasks evaluate drew, the
    # adapted predictor beats the unadapted one, task by task.
    recorded = RecordingSampler(LinearTasks(3, 10, 10, seed=0))
    adapted = evaluate(learner, recorded, num_episodes=4, batch_size=4)
    (task,) = recorded.batches
    with torch.no_grad():
        unadapted = (task.query_x @ learner.w - task.query_y).pow(2).flatten(1).mean(1)  # [tasks]
    assert (adapted.values < unadapted).all(), (adapted.values, unadapted)


def test_mode_is_restored_when_the_learner_fails():
    class Broken(OneStepLinear):
        def _predict(self, adapted, query_x):
            raise RuntimeError("boom")

    learner = Broken(2).train()
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(learner, LinearTasks(2, 3, 3, seed=0), num_episodes=2)
    assert learner.training is True


def test_learners_that_adapt_without_gradients_may_run_under_no_grad():
    class NoGradProto(ProtoNet):
        needs_grad_to_adapt = False
        grad_enabled: list[bool] = []

        def _adapt(self, support_x, support_y):
            self.grad_enabled.append(torch.is_grad_enabled())
            return super()._adapt(support_x, support_y)

    learner = NoGradProto(nn.Flatten())
    evaluate(learner, EpisodicSampler(synthetic_dataset(), 3, 1, 1, seed=0), num_episodes=2)
    assert learner.grad_enabled == [False]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_episodes": 0}, "num_episodes must be at least 1, got 0"),
        ({"num_episodes": 2.5}, "num_episodes must be an int, got float"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        evaluate(OneStepLinear(2), LinearTasks(2, 3, 3, seed=0), **kwargs)


def test_wrong_objects_are_rejected():
    with pytest.raises(TypeError, match="sampler must be a TaskSampler"):
        evaluate(OneStepLinear(2), [1, 2, 3])
    with pytest.raises(TypeError, match="learner must be a MetaLearner"):
        evaluate(nn.Linear(2, 2), LinearTasks(2, 3, 3, seed=0))
