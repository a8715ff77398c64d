import numpy as np
import pytest

from btxrd_cam.maps import (
    BASELINES,
    baseline_map,
    centre_map,
    edges_map,
    spearman,
    ssim,
    uniform_map,
    upsample_cam,
)
from btxrd_cam.metrics import localization_metrics
from btxrd_cam.settings import BASELINE_NAMES


def _disc(size, centre, radius):
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]]
    return (ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 <= radius**2


def test_settings_and_maps_name_the_same_baselines():
    assert tuple(BASELINE_NAMES) == BASELINES


def test_uniform_map_scores_exactly_chance():
    mask = _disc((60, 80), (30, 40), 12)
    got = localization_metrics(uniform_map(mask.shape), mask, 0.5)
    area = mask.mean()
    assert got["pointing_game"] is False  # the maximum is everywhere, so never only inside
    assert got["energy_pointing_game"] == pytest.approx(area)
    assert got["iou"] == pytest.approx(area) and got["pxap"] == pytest.approx(area)


def test_centre_scores_higher_on_a_centred_lesion_than_on_a_corner_one():
    size = (90, 120)
    centre = centre_map(size)
    assert centre.max() == pytest.approx(1.0) and centre.min() == pytest.approx(0.0, abs=1e-6)
    assert np.unravel_index(np.argmax(centre), size) in {(44, 59), (44, 60), (45, 59), (45, 60)}
    centred = localization_metrics(centre, _disc(size, (45, 60), 10), 0.5)
    corner = localization_metrics(centre, _disc(size, (12, 15), 10), 0.5)
    assert centred["pointing_game"] and not corner["pointing_game"]
    for metric in ("iou", "energy_pointing_game", "pxap"):
        assert centred[metric] > corner[metric]
    # sigma is a quarter of each side: one sigma from the centre along x and along y gives the same value
    assert centre[45, 60 + 30] == pytest.approx(centre[45 + 22, 60], abs=0.02)


def test_edges_map_peaks_on_an_edge_and_ignores_flat_regions():
    image = np.full((64, 64), 40, np.uint8)
    image[:, 32:] = 200
    edges = edges_map(image)
    assert edges.dtype == np.float32 and edges.max() == pytest.approx(1.0, abs=1e-6)
    assert edges[:, 30:34].min() > 0.5 and edges[:, :10].max() < 0.01 and edges[:, 54:].max() < 0.01
    assert np.array_equal(edges, edges_map(np.dstack([image] * 3)))  # grey and RGB give the same map


def test_baseline_map_dispatches_and_refuses_unknown_names():
    pixels = np.zeros((32, 32), np.uint8)
    pixels[8:24, 8:24] = 255
    for name in BASELINES:
        got = baseline_map(name, (40, 50), pixels)
        assert got.shape == (40, 50) and got.min() >= 0 and got.max() <= 1.0 + 1e-6
    expected = upsample_cam(edges_map(pixels), (40, 50))
    np.testing.assert_allclose(baseline_map("edges", (40, 50), pixels), expected, atol=1e-6)
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_map("noise", (4, 4))


def test_similarities_known_answers():
    rng = np.random.default_rng(0)
    a = rng.random((16, 16)).astype(np.float32)
    assert spearman(a, a) == pytest.approx(1.0) and ssim(a, a) == pytest.approx(1.0)
    assert spearman(a, 1 - a) == pytest.approx(-1.0)
    assert spearman(a, a**3) == pytest.approx(1.0)  # ranks only
    b = rng.random((16, 16)).astype(np.float32)
    assert abs(spearman(a, b)) < 0.2 and ssim(a, b) < 0.3
    flat = np.zeros((16, 16), np.float32)
    assert spearman(flat, flat) == 1.0 and spearman(flat, a) == 0.0


@pytest.mark.parametrize("shape", [(7, 7), (5, 9), (14, 14), (1, 1)])
def test_upsample_cam_scales_exactly_as_pytorch_grad_cams_scale_cam_image(shape):
    """upsample_cam spells scale_cam_image's normalisation (so that a cached re-run need not import the library):
    the same float32 values, bit for bit, on raw maps of every sign, a constant map included."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    rng = np.random.default_rng(sum(shape))
    for raw in (rng.normal(size=shape) * 3, rng.random(shape) * 1e-3, np.full(shape, 2.5), -rng.random(shape)):
        size = (shape[0] * 9, shape[1] * 9)
        # BaseCAM: scaled to the target size; then, aggregating layers, clamped at 0 and scaled again
        scaled = scale_cam_image(raw[None].astype(np.float32), (size[1], size[0]))
        library = scale_cam_image(np.maximum(scaled, 0))[0]
        assert np.array_equal(upsample_cam(raw.astype(np.float32), size), library)
