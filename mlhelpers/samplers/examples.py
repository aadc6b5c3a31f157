"""Random labelled examples for an ordinary classifier, not episodes. Chapter 4.

What :func:`~mlhelpers.pretraining.pretrain_classifier` trains on.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from mlhelpers.data.augment import check_distortion, random_distortion
from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.samplers.episodic import ROTATIONS


def split_examples(dataset: LabelledDataset, split: str | None) -> tuple[Tensor, Tensor]:
    """Dataset indices ``[n]`` of the examples of ``split`` and their class index within it ``[n]``."""
    if not isinstance(dataset, LabelledDataset):
        raise TypeError(f"dataset must be a LabelledDataset, got {type(dataset).__name__}")
    classes = dataset.classes_of(split)  # a ValueError names the known splits
    position = torch.full((dataset.num_classes,), -1, dtype=torch.int64)
    position[classes] = torch.arange(len(classes))
    index = torch.nonzero(position[dataset.labels] >= 0).flatten()
    if len(index) == 0:
        raise ValueError(f"split {split!r} of the dataset holds no examples")
    return index, position[dataset.labels[index]]


class LabelledBatch(NamedTuple):
    """A batch of examples for an ordinary classifier: what :class:`ExampleSampler` draws."""

    x: Tensor
    """``[batch, C, H, W]`` inputs."""
    y: Tensor
    """``[batch]`` int64 class indices."""

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: torch.device | str) -> LabelledBatch:
        return LabelledBatch(self.x.to(device), self.y.to(device))


class ExampleSampler:
    """Random examples of a split (with replacement), each turned by a random number of quarter turns
    with ``rotations`` (class ``c`` at ``k`` turns is class ``ROTATIONS * c + k``).

    Args:
        images: ``[N, C, H, W]`` all images of the dataset.
        index, classes: ``[n]`` the split's dataset indices and their class index within the split.
        rotations: see above.
        generator: draws the examples and turns; :meth:`state_dict` saves it.
        distortion: None, or the keyword arguments of
            :func:`~mlhelpers.data.augment.random_distortion` (as :class:`~mlhelpers.samplers.wrappers.AugmentedSampler`
            takes them): every example is distorted after its turns, with draws from ``generator``.
    """

    def __init__(self, images: Tensor, index: Tensor, classes: Tensor, rotations: bool,
                 generator: torch.Generator, distortion: dict[str, float] | None = None) -> None:
        self.images, self.index, self.classes = images, index, classes
        self.rotations = rotations
        self.generator = generator
        self.distortion = distortion
        if distortion is not None:
            check_distortion(**distortion)

    def sample(self, n: int) -> LabelledBatch:
        """``n`` examples as a :class:`LabelledBatch` on the CPU."""
        pick = torch.randint(len(self.index), (n,), generator=self.generator)
        x = self.images[self.index[pick]]
        y = self.classes[pick]
        if self.rotations:
            turns = torch.randint(ROTATIONS, (n,), generator=self.generator)
            for k in range(1, ROTATIONS):
                mask = turns == k
                if mask.any():
                    x[mask] = torch.rot90(x[mask], k, dims=(-2, -1))
            y = y * ROTATIONS + turns
        if self.distortion is not None:
            x = random_distortion(x, generator=self.generator, **self.distortion)
        return LabelledBatch(x, y)

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])
