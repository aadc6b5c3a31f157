"""The memory-augmented network (Santoro et al. 2016) of Chapter 5: its memory functions on inputs small
enough to check by hand, the offset-label stream, the support/query interface, and a short training run."""

from __future__ import annotations

import math

import pytest
import torch

from mlhelpers.learners import (
    MANN,
    MemoryState,
    accuracy_by_instance,
    cosine_read_weights,
    instance_numbers,
    least_used_weights,
    update_usage,
    write_weights,
)
from mlhelpers.sequences import offset_labels
from mlhelpers.tasks import Task


def small_mann(**kwargs) -> MANN:
    torch.manual_seed(0)
    settings = dict(controller=12, slots=6, width=5, heads=2)
    return MANN(4, 3, **{**settings, **kwargs})


def vector_task(tasks: int = 2, k: int = 7, q: int = 3, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    return Task(torch.randn(tasks, k, 4, generator=g), torch.randint(3, (tasks, k), generator=g),
                torch.randn(tasks, q, 4, generator=g), torch.randint(3, (tasks, q), generator=g))


# --- the memory, by hand -----------------------------------------------------------------------


def test_cosine_read_weights_by_hand():
    memory = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]]])  # [1, 3 slots, 2]
    key = torch.tensor([[[5.0, 0.0]]])  # cosines 1, 0, -1 whatever the lengths
    e = math.e
    expected = torch.tensor([e, 1.0, 1 / e]) / (e + 1 + 1 / e)
    assert torch.allclose(cosine_read_weights(key, memory)[0, 0], expected)
    assert torch.allclose(cosine_read_weights(0.1 * key, 7 * memory), cosine_read_weights(key, memory))
    sharper = torch.tensor([e**2, 1.0, e**-2]) / (e**2 + 1 + e**-2)  # key strength 2: softmax(2 cos)
    assert torch.allclose(cosine_read_weights(key, memory, torch.tensor([[2.0]]))[0, 0], sharper)


def test_least_used_weights_by_hand():
    usage = torch.tensor([[0.5, 0.1, 0.3, 0.9]])
    rows = least_used_weights(usage, 2)
    assert rows.tolist() == [[[0, 1, 0, 0], [0, 0, 1, 0]]]  # slot 1 least used, then slot 2
    nth_smallest = usage.sort().values[:, 1:2]  # the paper's m(w^u, n) with n = 2
    assert torch.equal(rows.sum(dim=1), (usage <= nth_smallest).float())  # the paper's w^lu
    assert least_used_weights(torch.zeros(1, 3), 2).tolist() == [[[1, 0, 0], [0, 1, 0]]]  # ties: lower index


def test_write_weights_and_usage_by_hand():
    previous_read = torch.tensor([[[0.7, 0.2, 0.1]]])
    least_used = torch.tensor([[[0.0, 0.0, 1.0]]])
    assert torch.equal(write_weights(previous_read, least_used, torch.ones(1, 1)), previous_read)
    assert torch.equal(write_weights(previous_read, least_used, torch.zeros(1, 1)), least_used)
    mixed = write_weights(previous_read, least_used, torch.tensor([[0.25]]))
    assert torch.allclose(mixed, torch.tensor([[[0.175, 0.05, 0.775]]]))
    usage = update_usage(torch.tensor([[1.0, 0.0, 2.0]]), previous_read, mixed, gamma=0.5)
    assert torch.allclose(usage, torch.tensor([[0.5 + 0.7 + 0.175, 0.2 + 0.05, 1.0 + 0.1 + 0.775]]))


def _forced_gate(learner: MANN, value: float) -> None:
    """Make sigmoid(alpha) = 0 (value -30: write to the least-used slot) or 1 (+30: where it read last)."""
    with torch.no_grad():
        learner.gate.weight.zero_()
        learner.gate.bias.fill_(value)


def test_lru_write_goes_to_the_least_used_slot_and_replaces_it():
    learner = small_mann(heads=1)
    _forced_gate(learner, -30.0)
    task = vector_task(tasks=1, k=9)
    trace = learner.stream(task.support_x, task.support_y, record=True)
    usage_before = torch.cat([torch.zeros(1, 1, learner.slots), trace.usage[:, :-1]], dim=1)
    for t in range(task.n_support):
        slot = int(torch.sort(usage_before[0, t], stable=True).indices[0])
        assert torch.allclose(trace.write_weights[0, t, 0], torch.nn.functional.one_hot(
            torch.tensor(slot), learner.slots).float(), atol=1e-6), t
    # replaying the first steps by hand: the written slot holds exactly the key (it was zeroed first)
    state = learner.initial_state(1)
    features, previous = task.support_x, offset_labels(task.support_y, 3)
    for t in range(3):
        state.previous_label = previous[:, t]
        hidden, _ = learner.lstm(torch.cat([features[:, t], state.previous_label, state.reads], -1),
                                 (state.hidden, state.cell))
        key = torch.tanh(learner.key(hidden))
        slot = int(torch.sort(state.usage[0], stable=True).indices[0])
        _, state, _ = learner.step(features[:, t], state)
        assert torch.allclose(state.memory[0, slot], key[0], atol=1e-6)


