"""Chapter 5's label streams (Santoro et al. 2016's episodes): every class shown ``per_class`` times with
distinct examples, labels shuffled per episode, classes from the given split only, and reproducible."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.samplers.label_streams import LabelStreams, rotated_features


def table(classes: int = 8, per: int = 12, turns: int = 2):
    """Features that name their example: feature 0 = example index, feature 1 = turn."""
    n = classes * per
    labels = torch.arange(classes).repeat_interleave(per)
    rows = [torch.stack([torch.arange(n).float(), torch.full((n,), float(r))], 1) for r in range(turns)]
    features = torch.stack(rows)
    return features, labels


def test_streams_show_each_class_per_class_times_with_distinct_examples_of_the_split():
    features, labels = table()
    classes = torch.tensor([1, 3, 4, 6, 7])
    sampler = LabelStreams(features, labels, classes, n_way=3, per_class=4, turns=2, seed=0)
    task = sampler.sample(20)
    assert task.support_x.shape == (20, 12, 2) and task.query_x.shape == (20, 1, 2)
    first_labels = set()
    for e in range(20):
        y, idx, turn = task.support_y[e], task.support_x[e, :, 0].long(), task.support_x[e, :, 1]
        assert torch.bincount(y, minlength=3).tolist() == [4, 4, 4]
        assert len(set(zip(idx.tolist(), turn.tolist()))) == 12  # distinct drawings (a turn makes a new class)
        for label in range(3):
            cls = labels[idx[y == label]]
            assert len(set(cls.tolist())) == 1 and int(cls[0]) in classes.tolist()  # one class per label
            assert len(set(turn[y == label].tolist())) == 1  # one rotation per label
        query_idx = int(task.query_x[e, 0, 0])
        same = labels[idx[y == task.query_y[e, 0]]][0]
        query_turn = float(task.query_x[e, 0, 1])
        assert labels[query_idx] == same and (query_idx, query_turn) not in set(zip(idx.tolist(), turn.tolist()))
        first_labels.add(int(labels[idx[y == 0]][0]))
    assert len(first_labels) > 1  # label 0 is not tied to one class
    again = LabelStreams(features, labels, classes, n_way=3, per_class=4, turns=2, seed=0).sample(20)
    assert torch.equal(again.support_x, task.support_x) and torch.equal(again.support_y, task.support_y)


def test_named_errors_and_standardised_features():
    features, labels = table()
    with pytest.raises(ValueError, match="per_class=12 needs at least 13"):
        LabelStreams(features, labels, torch.tensor([0, 1]), n_way=2, per_class=12)
    with pytest.raises(ValueError, match="turns=3 but features holds 2"):
        LabelStreams(features, labels, torch.tensor([0, 1]), n_way=2, turns=3)
    with pytest.raises(ValueError, match="n_way=3 classes per episode but only 2"):
        LabelStreams(features, labels, torch.tensor([0, 1]), n_way=3, per_class=2)
    images = torch.randn(24, 1, 4, 4)
    dataset = LabelledDataset(images=images, labels=torch.arange(4).repeat_interleave(6),
                              class_names=[str(i) for i in range(4)],
                              splits={"train": torch.tensor([0, 1]), "test": torch.tensor([2, 3])})
    out = rotated_features(dataset, nn.Flatten(), turns=4)
    assert out.shape == (4, 24, 16)
    raw = torch.rot90(images, 1, (-2, -1)).flatten(1)  # turn 1, standardised by the train rows' statistics
    assert torch.allclose(torch.corrcoef(torch.stack([out[1, :, 3], raw[:, 3]]))[0, 1], torch.tensor(1.0), atol=1e-5)
    train_rows = out[:, :12].flatten(0, 1)
    assert torch.allclose(train_rows.mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(train_rows.std(0), torch.ones(16), atol=1e-4)
