"""In-context learning (Chapter 5): sequence layout, causal transformer, learner and baselines."""

from __future__ import annotations

import pytest
import torch

from conftest import make_dataset
from mlhelpers.evaluation import evaluate
from mlhelpers.learners import CausalTransformer, InContextLearner, task_loss
from mlhelpers.models import conv4
from mlhelpers.regression_baselines import (
    averaging_predictions,
    least_squares_predictions,
    nearest_neighbour_predictions,
    normalised_squared_error,
    ridge_predictions,
)
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.samplers.regression import LinearTasks
from mlhelpers.samplers.wrappers import ShuffledSupport, shuffle_support
from mlhelpers.sequences import (
    input_tokens,
    label_tokens,
    paired_query_sequences,
    prefix_sequence,
    task_sequences,
    token_width,
    x_positions,
)
from mlhelpers.tasks import Task


def tiny_regressor(d: int = 2, **kwargs) -> InContextLearner:
    options = dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=32)
    options.update(kwargs)
    return InContextLearner(d, **options).eval()


def linear_task(d: int = 2, k: int = 4, q: int = 3, tasks: int = 2, seed: int = 0) -> Task:
    return LinearTasks(d, k, q, seed=seed).sample(tasks)


# --- sequence layout ---------------------------------------------------------------------------


def test_regression_sequences_interleave_garg_tokens_with_the_query_last():
    support_x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    support_y = torch.tensor([[[5.0], [6.0]]])
    query_x = torch.tensor([[[7.0, 8.0], [9.0, 10.0]]])
    query_y = torch.tensor([[[111.0], [222.0]]])
    sequences = task_sequences(Task(support_x, support_y, query_x, query_y))
    context = [[1.0, 2.0], [5.0, 0.0], [3.0, 4.0], [6.0, 0.0]]
    expected = torch.tensor([context + [[7.0, 8.0]], context + [[9.0, 10.0]]])
    torch.testing.assert_close(sequences, expected)
    # No query label anywhere, and each query sequence holds no other query's input.
    assert not torch.isin(sequences, query_y.flatten()).any()
    assert not (sequences[0] == 9.0).any() and not (sequences[1] == 7.0).any()


def test_classification_tokens_keep_labels_in_their_own_coordinates():
    width = token_width(3, n_way=2)
    assert width == 5
    x = input_tokens(torch.tensor([[[1.0, 2.0, 3.0]]]), width)
    y = label_tokens(torch.tensor([[1, 0]]), width, n_way=2)
    torch.testing.assert_close(x, torch.tensor([[[1.0, 2.0, 3.0, 0.0, 0.0]]]))
    torch.testing.assert_close(y, torch.tensor([[[0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0, 0.0]]]))


def test_paired_sequences_hold_one_token_per_example_and_no_query_label():
    support_x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    support_y = torch.tensor([[[5.0], [6.0]]])
    query_x = torch.tensor([[[7.0, 8.0], [9.0, 10.0]]])
    query_y = torch.tensor([[[111.0], [222.0]]])
    sequences = task_sequences(Task(support_x, support_y, query_x, query_y), paired=True)
    context = [[1.0, 2.0, 5.0], [3.0, 4.0, 6.0]]
    expected = torch.tensor([context + [[7.0, 8.0, 0.0]], context + [[9.0, 10.0, 0.0]]])
    torch.testing.assert_close(sequences, expected)
    assert not torch.isin(sequences, query_y.flatten()).any()
    task = Task(support_x, torch.tensor([[1, 0]]), query_x, torch.tensor([[0, 1]]))
    classes = task_sequences(task, n_way=2, paired=True)
    expected = torch.tensor([[1.0, 2.0, 0.0, 1.0], [3.0, 4.0, 1.0, 0.0], [7.0, 8.0, 0.0, 0.0]])
    torch.testing.assert_close(classes[0], expected)
    with pytest.raises(ValueError, match="overlap"):
        paired_query_sequences(torch.ones(1, 2, 3), torch.ones(1, 2, 3), torch.ones(1, 1, 3))


def test_shuffle_support_moves_labels_with_their_examples():
    x = torch.arange(2 * 6, dtype=torch.float32).view(2, 6, 1)
    task = Task(x, (x[..., 0] % 6).long(), x[:, :1], torch.zeros(2, 1, dtype=torch.long))
    shuffled = shuffle_support(task, torch.Generator().manual_seed(0))
    torch.testing.assert_close(shuffled.support_y, (shuffled.support_x[..., 0] % 6).long())  # pairs intact
    assert not torch.equal(shuffled.support_x, task.support_x)  # the order changed
    assert torch.equal(shuffled.support_x.sort(dim=1).values, task.support_x)  # the same examples
    torch.testing.assert_close(shuffled.query_x, task.query_x)


