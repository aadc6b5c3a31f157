"""Small random distortions of images, for training and test-time augmentation. Chapter 4.

Omniglot characters keep their identity under a small shift, scale, rotation or shear, so
``random_affine(task.support_x, generator=g)`` (any ``[..., C, H, W]``; bilinear, zero padding)
makes new drawings of the same characters. Two stroke-level distortions go further:
:func:`random_stroke_width` thickens or thins the strokes, and :func:`random_elastic` bends them
(Simard et al. 2003). :func:`random_distortion` applies all three, and
:class:`~mlhelpers.samplers.wrappers.AugmentedSampler` applies it to every episode of a sampler.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _flat_images(x: Tensor) -> Tensor:
    if x.dim() < 3:
        raise ValueError(f"x must be [..., C, H, W], got shape {tuple(x.shape)}")
    return x.reshape(-1, *x.shape[-3:])


def affine(x: Tensor, theta: Tensor) -> Tensor:
    """Warp images ``x`` ``[..., C, H, W]`` with affine maps ``theta`` ``[..., 2, 3]``.

    ``theta`` acts on normalised coordinates in [-1, 1] (the convention of
    :func:`torch.nn.functional.affine_grid`): output pixel ``p`` reads input pixel ``theta @ [p, 1]``.
    The leading dimensions of ``theta`` must match those of ``x`` (or be ``[2, 3]`` for one map).
    """
    flat = _flat_images(x)
    lead = x.shape[:-3]
    if theta.shape[-2:] != (2, 3):
        raise ValueError(f"theta must be [..., 2, 3], got shape {tuple(theta.shape)}")
    theta = theta.to(x.dtype).expand(*lead, 2, 3)
    grid = F.affine_grid(theta.reshape(-1, 2, 3), list(flat.shape), align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(x.shape)


def affine_matrix(rotate: Tensor, scale: Tensor, shift_x: Tensor, shift_y: Tensor, shear: Tensor) -> Tensor:
    """``[..., 2, 3]`` maps from angles (radians), scale factors, shifts (fractions of the half-width)."""
    cos, sin = torch.cos(rotate), torch.sin(rotate)
    # Inverse maps (output -> input): dividing by the scale enlarges the drawing when scale > 1.
    a = torch.stack([cos / scale, (-sin + shear) / scale, -shift_x], dim=-1)
    b = torch.stack([sin / scale, cos / scale, -shift_y], dim=-1)
    return torch.stack([a, b], dim=-2)


KOCH_DISTORTION: dict[str, float] = {
    "max_rotate": 10.0, "max_scale": 0.2, "max_shift": 2 / 105, "max_shear": 0.3, "p_each": 0.5,
}
"""Keyword arguments of :func:`random_affine` close to the distortions of Koch et al. (2015), section
4.1: rotation up to 10 degrees, scale 0.8-1.2, shear up to 0.3, shift up to 2 of the 105 pixels of a
raw image, each part applied with probability 0.5. (They draw scale and shear per axis; here one
scale and one shear per image.) Chapter 4 trains its Siamese networks with it."""


def _check_amount(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def random_affine(
    x: Tensor,
    *,
    max_rotate: float = 10.0,
    max_scale: float = 0.1,
    max_shift: float = 0.1,
    max_shear: float = 0.1,
    p_each: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Each image of ``x`` ``[..., C, H, W]`` warped by its own random affine map; same shape.

    Args:
        max_rotate: rotations uniform in +-``max_rotate`` degrees.
        max_scale: scale factors uniform in ``[1 - max_scale, 1 + max_scale]``.
        max_shift: shifts uniform in +-``max_shift`` of the image width (each axis).
        max_shear: shear uniform in +-``max_shear``.
        p_each: each of the four parts (rotation, scale, shift, shear) is applied with this
            probability, independently per image and part (Koch et al. 2015 use 0.5,
            :data:`KOCH_DISTORTION`); 1 applies all four.
        generator: the random source (None: the global one).
    """
    for name, value in (("max_rotate", max_rotate), ("max_scale", max_scale), ("max_shift", max_shift),
                        ("max_shear", max_shear)):
        _check_amount(name, value)
    if max_scale >= 1:
        raise ValueError(f"max_scale must be below 1, got {max_scale!r}")
    if isinstance(p_each, bool) or not isinstance(p_each, (int, float)) or not 0 <= p_each <= 1:
        raise ValueError(f"p_each must be a probability in [0, 1], got {p_each!r}")
    lead = x.shape[:-3]

    def uniform(half_width: float) -> Tensor:
        u = torch.rand(lead, generator=generator) * 2 - 1
        if p_each < 1:  # only then: the default draws the same numbers as before p_each existed
            u = u * (torch.rand(lead, generator=generator) < p_each)
        return (u * half_width).to(x.device)

    theta = affine_matrix(
        uniform(math.radians(max_rotate)),
        1 + uniform(max_scale),
        uniform(2 * max_shift),  # normalised coordinates span 2 per image width
        uniform(2 * max_shift),
        uniform(max_shear),
    )
    return affine(x, theta)


