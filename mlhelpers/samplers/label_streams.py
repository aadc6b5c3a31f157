"""Episodes as streams of labelled examples, as in Santoro et al. (2016)'s Omniglot experiment (Chapter 5).

An episode draws ``n_way`` classes, gives them the labels ``0 .. n_way - 1`` in a random order (so a
label means nothing across episodes), and shows ``per_class`` distinct examples of each class in a
random order: a stream of ``T = n_way * per_class`` steps. The examples are feature vectors looked
up in a table ``[turns, N, F]`` (row ``r`` the features of every example rotated by ``r`` quarter
turns), so a class is a (class id, turn) pair as with ``rotations=True`` elsewhere in the book.
:func:`rotated_features` builds such a table with a frozen network.

The stream is the task's support set (``[tasks, T, F]``, labels ``[tasks, T]``); the query set is one
more example of one of the episode's classes, so :meth:`~mlhelpers.learners.base.MetaLearner.meta_loss`
works too. Read the stream with :meth:`~mlhelpers.learners.mann.MANN.stream` or
:meth:`~mlhelpers.learners.incontext.InContextLearner.prefix_predictions`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlhelpers.data.labelled import LabelledDataset
from mlhelpers.samplers.base import TaskSampler
from mlhelpers.tasks import Task
from mlhelpers.validation import check_positive_int, check_tensor


@torch.inference_mode()
def rotated_features(dataset: LabelledDataset, network: nn.Module, turns: int = 4, batch_size: int = 500,
                     standardise_on: str | None = "train") -> Tensor:
    """``[turns, N, F]``: ``network``'s features of every image of ``dataset`` rotated by 0 .. turns - 1
    quarter turns (``network`` maps ``[batch, C, H, W]`` to ``[batch, F]``, run in eval mode).

    ``standardise_on``: subtract the mean and divide by the standard deviation of each feature,
    computed on the images of that split (all turns), so that no other split's statistics are used.
    """
    check_positive_int("turns", turns)
    check_positive_int("batch_size", batch_size)
    was_training = network.training
    network.eval()
    table = []
    for r in range(turns):
        images = torch.rot90(dataset.images, r, dims=(-2, -1))
        chunks = [network(images[i:i + batch_size]).flatten(1) for i in range(0, len(images), batch_size)]
        table.append(torch.cat(chunks))
    network.train(was_training)
    features = torch.stack(table)
    if standardise_on is not None:
        rows = torch.isin(dataset.labels, dataset.classes_of(standardise_on))
        mean, std = features[:, rows].mean(dim=(0, 1)), features[:, rows].std(dim=(0, 1))
        features = (features - mean) / (std + 1e-6)
    return features


class LabelStreams(TaskSampler):
    """Streams of ``n_way * per_class`` labelled feature vectors, labels shuffled per episode (module docstring).

    Args:
        features: ``[turns, N, F]`` feature table (:func:`rotated_features`).
        labels: ``[N]`` class id of each example.
        classes: the class ids to draw from (a split's).
        n_way, per_class: classes per episode and distinct examples of each in the stream.
        turns: rotations to use as extra classes (1: only the unrotated examples).
        seed: of the sampler's generator.
    """

    def __init__(self, features: Tensor, labels: Tensor, classes: Tensor, *, n_way: int = 5, per_class: int = 10,
                 turns: int = 1, seed: int | None = None) -> None:
        super().__init__(seed)
        self.features = check_tensor("features", features, dim=3)
        self.n_way = check_positive_int("n_way", n_way)
        self.per_class = check_positive_int("per_class", per_class)
        turns = check_positive_int("turns", turns)
        if turns > features.shape[0]:
            raise ValueError(f"turns={turns} but features holds {features.shape[0]} rotations")
        self.examples = [torch.nonzero(labels == c).flatten() for c in classes.tolist()]
        if min(len(e) for e in self.examples) < per_class + 1:
            raise ValueError(f"per_class={per_class} needs at least {per_class + 1} examples of every class")
        self.entries = torch.stack([torch.arange(len(classes)).repeat_interleave(turns),
                                    torch.arange(turns).repeat(len(classes))], 1)  # [classes * turns, 2]
        if len(self.entries) < n_way:
            raise ValueError(f"n_way={n_way} classes per episode but only {len(self.entries)} to draw from")

    @property
    def length(self) -> int:
        return self.n_way * self.per_class

    def _episode(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        g = self.generator
        picked = self.entries[torch.randperm(len(self.entries), generator=g)[:self.n_way]]  # label i = picked[i]
        y = torch.arange(self.n_way).repeat_interleave(self.per_class)
        x = torch.empty(len(y), self.features.shape[-1])
        extra = []
        for label, (c, turn) in enumerate(picked.tolist()):
            pool = self.examples[c][torch.randperm(len(self.examples[c]), generator=g)[:self.per_class + 1]]
            x[label * self.per_class:(label + 1) * self.per_class] = self.features[turn, pool[:-1]]
            extra.append(self.features[turn, pool[-1]])
        order = torch.randperm(len(y), generator=g)
        q = int(torch.randint(self.n_way, (1,), generator=g))
        return x[order], y[order], extra[q][None], torch.tensor([q])

    def _sample(self, num_tasks: int) -> Task:
        x, y, qx, qy = (torch.stack(part) for part in zip(*(self._episode() for _ in range(num_tasks))))
        return Task(x, y, qx, qy)