def test_add_vector_is_what_gets_written():
    learner = small_mann(heads=1, add_vector=True, key_strength=True)
    _forced_gate(learner, -30.0)
    task = vector_task(tasks=1)
    state = learner.initial_state(1)
    state.previous_label = torch.zeros(1, 3)
    hidden, _ = learner.lstm(torch.cat([task.support_x[:, 0], state.previous_label, state.reads], -1),
                             (state.hidden, state.cell))
    _, state, _ = learner.step(task.support_x[:, 0], state)
    assert torch.allclose(state.memory[0, 0], torch.tanh(learner.add(hidden))[0], atol=1e-6)  # slot 0: all unused
    assert not torch.allclose(state.memory[0, 0], torch.tanh(learner.key(hidden))[0], atol=1e-3)


def test_gate_one_writes_where_the_previous_step_read():
    learner = small_mann()
    _forced_gate(learner, 30.0)
    task = vector_task(tasks=1)
    trace = learner.stream(task.support_x, task.support_y, record=True)
    assert torch.allclose(trace.write_weights[:, 1:], trace.read_weights[:, :-1], atol=1e-6)


# --- the offset-label stream -------------------------------------------------------------------


def test_offset_labels_show_the_previous_label_never_the_own_one():
    y = torch.tensor([[2, 0, 1, 1]])
    rows = offset_labels(y, 3)
    assert rows[0, 0].tolist() == [0, 0, 0]
    assert rows[0, 1:].argmax(-1).tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="y labels must lie in 0..2"):
        offset_labels(y + 1, 3)


@pytest.mark.parametrize("external_memory", [True, False])
def test_a_label_only_reaches_the_steps_after_its_example(external_memory):
    learner = small_mann(external_memory=external_memory)
    task = vector_task(tasks=1, k=8)
    with torch.no_grad():
        before = learner.stream(task.support_x, task.support_y)
        y = task.support_y.clone()
        y[0, 4] = (y[0, 4] + 1) % 3  # another label for example 4
        after = learner.stream(task.support_x, y)
    assert torch.equal(before[:, :5], after[:, :5])  # the prediction of y_4 and all before it: unchanged
    assert not torch.allclose(before[:, 5], after[:, 5])  # step 5 is fed y_4


def test_predict_is_one_more_stream_step_per_query_and_queries_do_not_see_each_other():
    learner = small_mann()
    task = vector_task()
    with torch.no_grad():
        outputs = learner.predict(learner.adapt(task.support_x, task.support_y), task.query_x)
        for j in range(task.n_query):
            x = torch.cat([task.support_x, task.query_x[:, j:j + 1]], dim=1)
            y = torch.cat([task.support_y, torch.zeros(2, 1, dtype=torch.long)], dim=1)  # its label is never fed
            assert torch.allclose(learner.stream(x, y)[:, -1], outputs[:, j], atol=1e-6)
        changed = task.query_x.clone()
        changed[:, 1:] = torch.randn_like(changed[:, 1:])
        again = learner.predict(learner.adapt(task.support_x, task.support_y), changed)
    assert torch.allclose(again[:, 0], outputs[:, 0], atol=1e-6)
    assert outputs.shape == (2, task.n_query, 3)


def test_meta_loss_scores_every_support_step_and_the_queries():
    learner = small_mann()
    task = vector_task()
    with torch.no_grad():
        stream = learner.stream(task.support_x, task.support_y)
        query = learner(task)
    expected = torch.nn.functional.cross_entropy(torch.cat([stream, query], 1).flatten(0, 1),
                                                 torch.cat([task.support_y, task.query_y], 1).flatten())
    assert torch.allclose(learner.meta_loss(task), expected, atol=1e-6)
    only_queries = small_mann(loss_on_all_positions=False)
    with torch.no_grad():
        q = only_queries(task)
    assert torch.allclose(only_queries.meta_loss(task),
                          torch.nn.functional.cross_entropy(q.flatten(0, 1), task.query_y.flatten()), atol=1e-6)