def test_shuffled_support_resumes_exactly_from_its_state():
    sampler = ShuffledSupport(EpisodicSampler(make_dataset(size=8), 3, 2, 1, seed=0), seed=1)
    sampler.sample(2)
    state = sampler.state_dict()
    first = sampler.sample(2)
    sampler.load_state_dict(state)
    again = sampler.sample(2)
    torch.testing.assert_close(again.support_x, first.support_x)
    torch.testing.assert_close(again.support_y, first.support_y)
    labels_in_order = torch.arange(3).repeat_interleave(2)
    assert any(not torch.equal(row, labels_in_order) for row in sampler.sample(20).support_y)


def test_prefix_sequence_drops_the_last_label_and_x_positions_point_at_inputs():
    xs, ys = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    sequence = prefix_sequence(xs, ys)
    assert sequence.shape == (2, 5, 4)
    torch.testing.assert_close(sequence[:, x_positions(3)], xs)
    torch.testing.assert_close(sequence[:, x_positions(3)[:-1] + 1], ys[:, :-1])


# --- causal transformer ------------------------------------------------------------------------


def test_causal_mask_later_tokens_never_change_earlier_outputs():
    torch.manual_seed(0)
    model = CausalTransformer(d_model=16, n_layers=2, n_heads=4, d_ff=32, max_len=8).eval()
    tokens = torch.randn(3, 7, 16)
    base = model(tokens)
    later = tokens.clone()
    later[:, 4] += torch.randn(3, 16)  # not a constant shift, which the first LayerNorm removes
    out = model(later)
    torch.testing.assert_close(out[:, :4], base[:, :4], rtol=0, atol=1e-6)
    assert (out[:, 4:] - base[:, 4:]).abs().amax(dim=-1).min() > 1e-4
    earlier = tokens.clone()
    earlier[:, 0] += torch.randn(3, 16)
    assert (model(earlier) - base).abs().amax(dim=-1).min() > 1e-4  # every position sees token 0


def test_query_label_never_reaches_its_prediction_and_queries_do_not_see_each_other():
    torch.manual_seed(0)
    learner = tiny_regressor()
    task = linear_task(q=3)
    base = learner(task)
    assert base.shape == (2, 3, 1)
    relabelled = Task(task.support_x, task.support_y, task.query_x, task.query_y + 100.0)
    torch.testing.assert_close(learner(relabelled), base, rtol=0, atol=0)
    moved = task.query_x.clone()
    moved[:, 1] += 3.0
    out = learner(Task(task.support_x, task.support_y, moved, task.query_y))
    torch.testing.assert_close(out[:, [0, 2]], base[:, [0, 2]], rtol=0, atol=1e-6)
    assert (out[:, 1] - base[:, 1]).abs().min() > 1e-5
    out = learner(Task(task.support_x, task.support_y + 1.0, task.query_x, task.query_y))
    assert (out - base).abs().min() > 1e-5  # the support labels are read


def test_prefix_predictions_see_only_earlier_examples():
    torch.manual_seed(0)
    learner = tiny_regressor()
    task = linear_task(k=5)
    curve = learner.prefix_predictions(task)
    assert curve.shape == (2, 5, 1)
    support_y = task.support_y.clone()
    support_y[:, 2] += 1.0  # the label of example 3 enters only the predictions of examples 4, 5
    changed = learner.prefix_predictions(Task(task.support_x, support_y, task.query_x, task.query_y))
    torch.testing.assert_close(changed[:, :3], curve[:, :3], rtol=0, atol=1e-6)
    assert (changed[:, 3:] - curve[:, 3:]).abs().min() > 1e-5


def test_paired_learner_ignores_query_labels_and_other_queries():
    torch.manual_seed(0)
    learner = InContextLearner(2, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=5, layout="paired").eval()
    task = linear_task(k=4, q=3)  # k + 1 = 5 tokens fit max_len=5 (2k + 1 = 9 would not)
    base = learner(task)
    relabelled = Task(task.support_x, task.support_y, task.query_x, task.query_y + 100.0)
    torch.testing.assert_close(learner(relabelled), base, rtol=0, atol=0)
    moved = task.query_x.clone()
    moved[:, 1] += 3.0
    out = learner(Task(task.support_x, task.support_y, moved, task.query_y))
    torch.testing.assert_close(out[:, [0, 2]], base[:, [0, 2]], rtol=0, atol=1e-6)
    out = learner(Task(task.support_x, task.support_y + 1.0, task.query_x, task.query_y))
    assert (out - base).abs().min() > 1e-5  # the support labels are read
    with pytest.raises(ValueError, match="interleaved"):
        learner.prefix_predictions(task)
    with pytest.raises(ValueError, match="interleaved"):
        InContextLearner(2, layout="paired", loss_on_all_positions=True)


