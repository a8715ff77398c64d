"""The interventions of `evidence` and sanity's ROAD: fills, the body, control placement, top pixels."""

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from scipy.sparse.linalg import spsolve

from btxrd_cam.faithfulness import (
    FastNoisyLinearImputer,
    body_mask,
    dilate,
    fill_region,
    linear_system,
    place_controls,
    solve_symmetric,
    top_pixels,
)


def _disc(size, cy, cx, r):
    ys, xs = np.mgrid[0:size, 0:size]
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r


def test_the_ordered_solve_equals_the_librarys_and_the_imputer_its_imputer():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((3, 40, 40))
    mask = np.ones((40, 40))
    mask[5:25, 8:30] = 0
    matrix, b = linear_system(mask, img)
    np.testing.assert_allclose(solve_symmetric(matrix, b), spsolve(matrix, b), atol=1e-12)
    tensor, keep = torch.from_numpy(img.astype(np.float32)), torch.from_numpy(mask.astype(np.float32))
    torch.manual_seed(3)
    expected = NoisyLinearImputer()(tensor, keep)
    mine = FastNoisyLinearImputer(torch.Generator().manual_seed(3))(tensor, keep)
    np.testing.assert_allclose(mine.numpy(), expected.numpy(), atol=1e-6)


@pytest.mark.parametrize("fill", ["impute", "blur", "mean"])
def test_a_fill_changes_the_region_only(fill):
    rng = np.random.default_rng(1)
    tensor = rng.standard_normal((3, 48, 48)).astype(np.float32)
    region = _disc(48, 20, 24, 6)
    out = fill_region(tensor, region, fill, torch.Generator().manual_seed(0))
    assert out.shape == tensor.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, ~region], tensor[:, ~region])
    assert not np.allclose(out[:, region], tensor[:, region])
    if fill == "mean":
        means = np.broadcast_to(tensor.mean(axis=(1, 2))[:, None], out[:, region].shape)
        np.testing.assert_allclose(out[:, region], means, rtol=1e-5)
    np.testing.assert_array_equal(fill_region(tensor, np.zeros((48, 48), bool), fill), tensor)


def test_the_imputation_of_a_flat_image_is_flat():
    """A linear imputation of a constant image is that constant (plus ROAD's small noise)."""
    tensor = np.full((3, 32, 32), 0.7, np.float32)
    out = fill_region(tensor, _disc(32, 16, 16, 8), "impute", torch.Generator().manual_seed(0))
    assert np.abs(out - 0.7).max() < 0.06


def test_the_body_is_the_bright_part_of_a_radiograph():
    pixels = np.full((64, 64), 20, np.uint8)
    body = _disc(64, 32, 32, 20)
    pixels[body] = 180
    assert np.array_equal(body_mask(pixels), body)
    assert np.array_equal(body_mask(np.dstack([pixels] * 3)), body)


def test_dilation_grows_a_point_into_a_disc():
    point = np.zeros((11, 11), bool)
    point[5, 5] = True
    assert dilate(point, 0).sum() == 1
    assert np.array_equal(dilate(point, 2), _disc(11, 5, 5, 2))


@pytest.mark.parametrize("seed", range(5))
def test_controls_never_touch_the_lesion_stay_in_the_image_and_on_the_body(seed):
    size = 96
    body = np.zeros((size, size), bool)
    body[10:86, 25:70] = True
    lesion = dilate(_disc(size, 30 + 5 * seed, 45, 6), 2)
    controls = place_controls(lesion, body, 8, seed)
    assert len(controls) == 8
    touching = dilate(lesion, 1)
    for control in controls:
        assert control.sum() == lesion.sum()  # the same shape, wholly inside the image
        assert not (control & touching).any()  # neither overlaps nor touches the lesion
        assert (control & body).sum() >= 0.8 * control.sum()
    assert [c.tobytes() for c in controls] == [c.tobytes() for c in place_controls(lesion, body, 8, seed)]
    assert [c.tobytes() for c in controls] != [c.tobytes() for c in place_controls(lesion, body, 8, seed + 10)]


def test_fewer_or_no_controls_when_they_do_not_fit():
    size = 64
    body = np.ones((size, size), bool)
    huge = np.zeros((size, size), bool)
    huge[:, 5:40] = True  # more than half the image: no equal area fits beside it
    assert place_controls(huge, body, 4, 0) == []
    lesion = np.zeros((size, size), bool)
    lesion[20:30, 20:30] = True
    tight = np.zeros((size, size), bool)
    tight[20:30, 20:42] = True  # the body leaves room for a few places beside the lesion only
    placed = place_controls(lesion, tight, 50, 0)
    assert 1 <= len(placed) < 50
    assert all(c[:, :31].sum() == 0 and (c & tight).sum() >= 80 for c in placed)


def test_top_pixels_are_exactly_as_many_as_asked_even_on_a_flat_map():
    saliency = np.zeros((10, 10), np.float32)
    saliency[2, 3], saliency[7, 7] = 1.0, 0.5
    chosen = top_pixels(saliency, 2)
    assert chosen.sum() == 2 and chosen[2, 3] and chosen[7, 7]
    flat = top_pixels(np.zeros((10, 10)), 7)
    assert flat.sum() == 7 and flat.ravel()[:7].all()  # ties: the first in row-major order