def test_meta_gradient_matches_finite_differences():
    learner = small_mann().double()
    task = vector_task(k=5, q=2)
    task = Task(task.support_x.double(), task.support_y, task.query_x.double(), task.query_y)
    weight = learner.key.weight

    def loss_of(w):
        original = weight.data.clone()
        weight.data.copy_(w)
        value = learner.meta_loss(task)
        weight.data.copy_(original)
        return value

    learner.zero_grad()
    learner.meta_loss(task).backward()
    g = torch.Generator().manual_seed(1)
    direction = torch.randn(weight.shape, generator=g, dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        numeric = (loss_of(weight + eps * direction) - loss_of(weight - eps * direction)) / (2 * eps)
    assert torch.allclose((weight.grad * direction).sum(), numeric, rtol=1e-4, atol=1e-8)


# --- accuracy by instance ------------------------------------------------------------------------


def test_instance_numbers_and_accuracy_by_instance_by_hand():
    labels = torch.tensor([[0, 1, 0, 0, 1], [2, 2, 2, 1, 0]])
    assert instance_numbers(labels).tolist() == [[1, 1, 2, 3, 2], [1, 2, 3, 1, 1]]
    predicted = torch.tensor([[1, 1, 0, 2, 1], [2, 0, 2, 1, 1]])  # right: [F T T F T], [T F T T F]
    logits = torch.nn.functional.one_hot(predicted, 3).float()
    acc = accuracy_by_instance(logits, labels)
    assert acc[0].tolist() == [0.5, 1.0, 0.0]  # 1st: F, T; 2nd: T, T; 3rd: F
    assert torch.allclose(acc[1], torch.tensor([2 / 3, 0.0, 1.0]))
    assert torch.isnan(accuracy_by_instance(logits[:, :2], labels[:, :2], max_instance=3)[0, 1:]).all()


# --- named errors -------------------------------------------------------------------------------


def test_named_errors():
    learner = small_mann()
    task = vector_task()
    adapted = learner.adapt(task.support_x, task.support_y)
    with pytest.raises(ValueError, match="adapted holds the state of 2 tasks but query_x holds 1"):
        learner.predict(adapted, task.query_x[:1])
    with pytest.raises(TypeError, match="MemoryState"):
        learner.predict((task.support_x,), task.query_x)
    with pytest.raises(TypeError, match="support_y must hold integer class labels"):
        learner.adapt(task.support_x, task.support_y.float())
    with pytest.raises(ValueError, match="support_y labels must lie in 0..2"):
        learner.stream(task.support_x, task.support_y + 2)
    with pytest.raises(ValueError, match="support_x"):
        learner.stream(task.support_x[..., :3], task.support_y)
    with pytest.raises(ValueError, match="heads=7"):
        MANN(4, 3, slots=6, heads=7)
    assert isinstance(adapted, MemoryState) and adapted.num_streams == 2


# --- learning ------------------------------------------------------------------------------------


class PrototypeStreams:
    """Episodes of 3 classes, each a random prototype vector; an example is its prototype plus noise."""

    def __init__(self, seed: int, per_class: int = 5, noise: float = 0.3) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.per_class, self.noise = per_class, noise

    def sample(self, tasks: int) -> Task:
        prototypes = torch.randn(tasks, 3, 4, generator=self.g)
        y = torch.arange(3).repeat(self.per_class + 1).expand(tasks, -1)
        y = torch.gather(y, 1, torch.rand(y.shape, generator=self.g).argsort(1))
        x = prototypes[torch.arange(tasks)[:, None], y] + self.noise * torch.randn(*y.shape, 4, generator=self.g)
        k = 3 * self.per_class
        return Task(x[:, :k], y[:, :k].contiguous(), x[:, k:], y[:, k:].contiguous())


@pytest.mark.slow
def test_brief_training_beats_chance_on_later_instances():
    torch.manual_seed(0)
    learner = MANN(4, 3, controller=32, slots=16, width=8, heads=1)
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    train = PrototypeStreams(seed=1)
    for _ in range(400):
        loss = learner.meta_loss(train.sample(16))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = PrototypeStreams(seed=2).sample(200)
    with torch.no_grad():
        logits = learner.stream(test.support_x, test.support_y)
    later = instance_numbers(test.support_y) >= 2
    accuracy = (logits.argmax(-1) == test.support_y)[later].float().mean()
    n = int(later.sum())
    # chance is 1/3; five standard errors of chance above it, with n = 2400 predictions
    assert accuracy > 1 / 3 + 5 * math.sqrt((1 / 3) * (2 / 3) / n), float(accuracy)
