import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from btxrd_cam.errors import InputError
from btxrd_cam.labelme import rasterize_annotation, read_labelme
from tests.conftest import write_labelme


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def _single(shape, height, width):
    return rasterize_annotation(
        {"shapes": [shape], "imageHeight": height, "imageWidth": width}, height, width, region="all"
    )


def test_each_shape_of_labelmes_own_file_matches_labelmes_pixel_area(labelme_samples):
    expected = json.loads((labelme_samples / "expected_areas.json").read_text())
    for name, info in expected.items():
        data = read_labelme(labelme_samples / name)
        union = np.zeros((info["height"], info["width"]), bool)
        for shape, want in zip(data["shapes"], info["shapes"], strict=True):
            assert shape["shape_type"] == want["shape_type"]
            if want["area_px"] is None:
                with pytest.raises(InputError, match="no region shape"):
                    _single(shape, info["height"], info["width"])
                continue
            mask = _single(shape, info["height"], info["width"]).mask
            union |= mask
            # another rasteriser differs from Pillow's only along the boundary
            assert abs(int(mask.sum()) - want["area_px"]) <= 0.03 * want["area_px"], (name, shape["label"])
        whole = rasterize_annotation(labelme_samples / name, info["height"], info["width"], region="all")
        assert np.array_equal(whole.mask, union)
        assert abs(whole.area - info["union_area_px"]) <= 0.02 * info["union_area_px"]


def test_ignored_shapes_are_counted_in_a_warning(labelme_samples):
    annotation = rasterize_annotation(labelme_samples / "primitives.json", 450, 560)
    assert any("3 shape(s) without area" in w for w in annotation.warnings)


def test_rectangle_corners_in_any_order_give_the_inclusive_box():
    for points in ([[2, 3], [6, 8]], [[6, 8], [2, 3]], [[6, 3], [2, 8]]):
        mask = _single({"shape_type": "rectangle", "points": points}, 20, 20).mask
        assert mask.sum() == 5 * 6 and mask[3:9, 2:7].all()


def test_circle_from_centre_and_a_point_on_it():
    mask = _single({"shape_type": "circle", "points": [[50, 50], [50, 70]]}, 100, 100).mask
    assert abs(mask.sum() - np.pi * 20**2) < 0.03 * np.pi * 20**2
    assert mask[50, 50] and not mask[50, 75] and mask[50, 69]


def test_oriented_rectangle_and_polygon_fill_their_outline():
    diamond = [[50, 10], [90, 50], [50, 90], [10, 50]]
    for kind in ("polygon", "oriented_rectangle"):
        mask = _single({"shape_type": kind, "points": diamond}, 100, 100).mask
        assert abs(mask.sum() - 3200) < 0.03 * 3200 and mask[50, 50] and not mask[15, 15]


def test_mask_shape_is_pasted_inside_its_box():
    region = np.zeros((10, 20), np.uint8)
    region[2:8, 5:15] = 255
    buffer = io.BytesIO()
    Image.fromarray(region).save(buffer, format="PNG")
    shape = {
        "shape_type": "mask",
        "points": [[30, 40], [49, 49]],
        "mask": base64.b64encode(buffer.getvalue()).decode(),
    }
    mask = _single(shape, 100, 100).mask
    assert mask.sum() == 60 and mask[42:48, 35:45].all()


def test_points_outside_the_image_are_clipped():
    mask = _single({"shape_type": "rectangle", "points": [[-50, -50], [9, 4]]}, 20, 20).mask
    assert mask.sum() == 10 * 5


def test_size_mismatch_scales_shapes_and_warns(tmp_path):
    path = write_labelme(tmp_path / "a.json", [{"shape_type": "rectangle", "points": [[10, 10], [19, 19]]}], 50, 50)
    annotation = rasterize_annotation(path, 100, 200)  # real image is 2x taller, 4x wider
    assert annotation.warnings and "scaled" in annotation.warnings[0]
    ys, xs = np.nonzero(annotation.mask)
    assert (ys.min(), xs.min(), ys.max(), xs.max()) == (20, 40, 38, 76)  # corners scaled as coordinates


def test_image_path_is_never_used(tmp_path):
    path = write_labelme(tmp_path / "a.json", [{"shape_type": "rectangle", "points": [[1, 1], [2, 2]]}], 5, 5)
    assert rasterize_annotation(path, 5, 5).area == 4  # "elsewhere.jpg" does not exist and nobody asked