def test_prefix_predictions_need_only_2k_minus_1_positions():
    learner = tiny_regressor(max_len=9)  # queries need 2k + 1 <= 9: k <= 4; prefixes 2k - 1 <= 9: k <= 5
    assert learner.prefix_predictions(linear_task(k=5)).shape == (2, 5, 1)
    with pytest.raises(ValueError, match="max_len=9"):
        learner(linear_task(k=5))


def test_support_order_matters_with_learned_positions():
    torch.manual_seed(0)
    learner = tiny_regressor()
    task = linear_task(k=4)
    perm = torch.tensor([3, 1, 0, 2])
    shuffled = Task(task.support_x[:, perm], task.support_y[:, perm], task.query_x, task.query_y)
    assert (learner(shuffled) - learner(task)).abs().max() > 1e-5


def test_loss_on_all_positions_scores_prefix_and_query_predictions():
    torch.manual_seed(0)
    learner = tiny_regressor(loss_on_all_positions=True)
    task = linear_task(k=4, q=3)
    outputs = torch.cat([learner.prefix_predictions(task), learner(task)], dim=1)
    expected = task_loss(outputs, torch.cat([task.support_y, task.query_y], dim=1))
    torch.testing.assert_close(learner.meta_loss(task), expected)
    learner.loss_on_all_positions = False
    torch.testing.assert_close(learner.meta_loss(task), task_loss(learner(task), task.query_y))


def test_classification_with_a_conv_encoder_on_images():
    torch.manual_seed(0)
    task = EpisodicSampler(make_dataset(size=8), 3, 2, 2, seed=0).sample(2)  # 3-way 2-shot, 8x8
    encoder = conv4(hidden_channels=8, num_blocks=2)  # [batch, 1, 8, 8] -> [batch, 32]
    learner = InContextLearner(32, n_way=3, encoder=encoder, d_model=16, n_layers=1, n_heads=2, max_len=16)
    logits = learner(task)
    assert logits.shape == (2, 6, 3)
    assert learner.prefix_predictions(task).shape == (2, 6, 3)
    learner.meta_loss(task).backward()
    assert encoder[0][0].weight.grad.abs().sum() > 0  # trained end to end through the sequence


# --- baselines ---------------------------------------------------------------------------------


def test_least_squares_recovers_w_from_d_examples_where_averaging_and_nn_do_not():
    g = torch.Generator().manual_seed(0)
    d, n = 4, 12
    xs = torch.randn(200, n, d, generator=g, dtype=torch.float64)
    w = torch.randn(200, d, 1, generator=g, dtype=torch.float64)
    ys = xs @ w
    err = lambda pred: normalised_squared_error(pred, ys, d).mean(dim=0)  # noqa: E731, [n]
    ls = err(least_squares_predictions(xs, ys))
    avg, knn = err(averaging_predictions(xs, ys)), err(nearest_neighbour_predictions(xs, ys))
    assert ls[d:].max() < 1e-8
    assert ls[d - 1] > 0.1  # fewer than d examples cannot pin w down
    assert avg[d:].min() > 0.2 and knn[d:].min() > 0.2


def test_ridge_tends_to_least_squares_and_beats_it_on_noisy_labels():
    g = torch.Generator().manual_seed(0)
    d, n, sigma = 4, 10, 1.0
    xs = torch.randn(2000, n, d, generator=g, dtype=torch.float64)
    w = torch.randn(2000, d, 1, generator=g, dtype=torch.float64)
    clean = xs @ w
    tiny, exact = ridge_predictions(xs, clean, 1e-9), least_squares_predictions(xs, clean)
    rows = [i for i in range(n) if i != d]  # n = d: square systems, a few badly conditioned
    torch.testing.assert_close(tiny[:, rows], exact[:, rows], atol=1e-3, rtol=0)
    noisy = clean + sigma * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    err = lambda pred: normalised_squared_error(pred, clean, d).mean(dim=0)  # noqa: E731
    ridge, ls = err(ridge_predictions(xs, noisy, sigma**2)), err(least_squares_predictions(xs, noisy))
    assert ridge[d] < 0.5 * ls[d]  # least squares interpolates the noise at n = d
    assert (ridge[1:] <= ls[1:] + 0.02).all()
    with pytest.raises(ValueError, match="alpha"):
        ridge_predictions(xs, noisy, 0.0)


def test_averaging_and_nearest_neighbours_by_hand():
    xs = torch.tensor([[[0.0], [1.0], [10.0], [2.0], [1.1]]])
    ys = torch.tensor([[[1.0], [2.0], [3.0], [4.0], [5.0]]])
    knn = nearest_neighbour_predictions(xs, ys, k=3)[0, :, 0]
    torch.testing.assert_close(knn, torch.tensor([0.0, 1.0, 1.5, 2.0, (2.0 + 4.0 + 1.0) / 3]))
    avg = averaging_predictions(xs, ys)[0, :, 0]
    w_hat = (0 * 1.0 + 1.0 * 2.0 + 10.0 * 3.0 + 2.0 * 4.0) / 4  # (1/i) sum y_j x_j before x_5
    torch.testing.assert_close(avg[4], torch.tensor(w_hat * 1.1))
    assert avg[0] == 0.0


