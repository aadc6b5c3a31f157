"""Random affine and stroke-level distortions and test-time shifts (Chapter 4)."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import make_dataset
from mlhelpers.data.augment import (
    affine,
    affine_matrix,
    random_affine,
    random_distortion,
    random_elastic,
    random_stroke_width,
    shifted_copies,
)
from mlhelpers.samplers.episodic import EpisodicSampler
from mlhelpers.samplers.examples import ExampleSampler, split_examples
from mlhelpers.samplers.wrappers import AugmentedSampler


def test_identity_map_leaves_images_unchanged():
    x = torch.rand(2, 3, 1, 8, 8)
    theta = affine_matrix(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    torch.testing.assert_close(affine(x, theta), x, atol=1e-5, rtol=0)


def test_quarter_turn_matches_rot90():
    x = torch.rand(4, 1, 8, 8)
    theta = affine_matrix(torch.full((4,), math.pi / 2), torch.ones(4), torch.zeros(4), torch.zeros(4), torch.zeros(4))
    turned = affine(x, theta)
    candidates = [torch.rot90(x, k, dims=(-2, -1)) for k in (1, 3)]
    assert min((turned - c).abs().max().item() for c in candidates) < 1e-5


def test_random_affine_keeps_shape_differs_per_image_and_is_seeded():
    x = torch.zeros(3, 5, 1, 16, 16)
    x[..., 4:12, 7:9] = 1.0  # the same bar in every image
    a = random_affine(x, generator=torch.Generator().manual_seed(0))
    b = random_affine(x, generator=torch.Generator().manual_seed(0))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b)
    flat = a.flatten(0, 1)
    assert not torch.allclose(flat[0], flat[1])  # each image gets its own distortion
    assert (a - x).abs().max() > 0.1
    # small distortions: most ink stays ink
    assert a.sum() > 0.7 * x.sum() and a.min() >= 0 and a.max() <= 1 + 1e-6


def test_random_affine_with_zero_ranges_is_the_identity():
    x = torch.rand(2, 1, 8, 8)
    out = random_affine(x, max_rotate=0, max_scale=0, max_shift=0, max_shear=0)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", [{"max_rotate": -1}, {"max_scale": 1.0}, {"max_shift": float("nan")}])
def test_random_affine_rejects_bad_ranges(kwargs):
    with pytest.raises(ValueError):
        random_affine(torch.zeros(1, 1, 4, 4), **kwargs)


def test_shifted_copies_move_ink_by_one_pixel_without_wrapping():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 0, 2] = 1.0  # top row
    views = shifted_copies(x, 1)
    assert views.shape == (5, 1, 1, 5, 5)
    torch.testing.assert_close(views[0], x)
    assert views[1, 0, 0, 1, 2] == 1.0  # moved down
    assert views[2].sum() == 0  # moved up, off the image: gone, not wrapped to the bottom


def test_augmented_sampler_changes_images_not_labels_and_resumes():
    base = EpisodicSampler(make_dataset(size=8), 3, 2, 2, seed=0)
    plain = EpisodicSampler(make_dataset(size=8), 3, 2, 2, seed=0).sample(2)
    sampler = AugmentedSampler(base, seed=1)
    state = sampler.state_dict()
    task = sampler.sample(2)
    torch.testing.assert_close(task.support_y, plain.support_y)
    assert task.support_x.shape == plain.support_x.shape
    assert not torch.allclose(task.support_x, plain.support_x)
    sampler.load_state_dict(state)
    torch.testing.assert_close(sampler.sample(2).query_x, task.query_x)


def test_wrapped_sampler_state_must_hold_both_random_states():
    sampler = AugmentedSampler(EpisodicSampler(make_dataset(size=8), 3, 2, 2, seed=0), seed=1)
    inner_only = sampler.sampler.state_dict()
    with pytest.raises(ValueError, match=r"state must be a wrapped sampler's state_dict .*'inner'"):
        sampler.load_state_dict(inner_only)
    with pytest.raises(TypeError, match="sampler must be a TaskSampler, got list"):
        AugmentedSampler([1, 2])


def _stroke() -> torch.Tensor:
    """``[2, 1, 9, 9]``: a vertical and a horizontal stroke, one pixel wide."""
    x = torch.zeros(2, 1, 9, 9)
    x[0, 0, 2:7, 4] = 1.0
    x[1, 0, 4, 2:7] = 1.0
    return x


def test_stroke_width_moves_between_erosion_and_dilation():
    x = _stroke()
    assert random_stroke_width(x, 0.0) is x
    g = torch.Generator().manual_seed(0)
    out = random_stroke_width(x.repeat(32, 1, 1, 1).reshape(32, 2, 1, 9, 9), 1.0, generator=g)
    assert out.shape == (32, 2, 1, 9, 9)
    dilated = F.max_pool2d(x, 3, stride=1, padding=1)
    flat = out.reshape(64, 1, 9, 9)
    lower, upper = torch.zeros_like(flat), dilated.repeat(32, 1, 1, 1)
    assert torch.all(flat >= lower - 1e-6) and torch.all(flat <= upper + 1e-6)
    ink = flat.sum(dim=(1, 2, 3)) / x[0].sum()
    assert ink.max() > 1.5 and ink.min() < 0.5, "some images thickened, some thinned"
    with pytest.raises(ValueError, match="max_change must be at most 1"):
        random_stroke_width(x, 1.5)
    with pytest.raises(ValueError, match="max_change must be a finite number >= 0, got -0.1"):
        random_stroke_width(x, -0.1)


def test_elastic_bends_strokes_and_keeps_their_ink():
    x = torch.zeros(16, 1, 28, 28)
    x[:, 0, 6:22, 13:15] = 1.0  # a bar in the middle, away from the border
    assert random_elastic(x, 0.0) is x
    out = random_elastic(x, 34.0, 4.0, generator=torch.Generator().manual_seed(0))
    again = random_elastic(x, 34.0, 4.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)
    assert out.shape == x.shape and not torch.allclose(out, x, atol=0.1)
    assert not torch.allclose(out[0], out[1], atol=0.1), "each image its own field"
    ink = out.sum(dim=(1, 2, 3)) / x[0].sum()  # a field compresses some strokes and stretches others,
    assert abs(ink.mean() - 1) < 0.2 and ink.min() > 0.3, ink  # but neither erases nor smears the ink
    small = random_elastic(x, 1.0, 4.0, generator=torch.Generator().manual_seed(0))
    assert (small - x).abs().mean() < (out - x).abs().mean() / 5, "displacement grows with alpha"
    with pytest.raises(ValueError, match="sigma must be above 0"):
        random_elastic(x, 1.0, 0.0)


def test_distortion_without_stroke_parts_is_random_affine():
    x = _stroke()
    distorted = random_distortion(x, max_rotate=20.0, generator=torch.Generator().manual_seed(3))
    affine_only = random_affine(x, max_rotate=20.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(distorted, affine_only)
    stroked = random_distortion(x, max_rotate=20.0, max_stroke_change=0.5, elastic_alpha=5.0,
                                generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(stroked, affine_only)
    sampler = AugmentedSampler(EpisodicSampler(make_dataset(size=8), 3, 2, 2, seed=0), seed=1, elastic_alpha=3.0)
    assert sampler.sample(1).support_x.shape == (1, 6, 1, 8, 8)
    with pytest.raises(ValueError, match="elastic_alpha must be a finite number >= 0"):
        AugmentedSampler(EpisodicSampler(make_dataset(size=8), 3, 2, 2, seed=0), elastic_alpha=-1.0)


def test_example_sampler_distorts_each_example_after_its_turns_and_keeps_the_labels():
    dataset = make_dataset(size=8)
    index, classes = split_examples(dataset, "train")
    plain = ExampleSampler(dataset.images, index, classes, True, torch.Generator().manual_seed(3))
    warped = ExampleSampler(dataset.images, index, classes, True, torch.Generator().manual_seed(3),
                            distortion={"max_rotate": 20.0})
    a, b = plain.sample(16), warped.sample(16)
    torch.testing.assert_close(a.y, b.y)  # the same examples and turns: the distortion draws last
    where_warped_drew = torch.Generator()
    where_warped_drew.set_state(plain.generator.get_state())
    torch.testing.assert_close(b.x, random_affine(a.x, max_rotate=20.0, generator=where_warped_drew))
    assert not torch.allclose(a.x, b.x)
    with pytest.raises(ValueError, match="max_rotate"):
        ExampleSampler(dataset.images, index, classes, True, torch.Generator(), distortion={"max_rotate": -1.0})