@pytest.mark.parametrize(
    "content, reason",
    [
        ("{not json", "malformed JSON"),
        ('{"version": "5"}', "no 'shapes' list"),
        ('{"shapes": []}', "no region shape"),
        ('{"shapes": [{"shape_type": "polygon"}]}', "no 'points' list"),
        ('{"shapes": [{"shape_type": "polygon", "points": [[1, 2], [3, 4]]}]}', "has 2 point.s.; it needs at least 3"),
        ('{"shapes": [{"shape_type": "blob", "points": [[1, 2]]}]}', "unknown shape_type"),
        ('{"shapes": [{"shape_type": "line", "points": [[1, 2], [3, 4]]}]}', "no region shape"),
    ],
)
def test_malformed_files_are_input_errors_naming_file_and_reason(tmp_path, content, reason):
    path = tmp_path / "IMG000009.json"
    path.write_text(content)
    with pytest.raises(InputError, match=f"IMG000009.json: .*{reason}"):
        rasterize_annotation(path, 10, 10)


def test_a_mask_box_far_larger_than_the_image_costs_only_the_image(tmp_path):
    import tracemalloc

    region = np.zeros((100, 100), np.uint8)
    region[50:52, 50:52] = 255  # the box is 4,000 px: each PNG pixel covers 40 x 40 image pixels
    shape = {"shape_type": "mask", "points": [[-2000, -2000], [1999, 1999]], "mask": _b64_png(region)}
    tracemalloc.start()
    mask = _single(shape, 600, 600).mask
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the box spans 4,000 px: scaled to it the PNG would take 16 MB; only the image's 600 x 600 is sampled
    assert peak < 4 * 2**20
    assert mask[:80, :80].all() and mask.sum() == 80 * 80  # PNG pixels 50-51 cover image pixels 0-79


def _b64_png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_byte_order_marks_and_utf16_read(tmp_path, encoding):
    path = tmp_path / "a.json"
    text = json.dumps({"shapes": [{"shape_type": "rectangle", "points": [[1, 1], [2, 2]], "label": "é"}]})
    path.write_bytes(text.encode(encoding))
    assert rasterize_annotation(path, 5, 5).area == 4