def random_stroke_width(x: Tensor, max_change: float, generator: torch.Generator | None = None) -> Tensor:
    """Each image of ``x`` ``[..., C, H, W]`` (ink high, background 0) with its strokes thickened or
    thinned by its own random amount; same shape.

    An image moves a fraction ``t``, uniform in +-``max_change`` (at most 1), of the way towards its
    3 x 3 grey dilation (``t > 0``: every stroke one pixel wider on each side at ``t = 1``) or its
    3 x 3 grey erosion (``t < 0``). ``max_change = 0`` returns ``x`` unchanged.
    """
    _check_amount("max_change", max_change)
    if max_change > 1:
        raise ValueError(f"max_change must be at most 1 (a full pixel), got {max_change!r}")
    flat = _flat_images(x)
    if max_change == 0:
        return x
    t = ((torch.rand(len(flat), generator=generator) * 2 - 1) * max_change).to(x.device, x.dtype)[:, None, None, None]
    dilated = F.max_pool2d(flat, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-flat, 3, stride=1, padding=1)
    out = torch.where(t > 0, flat + t * (dilated - flat), flat - t * (eroded - flat))
    return out.reshape(x.shape)


def random_elastic(x: Tensor, alpha: float, sigma: float = 4.0, generator: torch.Generator | None = None) -> Tensor:
    """Each image of ``x`` ``[..., C, H, W]`` bent by its own random elastic distortion (the
    construction of Simard et al. 2003); same shape.

    Every pixel gets a displacement uniform in [-1, 1] on each axis; the field is smoothed by a
    Gaussian of standard deviation ``sigma`` pixels (larger: smoother, closer to a shift), scaled by
    ``alpha`` pixels, and the image is resampled along it (bilinear, zero padding). ``alpha = 0``
    returns ``x`` unchanged; Chapter 4 shows what ``alpha=16`` does to a 28 x 28 drawing.
    """
    _check_amount("alpha", alpha)
    _check_amount("sigma", sigma)
    if sigma == 0:
        raise ValueError(f"sigma must be above 0 (an unsmoothed field tears the strokes apart), got {sigma!r}")
    flat = _flat_images(x)
    if alpha == 0:
        return x
    n, _, height, width = flat.shape
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    field = torch.rand(n * 2, 1, height, width, generator=generator) * 2 - 1
    field = F.conv2d(field, kernel.view(1, 1, 1, -1), padding=(0, radius))
    field = F.conv2d(field, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    field = (alpha * field).view(n, 2, height, width).permute(0, 2, 3, 1)  # pixels, (x, y) last
    field = field * torch.tensor([2 / width, 2 / height])  # normalised coordinates span 2 per side
    identity = torch.eye(2, 3).expand(n, 2, 3)
    grid = F.affine_grid(identity, [n, 1, height, width], align_corners=False) + field
    out = F.grid_sample(flat, grid.to(x.device, x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(x.shape)


def random_distortion(
    x: Tensor,
    *,
    max_stroke_change: float = 0.0,
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 4.0,
    generator: torch.Generator | None = None,
    **affine_kwargs: float,
) -> Tensor:
    """:func:`random_affine` (with ``affine_kwargs``), then :func:`random_stroke_width` at
    ``max_stroke_change`` and :func:`random_elastic` at ``elastic_alpha``, ``elastic_sigma``.

    The affine map draws first, so with the stroke-level distortions off the result (and the random
    numbers drawn) are exactly those of ``random_affine(x, generator=generator, **affine_kwargs)``.
    """
    _check_amount("max_stroke_change", max_stroke_change)
    _check_amount("elastic_alpha", elastic_alpha)
    out = random_affine(x, generator=generator, **affine_kwargs)
    out = random_stroke_width(out, max_stroke_change, generator=generator)
    return random_elastic(out, elastic_alpha, elastic_sigma, generator=generator)


def check_distortion(**distortion_kwargs: float) -> None:
    """Raise now, naming the argument, if :func:`random_distortion` would refuse ``distortion_kwargs``."""
    random_distortion(torch.zeros(1, 1, 4, 4), **distortion_kwargs)


def shifted_copies(x: Tensor, pixels: int = 1) -> Tensor:
    """``[5, ..., C, H, W]``: ``x`` itself and ``x`` shifted by ``pixels`` up, down, left and right.

    The fixed views of a simple test-time augmentation: embed each and average.
    """
    if x.dim() < 3:
        raise ValueError(f"x must be [..., C, H, W], got shape {tuple(x.shape)}")
    views = [x]
    for dy, dx in ((pixels, 0), (-pixels, 0), (0, pixels), (0, -pixels)):
        view = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
        # zero the wrapped-around rows/columns: a shift, not a rotation of the torus
        if dy > 0:
            view[..., :dy, :] = 0
        elif dy < 0:
            view[..., dy:, :] = 0
        if dx > 0:
            view[..., :, :dx] = 0
        elif dx < 0:
            view[..., :, dx:] = 0
        views.append(view)
    return torch.stack(views)
