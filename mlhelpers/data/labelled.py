"""A labelled image collection with named, class-disjoint splits: what episodic samplers draw from (Chapter 1)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mlhelpers.validation import check_finite, check_floating, check_same_device, describe


@dataclass
class LabelledDataset:
    """Images with integer class labels, optional class groups and class-disjoint splits.

    Attributes:
        images: ``[N, C, H, W]`` float tensor.
        labels: ``[N]`` int64 class ids in ``0 .. num_classes - 1``.
        class_names: one name per class id.
        class_groups: ``[num_classes]`` int64 group id per class (Omniglot: the alphabet), or None.
        group_names: one name per group id, or None.
        splits: split name -> ``[n]`` int64 tensor of the class ids in that split (e.g.
            ``{"train": ..., "val": ..., "test": ...}``). No class may be in two splits.
    """

    images: Tensor
    labels: Tensor
    class_names: list[str]
    class_groups: Tensor | None = None
    group_names: list[str] | None = None
    splits: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.dim() != 4:
            shape = tuple(self.images.shape) if isinstance(self.images, Tensor) else type(self.images).__name__
            raise ValueError(f"images must be a [N, C, H, W] tensor, got {shape}")
        check_floating("images", self.images)
        check_finite("images", self.images)
        if not isinstance(self.labels, Tensor) or self.labels.dim() != 1:
            shape = tuple(self.labels.shape) if isinstance(self.labels, Tensor) else type(self.labels).__name__
            raise ValueError(f"labels must be a 1-D int64 tensor [N], got {shape}")
        if self.labels.dtype != torch.int64:
            raise TypeError(f"labels must be int64, got {self.labels.dtype}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if isinstance(self.class_names, str) or not all(isinstance(n, str) for n in self.class_names):
            raise TypeError(f"class_names must be a list of str, got {describe(self.class_names)}")
        check_same_device(images=self.images, labels=self.labels)
        if not isinstance(self.splits, dict):
            raise TypeError(f"splits must be a dict split name -> class ids, got {describe(self.splits)}")
        for name, classes in self.splits.items():
            if not isinstance(classes, Tensor) or classes.dim() != 1 or classes.dtype != torch.int64:
                raise TypeError(f"splits[{name!r}] must be a 1-D int64 tensor of class ids, got {describe(classes)}")
        n_classes = len(self.class_names)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= n_classes):
            raise ValueError(
                f"labels must lie in 0..{n_classes - 1} (one per class name), "
                f"got {int(self.labels.min())}..{int(self.labels.max())}"
            )
        groups = self.class_groups
        if groups is not None and (not isinstance(groups, Tensor) or groups.dtype != torch.int64):
            raise TypeError(f"class_groups must be an int64 tensor [num_classes] or None, got {describe(groups)}")
        if self.class_groups is not None and len(self.class_groups) != n_classes:
            raise ValueError(f"class_groups has {len(self.class_groups)} entries for {n_classes} classes")
        seen: dict[int, str] = {}
        for name, classes in self.splits.items():
            for c in classes.tolist():
                if not 0 <= c < n_classes:
                    raise ValueError(f"split {name!r} names class {c}, outside 0..{n_classes - 1}")
                if c in seen:
                    raise ValueError(f"class {c} is in both split {seen[c]!r} and split {name!r}")
                seen[c] = name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def classes_of(self, split: str | None) -> Tensor:
        """Class ids of ``split`` (all classes for None); a ValueError names the known splits."""
        if split is None:
            return torch.arange(self.num_classes)
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; this dataset has splits {sorted(self.splits)}")
        return self.splits[split]

    def counts(self) -> Tensor:
        """``[num_classes]`` number of examples per class."""
        return torch.bincount(self.labels, minlength=self.num_classes)
