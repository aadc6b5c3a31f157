import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_dataset
from mlhelpers.samplers.episodic import EpisodicSampler


def test_shapes_labels_and_dtypes(dataset):
    task = EpisodicSampler(dataset, n_way=3, k_shot=2, q_query=4, split="train", seed=0).sample(5)
    assert task.support_x.shape == (5, 6, 1, 6, 6)
    assert task.query_x.shape == (5, 12, 1, 6, 6)
    assert task.support_y.dtype == torch.int64
    assert torch.equal(task.support_y[0], torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(task.query_y[0], torch.arange(3).repeat_interleave(4))


def test_classes_distinct_items_disjoint_and_labels_consistent(dataset):
    sampler = EpisodicSampler(dataset, n_way=4, k_shot=3, q_query=5, split=None, seed=1)
    task = sampler.sample(20)
    for t in range(20):
        classes = task.info["classes"][t]
        assert len(set(classes.tolist())) == 4
        support, query = task.info["support_index"][t], task.info["query_index"][t]
        assert not set(support.tolist()) & set(query.tolist())
        assert len(set(support.tolist())) == len(support)
        # The image at each index really is of the class its label says.
        assert torch.equal(dataset.labels[support], classes[task.support_y[t]])
        assert torch.equal(dataset.labels[query], classes[task.query_y[t]])
        assert torch.equal(task.support_x[t], dataset.images[support])


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_episodes_stay_inside_their_split(dataset, split):
    task = EpisodicSampler(dataset, n_way=2, k_shot=1, q_query=1, split=split, seed=0).sample(50)
    allowed = set(dataset.splits[split].tolist())
    assert set(task.info["classes"].flatten().tolist()) <= allowed


def test_every_class_of_a_split_gets_drawn(dataset):
    task = EpisodicSampler(dataset, n_way=2, k_shot=1, q_query=1, split="train", seed=0).sample(200)
    assert set(task.info["classes"].flatten().tolist()) == set(dataset.splits["train"].tolist())


def test_same_seed_same_episodes_other_seed_other_episodes(dataset):
    make = lambda seed: EpisodicSampler(dataset, 3, 1, 2, "train", seed=seed).sample(4)  # noqa: E731
    a, b, c = make(7), make(7), make(8)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.info["support_index"], c.info["support_index"])


def test_state_dict_resumes_the_stream(dataset):
    sampler = EpisodicSampler(dataset, 3, 1, 2, "train", seed=3)
    sampler.sample(2)
    state = sampler.state_dict()
    expected = sampler.sample(2)
    other = EpisodicSampler(dataset, 3, 1, 2, "train", seed=99)
    other.load_state_dict(state)
    assert torch.equal(other.sample(2).support_x, expected.support_x)


def test_rotations_make_new_classes_and_rotate_the_images(dataset):
    sampler = EpisodicSampler(dataset, n_way=10, k_shot=1, q_query=1, split="train", rotations=True, seed=0)
    task = sampler.sample(30)
    rotations = task.info["rotations"]
    assert set(rotations.flatten().tolist()) == {0, 1, 2, 3}
    # Pairs (class, rotation) are distinct; a class may appear under two rotations.
    for t in range(30):
        pairs = list(zip(task.info["classes"][t].tolist(), rotations[t].tolist()))
        assert len(set(pairs)) == 10
    for t in range(30):
        for way in range(10):
            index = task.info["support_index"][t, way]
            expected = torch.rot90(dataset.images[index], int(rotations[t, way]), dims=(-2, -1))
            assert torch.equal(task.support_x[t, way], expected)


def test_rotations_allow_more_ways_than_characters(dataset):
    n_train = len(dataset.splits["train"])
    task = EpisodicSampler(dataset, n_train * 2, 1, 1, "train", rotations=True, seed=0).sample(1)
    assert task.support_x.shape[1] == n_train * 2


def test_within_group_tasks_use_one_group():
    data = make_dataset(num_classes=30, groups=3)
    sampler = EpisodicSampler(data, n_way=4, k_shot=1, q_query=1, within_group=True, seed=0)
    task = sampler.sample(40)
    groups = data.class_groups[task.info["classes"]]
    assert (groups == groups[:, :1]).all()
    assert len(groups[:, 0].unique()) == 3  # every group gets its turn


def test_sampler_puts_batches_on_its_device(dataset):
    task = EpisodicSampler(dataset, 2, 1, 1, device=torch.device("cpu"), seed=0).sample(1)
    assert task.device.type == "cpu"


@pytest.mark.parametrize(
    "request_, message",
    [
        (dict(n_way=5, split="test"), r"n_way=5 .* split 'test' has only 4 classes"),
        (dict(n_way=17, rotations=True, split="test"), r"only 16 classes \(4 x 4 rotations\)"),
        (dict(k_shot=6, q_query=5), r"k_shot \+ q_query = 6 \+ 5 = 11 .* holds only 10"),
        (dict(split="meta-test"), r"unknown split 'meta-test'.*\['test', 'train', 'val'\]"),
        (dict(n_way=0), "n_way must be at least 1, got 0"),
        (dict(k_shot=0), "k_shot must be at least 1, got 0"),
        (dict(q_query=-2), "q_query must be at least 1, got -2"),
        (dict(n_way=3, within_group=True, split="train"), "largest group of split 'train' has only 2"),
    ],
)
def test_bad_requests_say_what_was_asked_and_what_exists(dataset, request_, message):
    kwargs = dict(dataset=dataset, n_way=2, k_shot=1, q_query=1, split="train")
    kwargs.update(request_)
    with pytest.raises(ValueError, match=message):
        EpisodicSampler(**kwargs)


