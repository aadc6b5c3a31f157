"""Episodic N-way K-shot Q-query classification episodes of a labelled dataset (Chapter 1).

:class:`EpisodicSampler` turns any :class:`~mlhelpers.data.labelled.LabelledDataset` into
episodes; it is a :class:`~mlhelpers.samplers.base.TaskSampler`, like the regression families of
:mod:`mlhelpers.samplers.regression`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.samplers.base import TaskSampler
from mlhelpers.tasks import Task
from mlhelpers.validation import check_bool, check_positive_int, describe

ROTATIONS = 4
"""Quarter turns per class with ``rotations=True``: 0, 90, 180 and 270 degrees."""


def _index_table(labels: Tensor, counts: Tensor) -> Tensor:
    """Dataset indices of each class, padded: ``[num_classes, max count]``; the sampler never draws the padding."""
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    offsets = torch.arange(int(counts.max()))
    positions = (starts[:, None] + offsets[None, :]).clamp(max=len(order) - 1)
    return order[positions]


class EpisodicSampler(TaskSampler):
    """N-way K-shot Q-query classification episodes from a labelled dataset.

    Each episode draws ``n_way`` distinct classes of ``split``, then ``k_shot + q_query`` distinct
    examples of each; the classes get the labels ``0 .. n_way - 1`` in random order. Support and
    query are laid out class by class::

        support_x [tasks, n_way * k_shot, C, H, W]   support_y [tasks, n_way * k_shot]
        query_x   [tasks, n_way * q_query, C, H, W]  query_y   [tasks, n_way * q_query]

    Args:
        dataset: where the examples come from.
        n_way, k_shot, q_query: classes per episode, support and query examples per class.
        split: name of a class-disjoint split of ``dataset`` (None: all classes).
        rotations: treat each class rotated by 0, 90, 180 and 270 degrees as four classes (the
            standard Omniglot protocol of Santoro et al. 2016 and Vinyals et al. 2016).
        within_group: draw all classes of an episode from one group (Omniglot: one alphabet, the
            harder task of Lake et al. 2015); groups too small for ``n_way`` are skipped.
        seed: seeds this sampler's generator (None: fresh entropy).
        device: where the batches are put.

    ``info``: ``classes``, ``rotations`` ``[tasks, n_way]``, dataset indices ``support_index``, ``query_index``.
    """

    def __init__(
        self,
        dataset: LabelledDataset,
        n_way: int,
        k_shot: int,
        q_query: int,
        split: str | None = None,
        *,
        rotations: bool = False,
        within_group: bool = False,
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(seed, device)
        if not isinstance(dataset, LabelledDataset):
            raise TypeError(f"dataset must be a LabelledDataset, got {describe(dataset)}")
        if split is not None and not isinstance(split, str):
            raise TypeError(f"split must be a str or None, got {describe(split)}")
        self.dataset = dataset
        self.n_way = check_positive_int("n_way", n_way)
        self.k_shot = check_positive_int("k_shot", k_shot)
        self.q_query = check_positive_int("q_query", q_query)
        self.split = split
        self.rotations = check_bool("rotations", rotations)
        self.within_group = check_bool("within_group", within_group)
        height, width = dataset.images.shape[-2:]
        if self.rotations and height != width:
            raise ValueError(
                f"rotations=True needs square images (a quarter turn of {height} x {width} is {width} x {height}), "
                f"got images of shape {tuple(dataset.images.shape[1:])}"
            )

        classes = dataset.classes_of(split)
        where = f"split {split!r}" if split is not None else "the dataset"
        n_rot = ROTATIONS if self.rotations else 1
        # The pool of episode classes: (class id, quarter turns) pairs.
        self.pool_class = classes.repeat_interleave(n_rot)
        self.pool_rotation = torch.arange(n_rot).repeat(len(classes))
        if n_way > len(self.pool_class):
            rot = f" ({len(classes)} x {ROTATIONS} rotations)" if self.rotations else ""
            raise ValueError(
                f"asked for n_way={n_way} classes per episode but {where} has only "
                f"{len(self.pool_class)} classes{rot}"
            )
        counts = dataset.counts()[classes]
        per_class = self.k_shot + self.q_query
        if len(classes) and int(counts.min()) < per_class:
            smallest = int(classes[counts.argmin()])
            raise ValueError(
                f"asked for k_shot + q_query = {self.k_shot} + {self.q_query} = {per_class} examples "
                f"per class but class {smallest} ({dataset.class_names[smallest]!r}) of {where} "
                f"holds only {int(counts.min())}"
            )
        if self.within_group:
            if dataset.class_groups is None:
                raise ValueError("within_group=True needs a dataset with class_groups")
            pool_group = dataset.class_groups[self.pool_class]
            groups = [
                torch.nonzero(pool_group == g).flatten() for g in pool_group.unique().tolist()
            ]
            self.group_pools = [p for p in groups if len(p) >= n_way]
            if not self.group_pools:
                largest = max(len(p) for p in groups)
                raise ValueError(
                    f"within_group=True asked for n_way={n_way} classes from one group but the "
                    f"largest group of {where} has only {largest} classes"
                )
        self._counts = dataset.counts()
        self._index_table = _index_table(dataset.labels, self._counts)
        self._max_count = self._index_table.shape[1]

    def _choose_pool_entries(self, num_tasks: int) -> Tensor:
        """``[tasks, n_way]`` indices into the class pool, distinct within each task."""
        if not self.within_group:
            scores = torch.rand(num_tasks, len(self.pool_class), generator=self.generator)
            return scores.argsort(dim=1)[:, : self.n_way]
        rows = []
        for _ in range(num_tasks):
            g = int(torch.randint(len(self.group_pools), (1,), generator=self.generator))
            pool = self.group_pools[g]
            pick = torch.randperm(len(pool), generator=self.generator)[: self.n_way]
            rows.append(pool[pick])
        return torch.stack(rows)

    def _sample(self, num_tasks: int) -> Task:
        entries = self._choose_pool_entries(num_tasks)  # [T, N]
        classes = self.pool_class[entries]
        rotations = self.pool_rotation[entries]
        per_class = self.k_shot + self.q_query
        # Draw per_class distinct examples of every chosen class in one vectorised step.
        flat = classes.flatten()
        scores = torch.rand(len(flat), self._max_count, generator=self.generator)
        scores[torch.arange(self._max_count)[None, :] >= self._counts[flat][:, None]] = float("inf")
        picks = scores.argsort(dim=1)[:, :per_class]
        index = self._index_table[flat[:, None], picks].view(num_tasks, self.n_way, per_class)

        x = self.dataset.images[index]  # [T, N, K+Q, C, H, W]
        for quarter_turns in range(1, ROTATIONS):
            mask = rotations == quarter_turns
            if mask.any():
                x[mask] = torch.rot90(x[mask], quarter_turns, dims=(-2, -1))
        labels = torch.arange(self.n_way)[None, :, None]
        k, q = self.k_shot, self.q_query
        shape = x.shape[3:]
        return Task(
            support_x=x[:, :, :k].reshape(num_tasks, self.n_way * k, *shape),
            support_y=labels.expand(num_tasks, self.n_way, k).reshape(num_tasks, -1),
            query_x=x[:, :, k:].reshape(num_tasks, self.n_way * q, *shape),
            query_y=labels.expand(num_tasks, self.n_way, q).reshape(num_tasks, -1),
            info={
                "classes": classes,
                "rotations": rotations,
                "support_index": index[:, :, :k].reshape(num_tasks, -1),
                "query_index": index[:, :, k:].reshape(num_tasks, -1),
            },
        )
