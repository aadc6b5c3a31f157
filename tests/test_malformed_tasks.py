"""Property test: random malformed tasks fed to every learner (issue 24).

Each call either returns finite outputs of the documented shape ``[tasks, n_query, out]`` or raises
a TypeError/ValueError whose message names the argument at fault. Anything else (a raw torch error,
NaN outputs, a wrong shape) is a silent wrong answer or an unnamed error.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_validation_table import LEARNERS, image_task

from mlhelpers.tasks import Task

FIELDS = ("support_x", "support_y", "query_x", "query_y")
NAMES = (*FIELDS, "Task", "labels", "n_way", "outputs", "targets")
"""What an error message may name: a field of the task, or what the learner calls it."""


def _mutate(value: torch.Tensor, kind: str, amount: int) -> object:
    if value.dim() < 2 or value.numel() == 0:  # already broken by an earlier change: leave it so
        return value
    if kind == "dtype":
        return value.to((torch.float64, torch.float16, torch.int64, torch.bool, torch.uint8, torch.int32)[amount % 6])
    if kind == "non-finite":
        value = value.float().clone()
        value.view(-1)[amount % value.numel()] = (float("nan"), float("inf"), -float("inf"))[amount % 3]
        return value
    if kind == "empty":
        return value[:, :0]
    if kind == "fewer":
        return value[:, : max(1, value.shape[1] - 1 - amount % 2)]
    if kind == "extra-dim":
        return value.unsqueeze(-1)
    if kind == "drop-dim":
        return value.reshape(value.shape[0], -1)[..., 0] if value.dim() > 2 else value[:, 0]
    if kind == "tasks":
        return value[:1] if value.shape[0] > 1 else torch.cat([value, value])
    if kind == "labels":
        return value + (-(amount % 3) - 1 if amount % 2 else 3 + amount % 4)
    if kind == "not-a-tensor":
        return value.tolist()
    raise AssertionError(kind)


KINDS = ("dtype", "non-finite", "empty", "fewer", "extra-dim", "drop-dim", "tasks", "labels", "not-a-tensor")
mutations = st.lists(st.tuples(st.sampled_from(FIELDS), st.sampled_from(KINDS), st.integers(0, 11)),
                     min_size=1, max_size=2)


@pytest.mark.parametrize("name", sorted(LEARNERS))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=mutations, method=st.sampled_from(("forward", "meta_loss", "adapt-predict")))
def test_malformed_task_gives_finite_outputs_or_a_named_error(name, changes, method):
    make, shape = LEARNERS[name]
    torch.manual_seed(0)
    learner = make()
    fields = dict(zip(FIELDS, (lambda t: (t.support_x, t.support_y, t.query_x, t.query_y))(image_task(x_shape=shape))))
    for field, kind, amount in changes:
        if field.endswith("_x") and kind == "labels":  # shifting inputs by an integer is no error
            kind = "dtype"
        if isinstance(fields[field], torch.Tensor):
            fields[field] = _mutate(fields[field], kind, amount)
    try:
        if method == "adapt-predict":
            out = learner.predict(learner.adapt(fields["support_x"], fields["support_y"]), fields["query_x"])
        else:
            task = Task(**fields)
            out = learner(task) if method == "forward" else learner.meta_loss(task)
    except (TypeError, ValueError) as error:
        message = str(error)
        assert any(n in message for n in NAMES), f"{name}: {type(error).__name__} names no argument: {message}"
        return
    except Exception as error:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{name} with {changes} via {method}: raw {type(error).__name__}: {error}")
    assert isinstance(out, torch.Tensor)
    assert bool(torch.isfinite(out).all()), f"{name} with {changes} via {method}: non-finite outputs"
    if method != "meta_loss":
        query_x = fields["query_x"]
        assert out.shape[:2] == query_x.shape[:2], (name, changes, tuple(out.shape))
    else:
        assert out.dim() == 0


@pytest.mark.parametrize("name", sorted(LEARNERS))
@pytest.mark.parametrize("kind", ["extra-dim", "drop-dim"])  # drop-dim: x[..., 0] where x has C, H, W
def test_examples_of_another_rank_get_a_named_error(name, kind):
    """Examples of another rank pass every check that does not know the model, then used to fail
    inside the user's backbone with a raw torch error that names no argument."""
    make, shape = LEARNERS[name]
    torch.manual_seed(0)
    learner = make()
    task = image_task(x_shape=shape)

    def change(x):
        return x.unsqueeze(-1) if kind == "extra-dim" or x.dim() <= 3 else x[..., 0]

    bad = Task(change(task.support_x), task.support_y, change(task.query_x), task.query_y)
    for call in (lambda: learner(bad), lambda: learner.meta_loss(bad),
                 lambda: learner.predict(learner.adapt(bad.support_x, bad.support_y), bad.query_x)):
        try:
            out = call()
        except (TypeError, ValueError) as error:
            assert "support_x" in str(error) or "query_x" in str(error), f"{name}: {error}"
            continue
        assert out.isfinite().all() and (out.dim() == 0 or out.shape[:2] == task.query_y.shape[:2]), name
