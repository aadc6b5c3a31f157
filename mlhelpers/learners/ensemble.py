"""An ensemble of Prototypical Networks, with test-time shifted views: the shipped learner. Chapter 4.

:func:`mlhelpers.pretrained.load` returns one, with weights from the package; its
:meth:`~EnsembleProtoNet.predict_labels` classifies raw images with any labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mlhelpers.data.augment import shifted_copies
from mlhelpers.data.omniglot import IMAGE_SHAPE
from mlhelpers.learners.protonet import PrototypeLearner, negative_squared_distances
from mlhelpers.validation import INTEGER_LABEL_DTYPES, check_finite, check_module, check_steps, check_tensor, describe


class EnsembleProtoNet(PrototypeLearner):
    """Prototypical Networks averaged over backbones and (optionally) shifted views of each image.

    Each member embeds an image as the mean embedding of its views (with ``tta_shift > 0``, copies
    shifted by ``tta_shift`` pixels, :func:`~mlhelpers.data.augment.shifted_copies`) and turns
    negative squared distances to its prototypes into probabilities; the ensemble averages them.
    ``adapt`` returns prototypes ``[members, tasks, n_way, D]``, ``predict`` log mean probabilities
    ``[tasks, n_query, n_way]``. ``transductive_steps > 0`` refines every member's prototypes with the
    query embeddings (:func:`~mlhelpers.learners.protonet.refine_prototypes`) in ``forward`` and
    :meth:`predict_labels`. ``backbones`` map ``[batch, C, H, W]`` to ``[batch, D]``.
    """

    def __init__(self, backbones: Sequence[nn.Module], tta_shift: int = 0, transductive_steps: int = 0) -> None:
        super().__init__()
        if len(backbones) == 0:
            raise ValueError("backbones must hold at least one module")
        self.backbones = nn.ModuleList([check_module(f"backbones[{i}]", b) for i, b in enumerate(backbones)])
        self.tta_shift = check_steps("tta_shift", tta_shift)
        self.transductive_steps = check_steps("transductive_steps", transductive_steps)
        self.config: dict = {}  # how a saved learner was trained (set by pretrained.load_file)

    def embed(self, x: Tensor) -> Tensor:
        """``[tasks, n, C, H, W]`` -> ``[members, tasks, n, D]``."""
        views = shifted_copies(x, self.tta_shift) if self.tta_shift else x[None]  # [V, T, n, C, H, W]
        flat = views.flatten(0, 2)
        out = []
        for backbone in self.backbones:
            f = backbone(flat).flatten(1)
            out.append(f.unflatten(0, views.shape[:3]).mean(0))
        return torch.stack(out)

    def logits(self, prototypes: Tensor, queries: Tensor) -> Tensor:
        """``[M, T, N, D]`` prototypes, ``[M, T, Q, D]`` queries -> ``[T, Q, N]`` log mean probabilities."""
        log_probs = negative_squared_distances(queries, prototypes).log_softmax(-1)  # [M, T, Q, N]
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.backbones))

    def probabilities(self, prototypes: Tensor, queries: Tensor) -> Tensor:
        """The ensemble's mean probabilities ``[T, Q, N]``."""
        return self.logits(prototypes, queries).exp()

    @torch.no_grad()
    def predict_labels(self, support_images: Tensor, support_labels: Tensor, query_images: Tensor) -> Tensor:
        """The predicted label of each query image, from a labelled support set.

        Images as :func:`mlhelpers.data.omniglot.preprocess` makes them (float in [0, 1] or uint8 in
        0..255): ``support_images`` ``[n_support, 1, 28, 28]``, ``support_labels`` ``[n_support]``
        integers of any values (every distinct label is a class; any ways and shots), ``query_images``
        ``[n_query, 1, 28, 28]``; with a leading task dimension many tasks are solved at once (each with
        the same number of classes). Returns int64 ``[n_query]`` (or ``[tasks, n_query]``) support labels.
        A TypeError or ValueError names a bad dtype, shape or size.
        """
        batched = isinstance(support_images, Tensor) and support_images.dim() == 5
        sx = _images(support_images, "support_images")
        qx = _images(query_images, "query_images")
        if sx.dim() != qx.dim():
            raise ValueError(
                f"support_images and query_images must both have a task dimension or neither, got shapes "
                f"{tuple(support_images.shape)} and {tuple(query_images.shape)}"
            )
        if not batched:
            sx, qx = sx[None], qx[None]
        if sx.shape[0] != qx.shape[0]:
            raise ValueError(f"support_images has {sx.shape[0]} tasks but query_images has {qx.shape[0]}")
        if not isinstance(support_labels, Tensor):
            try:
                support_labels = torch.as_tensor(support_labels)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"support_labels must be integers (a tensor, array or list of ints), "
                                f"got {describe(support_labels)}") from None
        if support_labels.dtype not in INTEGER_LABEL_DTYPES:
            raise TypeError(f"support_labels must be integers, got dtype {support_labels.dtype}")
        sy = support_labels.long().to(sx.device)
        if not batched:
            sy = sy[None]
        if sy.shape != sx.shape[:2]:
            raise ValueError(
                f"support_labels must have shape {tuple(sx.shape[:2]) if batched else (sx.shape[1],)} "
                f"(one label per support image), got {tuple(support_labels.shape)}"
            )
        classes, index = [], []
        for labels in sy:
            values, inverse = torch.unique(labels, return_inverse=True)
            classes.append(values)
            index.append(inverse)
        n_way = {len(c) for c in classes}
        if len(n_way) != 1:
            raise ValueError(f"every task must have the same number of classes, got {sorted(n_way)}")
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            logits = self._solve(sx.to(device), torch.stack(index).to(device), qx.to(device))
        finally:
            self.train(was_training)
        predicted = torch.gather(torch.stack(classes).to(logits.device), 1, logits.argmax(-1))
        return predicted if batched else predicted[0]


def _images(images: Tensor, name: str) -> Tensor:
    """Check ``[..., n, 1, 28, 28]`` images and return them as float32 in [0, 1]."""
    check_tensor(name, images)
    if images.dim() not in (4, 5) or tuple(images.shape[-3:]) != IMAGE_SHAPE:
        raise ValueError(
            f"{name} must have shape [n, {', '.join(map(str, IMAGE_SHAPE))}] or [tasks, n, "
            f"{', '.join(map(str, IMAGE_SHAPE))}] (the output of mlhelpers.data.omniglot.preprocess, "
            f"stacked), got {tuple(images.shape)}"
        )
    if images.shape[-4] == 0:
        raise ValueError(f"{name} holds no images")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.dtype.is_floating_point:
        raise TypeError(f"{name} must be float in [0, 1] or uint8, got dtype {images.dtype}")
    images = check_finite(name, images.float())
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise ValueError(
            f"{name} must be float in [0, 1] (ink = 1) or uint8 in 0..255, got values in {low:g}..{high:g}; "
            "divide 0..255 floats by 255, map [-1, 1] with (x + 1) / 2"
        )
    return images
