"""Small random affine distortions of images, for training and test-time augmentation. Chapter 4.

Omniglot characters keep their identity under a small shift, scale, rotation or shear, so
``random_affine(task.support_x, generator=g)`` (any ``[..., C, H, W]``; bilinear, zero padding)
makes new drawings of the same characters; :class:`~mlhelpers.samplers.wrappers.AugmentedSampler`
applies it to every episode of a sampler.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def affine(x: Tensor, theta: Tensor) -> Tensor:
    """Warp images ``x`` ``[..., C, H, W]`` with affine maps ``theta`` ``[..., 2, 3]``.

    ``theta`` acts on normalised coordinates in [-1, 1] (the convention of
    :func:`torch.nn.functional.affine_grid`): output pixel ``p`` reads input pixel ``theta @ [p, 1]``.
    The leading dimensions of ``theta`` must match those of ``x`` (or be ``[2, 3]`` for one map).
    """
    if x.dim() < 3:
        raise ValueError(f"x must be [..., C, H, W], got shape {tuple(x.shape)}")
    lead = x.shape[:-3]
    if theta.shape[-2:] != (2, 3):
        raise ValueError(f"theta must be [..., 2, 3], got shape {tuple(theta.shape)}")
    theta = theta.to(x.dtype).expand(*lead, 2, 3)
    flat = x.reshape(-1, *x.shape[-3:])
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
        if not (isinstance(value, (int, float)) and 0 <= value and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
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
