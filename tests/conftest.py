"""Shared fixtures: small synthetic labelled datasets that run in milliseconds."""

from __future__ import annotations

import pytest
import torch

from mlhelpers.data.labelled import LabelledDataset


def make_dataset(
    num_classes: int = 12, per_class: int = 10, size: int = 6, groups: int = 3
) -> LabelledDataset:
    """``num_classes`` classes whose images encode (class, item) so tests can identify them."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = torch.zeros(num_classes * per_class, 1, size, size)
    images[:, 0, 0, 0] = labels.float()
    images[:, 0, 0, 1] = torch.arange(per_class).repeat(num_classes).float()
    images[:, 0, 1, 0] = 1.0  # an asymmetric mark, so rotations are visible
    third = num_classes // 3
    return LabelledDataset(
        images=images,
        labels=labels,
        class_names=[f"class{c}" for c in range(num_classes)],
        class_groups=torch.arange(num_classes) % groups,
        group_names=[f"group{g}" for g in range(groups)],
        splits={
            "train": torch.arange(0, num_classes - 2 * third),
            "val": torch.arange(num_classes - 2 * third, num_classes - third),
            "test": torch.arange(num_classes - third, num_classes),
        },
    )


@pytest.fixture
def dataset() -> LabelledDataset:
    return make_dataset()