def test_other_encodings_say_so(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes('{"shapes": [], "label": "\xe9"}'.encode("latin-1"))
    with pytest.raises(InputError, match="a.json: not UTF-8"):
        rasterize_annotation(path, 5, 5)


@pytest.mark.parametrize("declared", [float("inf"), -5, 0, 12.5, "100", 10**12, None])
def test_unusable_declared_sizes_are_ignored_with_a_warning(declared):
    data = {"shapes": [{"shape_type": "rectangle", "points": [[1, 1], [2, 2]]}], "imageHeight": declared}
    data["imageWidth"] = 5
    annotation = rasterize_annotation(data, 5, 5)
    assert annotation.area == 4  # drawn at the image's own size, unscaled
    assert "not positive whole numbers" in annotation.warnings[0]


@pytest.mark.parametrize(
    "shape, reason",
    [
        ({"shape_type": "circle", "points": [[1, 1], [2, 2], [3, 3]]}, "'circle'.* has 3 point.s.; it needs 2"),
        ({"shape_type": "oriented_rectangle", "points": [[1, 1], [2, 2]]}, "needs 4"),
        ({"shape_type": "rectangle", "points": [[1, 1], [2, 2], [3, 3]]}, "needs 2 or 4"),
        ({"shape_type": "polygon", "points": [[1, 1], [2, float("nan")], [3, 3]]}, "point 1 is not a pair of finite"),
        ({"shape_type": "polygon", "points": [[1, 1], [2, True], [3, 3]]}, "point 1 is not a pair of finite"),
        ({"shape_type": "polygon", "points": [[1, 1], [2, 2], [3e9, 3]]}, "point 2 .* lies more than 10 image sides"),
        ({"shape_type": ["polygon"], "points": [[1, 1], [2, 2], [3, 3]]}, "unknown shape_type"),
        ({"shape_type": "mask", "points": [[1, 1], [2, 2]], "mask": 7}, "no base64 PNG"),
    ],
)
def test_shapes_that_do_not_fit_are_refused_with_the_reason(shape, reason):
    with pytest.raises(InputError, match=reason):
        rasterize_annotation({"shapes": [shape]}, 10, 10)


def test_four_rectangle_corners_give_their_box():
    mask = _single({"shape_type": "rectangle", "points": [[2, 3], [6, 3], [6, 8], [2, 8]]}, 20, 20).mask
    assert mask.sum() == 5 * 6 and mask[3:9, 2:7].all()


# ---- which shapes make the mask (--region) -------------------------------------------------------------------

BTXRD_POLYGON = [[40, 30], [70, 35], [75, 60], [50, 70], [35, 55]]


def _btxrd_file(lesions: list[list[list[float]]]) -> dict:
    """BTXRD's convention: per lesion one polygon and one rectangle around it, both labelled with the subtype."""
    shapes = []
    for points in lesions:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        shapes.append({"label": "osteosarcoma", "points": points, "shape_type": "polygon", "flags": {}})
        shapes.append(
            {
                "label": "osteosarcoma",
                "points": [[min(xs) - 3, min(ys) - 3], [max(xs) + 3, max(ys) + 3]],
                "shape_type": "rectangle",
                "flags": {},
            }
        )
    return {"version": "5.2.1", "shapes": shapes, "imageData": None, "imageHeight": 100, "imageWidth": 120}


def test_a_btxrd_file_gives_the_outline_the_box_or_their_union():
    data = _btxrd_file([BTXRD_POLYGON])
    polygon = rasterize_annotation({"shapes": data["shapes"][:1]}, 100, 120, region="all")
    box = rasterize_annotation({"shapes": data["shapes"][1:]}, 100, 120, region="all")
    outline = rasterize_annotation(data, 100, 120)  # the default
    assert outline.region_used == "outline" and outline.lesions == 1 and not outline.warnings
    assert np.array_equal(outline.mask, polygon.mask)
    boxed = rasterize_annotation(data, 100, 120, region="box")
    assert np.array_equal(boxed.mask, box.mask) and boxed.area == (75 + 3 - 35 + 3 + 1) * (70 + 3 - 30 + 3 + 1)
    union = rasterize_annotation(data, 100, 120, region="all")
    assert np.array_equal(union.mask, polygon.mask | box.mask)
    # the box is much more than the lesion: what every metric was scored against before
    assert box.area > 1.5 * polygon.area


def test_a_multi_lesion_file_counts_its_lesions_and_unions_them():
    second = [[p[0] + 40, p[1] + 20] for p in BTXRD_POLYGON]
    data = _btxrd_file([BTXRD_POLYGON, second])
    both = rasterize_annotation(data, 100, 120)
    first = rasterize_annotation(_btxrd_file([BTXRD_POLYGON]), 100, 120)
    assert both.lesions == 2
    assert both.area == 2 * first.area  # two disjoint copies of the same polygon


def test_a_rectangle_only_file_falls_back_to_its_rectangles_with_a_warning():
    data = _btxrd_file([BTXRD_POLYGON])
    data["shapes"] = data["shapes"][1:]
    annotation = rasterize_annotation(data, 100, 120)
    assert annotation.region_used == "box" and annotation.lesions == 1
    assert annotation.area == rasterize_annotation(data, 100, 120, region="box").area
    assert any("no outline" in w for w in annotation.warnings)


def test_box_without_rectangles_uses_each_outlines_bounding_box():
    circle = {"shape_type": "circle", "points": [[50, 50], [50, 60]]}
    annotation = rasterize_annotation({"shapes": [circle]}, 100, 100, region="box")
    assert annotation.area == 21 * 21 and annotation.mask[40:61, 40:61].all()
    assert any("bounding boxes" in w for w in annotation.warnings)


def test_real_labelme_file_outline_and_box(labelme_samples):
    """LabelMe's own file with two rectangles, a circle, a polygon and a mask: outline unions the three outlining
    shapes, box the two rectangles (areas from LabelMe's own rasterisation)."""
    info = json.loads((labelme_samples / "expected_areas.json").read_text())["primitives.json"]
    areas = {}
    for shape in info["shapes"]:
        areas.setdefault(shape["shape_type"], []).append(shape["area_px"])
    outline = rasterize_annotation(labelme_samples / "primitives.json", 450, 560)
    box = rasterize_annotation(labelme_samples / "primitives.json", 450, 560, region="box")
    assert outline.lesions == 3 and box.region_used == "box"
    want_outline = areas["circle"][0] + areas["polygon"][0] + areas["mask"][0]  # disjoint in this file
    assert abs(outline.area - want_outline) <= 0.03 * want_outline
    assert abs(box.area - sum(areas["rectangle"])) <= 0.03 * sum(areas["rectangle"])
