import pytest
import torch

from mlhelpers.tasks import Task


def make_task(tasks=3, n_support=4, n_query=5):
    return Task(
        torch.randn(tasks, n_support, 2),
        torch.randn(tasks, n_support, 1),
        torch.randn(tasks, n_query, 2),
        torch.randn(tasks, n_query, 1),
        {"w": torch.randn(tasks, 2)},
    )


def test_shapes_and_len():
    task = make_task()
    assert len(task) == 3 and task.n_support == 4 and task.n_query == 5


def test_index_keeps_batch_dimension_and_info():
    task = make_task()
    one = task[1]
    assert one.support_x.shape == (1, 4, 2)
    assert torch.equal(one.info["w"], task.info["w"][1:2])
    assert torch.equal(task[-1].query_y, task.query_y[2:])
    with pytest.raises(IndexError, match="out of range"):
        task[3]


def test_cat_and_unbind_round_trip():
    task = make_task()
    joined = Task.cat([task[0], task[1:]])
    assert torch.equal(joined.support_x, task.support_x)
    parts = list(task.unbind())
    assert len(parts) == 3 and torch.equal(parts[2][3], task.query_y[2])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("support_y", torch.randn(2, 4, 1), "holds 2 tasks"),
        ("query_y", torch.randn(3, 6, 1), "query_x has 5 examples"),
        ("support_x", torch.randn(3), r"\[tasks, examples, ...\]"),
        ("support_x", [[1.0]], "must be a torch.Tensor"),
    ],
)
def test_inconsistent_fields_are_rejected(field, value, message):
    parts = dict(
        support_x=torch.randn(3, 4, 2),
        support_y=torch.randn(3, 4, 1),
        query_x=torch.randn(3, 5, 2),
        query_y=torch.randn(3, 5, 1),
    )
    parts[field] = value
    with pytest.raises((ValueError, TypeError), match=message):
        Task(**parts)


def test_empty_support_set_is_rejected():
    with pytest.raises(ValueError, match="empty support set"):
        Task(torch.randn(2, 0, 1), torch.randn(2, 0, 1), torch.randn(2, 3, 1), torch.randn(2, 3, 1))


def test_to_device_keeps_values():
    task = make_task()
    moved = task.to("cpu")
    assert moved.device.type == "cpu" and torch.equal(moved.info["w"], task.info["w"])