def test_zero_predictor_and_averaging_have_their_expected_normalised_errors():
    d = 3
    task = LinearTasks(d, 2 * d, 1, seed=0).sample(4000)
    xs = torch.cat([task.support_x, task.query_x], dim=1)
    ys = torch.cat([task.support_y, task.query_y], dim=1)
    zero = normalised_squared_error(torch.zeros_like(ys), ys, d).mean()
    assert abs(float(zero) - 1.0) < 0.15
    averaging = normalised_squared_error(averaging_predictions(xs, ys)[:, -1], ys[:, -1], d).mean()
    assert abs(float(averaging) - (d + 1) / (2 * d)) < 0.15


# --- a short meta-training run -----------------------------------------------------------------


@pytest.mark.slow
def test_short_training_beats_averaging_at_the_query():
    torch.manual_seed(0)
    d, k = 2, 4
    learner = InContextLearner(d, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=2 * k + 1,
                               loss_on_all_positions=True)
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    sampler = LinearTasks(d, k, 4, seed=1)
    for _ in range(500):
        loss = learner.meta_loss(sampler.sample(64))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = LinearTasks(d, k, 1, seed=2).sample(2000)
    with torch.no_grad():
        model = normalised_squared_error(learner.eval()(test)[:, 0], test.query_y[:, 0], d).mean()
    xs = torch.cat([test.support_x, test.query_x], dim=1)
    ys = torch.cat([test.support_y, test.query_y], dim=1)
    averaging = normalised_squared_error(averaging_predictions(xs, ys)[:, k], ys[:, k], d).mean()
    # Averaging sits near (d + 1) / k = 0.75; the trained model near 0.2 (0.21-0.23 over seeds).
    assert float(model) < 0.5 * float(averaging)
    result = evaluate(learner, LinearTasks(d, k, 5, seed=3), num_episodes=40)
    assert result.metric == "mse" and result.mean < 1.0


# --- bad inputs --------------------------------------------------------------------------------


def test_sequences_longer_than_max_len_are_rejected():
    learner = tiny_regressor(max_len=8)  # k = 4 needs 9 tokens
    task = linear_task(k=4)
    with pytest.raises(ValueError, match=r"support_x.*k=4.*max_len=8"):
        learner(task)
    with pytest.raises(ValueError, match="max_len=8"):
        learner.transformer(torch.zeros(1, 9, 16))


def test_labels_outside_n_way_are_rejected():
    learner = InContextLearner(4, n_way=3, d_model=16, n_layers=1, n_heads=2, max_len=16)
    with pytest.raises(ValueError, match=r"support_y labels must lie in 0\.\.2 \(n_way=3\), got labels 0\.\.3"):
        learner.adapt(torch.randn(1, 4, 4), torch.tensor([[0, 1, 2, 3]]))
    with pytest.raises(TypeError, match="support_y must hold integer class labels"):
        learner.adapt(torch.randn(1, 2, 4), torch.tensor([[0.0, 1.0]]))


def test_input_dimension_mismatches_are_rejected():
    learner = tiny_regressor(d=3)
    with pytest.raises(ValueError, match=r"support_x must be \[tasks, n, in_features=3\].*\(2, 4, 2\)"):
        learner.adapt(torch.randn(2, 4, 2), torch.randn(2, 4, 1))
    state = learner.adapt(torch.randn(2, 4, 3), torch.randn(2, 4, 1))
    with pytest.raises(ValueError, match="query_x"):
        learner.predict(state, torch.randn(2, 1, 4))
    with pytest.raises(ValueError, match="support_y must have shape"):
        learner.adapt(torch.randn(2, 4, 3), torch.randn(2, 4))
    encoder = conv4(hidden_channels=8, num_blocks=2)  # 32 features, not 30
    images = InContextLearner(30, n_way=2, encoder=encoder, d_model=16, n_layers=1, n_heads=2)
    with pytest.raises(ValueError, match="in_features=30"):
        images.adapt(torch.randn(1, 2, 1, 8, 8), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="pred has shape"):
        normalised_squared_error(torch.zeros(2, 3, 1), torch.zeros(2, 3), 2)


def test_causal_transformer_checks_dropout():
    with pytest.raises(TypeError, match="dropout must be a number, got str '0.1'"):
        CausalTransformer(dropout="0.1")
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got 1"):
        CausalTransformer(dropout=1)