def test_non_integer_sizes_are_type_errors(dataset):
    with pytest.raises(TypeError, match="k_shot must be an int"):
        EpisodicSampler(dataset, 2, 1.5, 1)
    with pytest.raises(ValueError, match="num_tasks must be at least 1"):
        EpisodicSampler(dataset, 2, 1, 1).sample(0)


@settings(max_examples=60, deadline=None)
@given(
    num_classes=st.integers(2, 15),
    per_class=st.integers(2, 8),
    n_way=st.integers(1, 20),
    k_shot=st.integers(1, 6),
    q_query=st.integers(1, 6),
    rotations=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_property_valid_requests_give_valid_episodes_and_invalid_ones_raise(
    num_classes, per_class, n_way, k_shot, q_query, rotations, seed
):
    data = make_dataset(num_classes=num_classes, per_class=per_class, groups=1)
    pool = num_classes * (4 if rotations else 1)
    valid = n_way <= pool and k_shot + q_query <= per_class
    if not valid:
        with pytest.raises(ValueError):
            EpisodicSampler(data, n_way, k_shot, q_query, rotations=rotations, seed=seed)
        return
    task = EpisodicSampler(data, n_way, k_shot, q_query, rotations=rotations, seed=seed).sample(3)
    for t in range(3):
        pairs = set(zip(task.info["classes"][t].tolist(), task.info["rotations"][t].tolist()))
        assert len(pairs) == n_way
        # An item is an image under one rotation: with rotations, the same drawing may serve two
        # classes (its 0 and 90 degree versions), never twice as the same class.
        rot = task.info["rotations"][t]
        support = set(zip(task.info["support_index"][t].tolist(), rot.repeat_interleave(k_shot).tolist()))
        query = set(zip(task.info["query_index"][t].tolist(), rot.repeat_interleave(q_query).tolist()))
        assert not support & query and len(support) == n_way * k_shot
        assert set(task.support_y[t].tolist()) == set(range(n_way))
        assert set(task.query_y[t].tolist()) == set(range(n_way))  # labels are exactly 0..N-1
        # Each label names the class whose examples carry it.
        classes = task.info["classes"][t]
        assert torch.equal(data.labels[task.info["support_index"][t]], classes[task.support_y[t]])
        assert torch.equal(data.labels[task.info["query_index"][t]], classes[task.query_y[t]])


@settings(max_examples=60, deadline=None)
@given(
    assignment=st.lists(st.sampled_from(["train", "val", "test", None]), min_size=2, max_size=14),
    split=st.sampled_from(["train", "val", "test", "other"]),
    n_way=st.integers(1, 6),
    seed=st.integers(0, 2**31),
)
def test_property_episodes_stay_in_their_split_and_bad_splits_raise(assignment, split, n_way, seed):
    """Any class-disjoint split of any dataset: a split's episodes only use its classes; a request
    for an unknown split or more ways than it has classes is a ValueError."""
    data = make_dataset(num_classes=len(assignment), per_class=4, groups=1)
    splits = {
        name: torch.tensor([c for c, s in enumerate(assignment) if s == name], dtype=torch.int64)
        for name in ("train", "val", "test")
    }
    data.splits = splits
    members = set(splits.get(split, torch.tensor([], dtype=torch.int64)).tolist())
    if split not in splits or n_way > len(members):
        with pytest.raises(ValueError, match="unknown split" if split not in splits else f"n_way={n_way}"):
            EpisodicSampler(data, n_way, 1, 2, split=split, seed=seed)
        return
    task = EpisodicSampler(data, n_way, 1, 2, split=split, seed=seed).sample(4)
    drawn = set(task.info["classes"].flatten().tolist())
    assert drawn <= members
    others = set().union(*(set(v.tolist()) for k, v in splits.items() if k != split))
    assert not drawn & others
    assert set(data.labels[task.info["query_index"]].flatten().tolist()) <= members


@settings(max_examples=40, deadline=None)
@given(a=st.sets(st.integers(0, 11), min_size=1), b=st.sets(st.integers(0, 11), min_size=1))
def test_property_overlapping_splits_are_refused(a, b):
    base = make_dataset()
    make = lambda: type(base)(base.images, base.labels, base.class_names,  # noqa: E731
                              splits={"a": torch.tensor(sorted(a)), "b": torch.tensor(sorted(b))})
    if a & b:
        with pytest.raises(ValueError, match=rf"class {min(a & b)} is in both split 'a' and split 'b'"):
            make()
    else:
        assert make().splits["a"].tolist() == sorted(a)
