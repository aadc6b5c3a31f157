"""Same/different pairs for verification training (Koch et al. 2015), as small episodes. Chapter 4.

A :class:`PairSampler` task is an ``n_way``-way 1-shot episode (default 2-way, one query per
class): every (query, support) pair of it is a verification pair, "same" when the labels agree. A
2-way task holds two same pairs and two different ones, so a batch is balanced, as in Koch et
al.'s training set. ``negatives`` says where the different characters come from: one alphabet
(``"within"``, the pairs that Lake et al.'s within-alphabet test asks about), distinct alphabets
(``"across"``) or anywhere (``"any"``). :class:`~mlhelpers.learners.siamese.SiameseNet` reads the
pairs off the task.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.validation import check_positive_int

NEGATIVES = ("within", "across", "any")
"""Where :class:`PairSampler` draws the different characters of a task from."""


class PairSampler(EpisodicSampler):
    """``n_way``-way 1-shot ``q_query``-query episodes whose classes share one group, or not.

    Args:
        dataset, split, rotations, seed, device: as in
            :class:`~mlhelpers.samplers.episodic.EpisodicSampler`.
        negatives: ``"within"``: all classes of a task from one group (Omniglot: one alphabet);
            ``"across"``: each class from another group (``n_way`` at most the number of groups);
            ``"any"``: classes drawn uniformly from the split.
        n_way: classes per task (2: one same and one different pair per query).
        q_query: queries per class (each makes ``n_way`` pairs).

    ``support_x`` ``[tasks, n_way, C, H, W]``, ``query_x`` ``[tasks, n_way * q_query, C, H, W]``,
    labels and ``info`` as for the episodic sampler; ``info["groups"]`` ``[tasks, n_way]`` holds each
    class's group.
    """

    def __init__(
        self,
        dataset: LabelledDataset,
        split: str | None = None,
        *,
        negatives: Literal["within", "across", "any"] = "within",
        n_way: int = 2,
        q_query: int = 1,
        rotations: bool = False,
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {', '.join(map(repr, NEGATIVES))}, got {negatives!r}")
        if check_positive_int("n_way", n_way) < 2:
            raise ValueError(f"n_way must be at least 2: a verification task needs a different class for its "
                             f"'different' pairs (with n_way=1 every pair is 'same'), got n_way={n_way}")
        if negatives != "any" and isinstance(dataset, LabelledDataset) and dataset.class_groups is None:
            raise ValueError(f"negatives={negatives!r} needs a dataset with class_groups (Omniglot: alphabets)")
        super().__init__(dataset, n_way, 1, q_query, split, rotations=rotations,
                         within_group=negatives == "within", seed=seed, device=device)
        self.negatives = negatives
        if negatives == "across":
            pool_group = dataset.class_groups[self.pool_class]
            self.group_pools = [torch.nonzero(pool_group == g).flatten() for g in pool_group.unique().tolist()]
            if n_way > len(self.group_pools):
                raise ValueError(
                    f"negatives='across' needs a group per class, but n_way={n_way} and the split has "
                    f"only {len(self.group_pools)} groups"
                )

    def _choose_pool_entries(self, num_tasks: int) -> Tensor:
        if self.negatives != "across":
            return super()._choose_pool_entries(num_tasks)
        rows = []
        for _ in range(num_tasks):
            groups = torch.randperm(len(self.group_pools), generator=self.generator)[: self.n_way]
            row = []
            for g in groups.tolist():
                pool = self.group_pools[g]
                row.append(pool[torch.randint(len(pool), (1,), generator=self.generator)])
            rows.append(torch.cat(row))
        return torch.stack(rows)

    def _sample(self, num_tasks: int):
        task = super()._sample(num_tasks)
        task.info["groups"] = self.dataset.class_groups[task.info["classes"]] if self.dataset.class_groups is not None \
            else torch.zeros_like(task.info["classes"])
        return task
