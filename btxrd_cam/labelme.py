"""LabelMe annotations → binary tumour masks at the real image resolution (or a scaled copy of it).

Every file is validated before anything is drawn, so that no annotation, however malformed, can do more than fail
its own image with a reason: the JSON itself is bounded (size, nesting), every point must be a pair of finite
numbers within a sane distance of the image (points outside the image are clipped by drawing; points absurdly far
away refuse the file), point counts must fit their shape, `imageHeight`/`imageWidth` must be positive whole
numbers (else they are ignored, with a warning), and a `mask` shape's PNG must be a plausible size and is sampled
only where its box meets the image. Not for: deciding which annotation belongs to which image (data.py) or
scoring masks (metrics.py).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from btxrd_cam.errors import InputError

REGION_SHAPES = ("polygon", "rectangle", "circle", "oriented_rectangle", "mask")
# Shapes that outline a lesion; a rectangle only boxes it. BTXRD annotates every tumour twice: one polygon (the
# outline) and one rectangle around it, both labelled with the subtype.
OUTLINE_SHAPES = ("polygon", "circle", "oriented_rectangle", "mask")
# Which shapes make the mask: `outline` (default; the rectangles when a file has no outline), `box` (the rectangles;
# the outlines' bounding boxes when a file has none) or `all` (the union of every region shape: upstream's way).
REGIONS = ("outline", "box", "all")
DEFAULT_REGION = "outline"
NO_AREA_SHAPES = ("line", "linestrip", "point", "points")
# points a shape must have: (at least, at most); a rectangle may also be given by its 4 corners
POINT_COUNTS = {
    "polygon": (3, None),
    "rectangle": (2, 4),
    "circle": (2, 2),
    "oriented_rectangle": (4, 4),
    "mask": (2, 2),
}
MAX_FILE_BYTES = 64 * 2**20  # LabelMe files embed the image as base64: a 5 MP JPEG is ~3 MB
MAX_SHAPES = 10_000
MAX_POINTS = 100_000
MAX_DECLARED_SIDE = 1_000_000
FAR = 10  # a point more than 10 image sides away from the image is absurd, not a slip of the mouse


@dataclass
class Annotation:
    """A rasterised annotation. `mask: bool [H, W]` at the size asked for; warnings are for people."""

    mask: np.ndarray
    warnings: list[str] = field(default_factory=list)
    region_used: str = DEFAULT_REGION
    lesions: int = 0  # how many lesions the file annotates: its outlines (its rectangles when it has none)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    def outline(self) -> list[np.ndarray]:
        """Contours of the mask, int32 [N, 1, 2] (x, y) each, for drawing."""
        contours, _ = cv2.findContours(self.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        return list(contours)


def read_labelme(path: Path) -> dict:
    """Parse a LabelMe JSON file (UTF-8, with or without a byte-order mark, or UTF-16/32); InputError for anything
    that is not one, too large or nested too deeply to be one."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            limit = MAX_FILE_BYTES // 2**20
            raise InputError(path, f"annotation file is {size / 2**20:.0f} MB; the limit is {limit} MB")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "annotation file not found") from None
    except IsADirectoryError:
        raise InputError(path, "annotation path is a directory") from None
    except OSError as exc:
        raise InputError(path, f"cannot read the annotation ({exc.strerror or exc})") from None
    try:
        data = json.loads(raw)  # detects UTF-8 (BOM or not), UTF-16 and UTF-32 as the JSON standard allows
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 (or UTF-16/32) text: LabelMe writes UTF-8 JSON") from None
    except RecursionError:
        raise InputError(path, "JSON nested too deeply to be a LabelMe file") from None
    except ValueError as exc:  # JSONDecodeError, or an integer literal with thousands of digits
        raise InputError(path, f"malformed JSON ({_one_line(exc)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise InputError(path, "not a LabelMe file (no 'shapes' list)")
    return data


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _finite(value) -> float | None:
    """A JSON number as a finite float; None for anything else (bools, strings, NaN, ±Infinity, 1e999, 10**400)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _declared_size(data: dict) -> tuple[tuple[int, int] | None, str | None]:
    """(height, width) the file says its image has, or None with a warning when it says something unusable."""
    values = data.get("imageHeight"), data.get("imageWidth")
    if values == (None, None):
        return None, None
    numbers = [_finite(v) for v in values]
    if all(n is not None and n == int(n) and 0 < n <= MAX_DECLARED_SIDE for n in numbers):
        return (int(numbers[0]), int(numbers[1])), None
    shown = " x ".join(_preview(v, 24) for v in values)
    return None, f"imageHeight/imageWidth ({shown}) are not positive whole numbers: ignored, the image's size used"


def _points(shape: dict, path: Path, index: int) -> np.ndarray:
    """float64 [N, 2] (x, y); InputError naming the shape and point for anything that is not a finite pair."""
    raw = shape.get("points")
    if not isinstance(raw, list):
        raise InputError(path, f"shape {index} has no 'points' list")
    points = np.empty((len(raw), 2), dtype=np.float64)
    for j, point in enumerate(raw):
        pair = [_finite(v) for v in point] if isinstance(point, list) and len(point) == 2 else [None]
        if None in pair:
            raise InputError(path, f"shape {index} point {j} is not a pair of finite numbers ({_preview(point)})")
        points[j] = pair
    return points


def _preview(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_count(kind: str, points: np.ndarray, path: Path, index: int) -> None:
    low, high = POINT_COUNTS[kind]
    n = len(points)
    if n < low or (high is not None and n > high) or (kind == "rectangle" and n == 3):
        wanted = f"at least {low}" if high is None else f"{low}" if low == high else f"{low} or {high}"
        raise InputError(path, f"shape {index} ({kind!r}) has {n} point(s); it needs {wanted}")


def _check_range(xy: np.ndarray, size: tuple[int, int], path: Path, index: int) -> None:
    """Refuse points absurdly far from the image (drawing clips the rest)."""
    height, width = size
    far = FAR * max(height, width, 1)
    outside = (xy[:, 0] < -far) | (xy[:, 0] > width + far) | (xy[:, 1] < -far) | (xy[:, 1] > height + far)
    if outside.any():
        j = int(np.argmax(outside))
        raise InputError(
            path,
            f"shape {index} point {j} ({xy[j, 0]:.4g}, {xy[j, 1]:.4g}) lies more than {FAR} image sides outside "
            f"the {width}x{height} image",
        )


def _mask_region(shape: dict, path: Path, index: int, declared: tuple[int, int]) -> np.ndarray:
    """The PNG of a `mask` shape as bool [h, w]; refused unless it is a PNG of plausible size."""
    encoded = shape.get("mask")
    if not isinstance(encoded, str):
        raise InputError(path, f"shape {index} ('mask') has no base64 PNG")
    try:
        png = base64.b64decode(encoded, validate=False)
        with Image.open(io.BytesIO(png)) as image:
            if image.format != "PNG":
                raise InputError(path, f"shape {index} ('mask') is a {image.format} image, not a PNG")
            width, height = image.size
            limit_h, limit_w = (2 * side + 16 for side in declared)
            if height > limit_h or width > limit_w:
                raise InputError(
                    path, f"shape {index} ('mask') PNG is {width}x{height}, implausible for a {declared[1]}x"
                    f"{declared[0]} image"
                )  # fmt: skip
            return np.asarray(image.convert("L")) > 0
    except InputError:
        raise
    except (binascii.Error, ValueError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(path, f"shape {index} ('mask') has no readable base64 PNG ({_one_line(exc, 80)})") from None


def _paste_region(canvas: np.ndarray, region: np.ndarray, box: np.ndarray) -> None:
    """OR a mask PNG into the canvas over box = [[x1, y1], [x2, y2]] (canvas pixels, inclusive), sampled by nearest
    neighbour only where the box meets the canvas: memory stays the canvas's whatever the box claims."""
    (x1, y1), (x2, y2) = np.floor(box.min(0)), np.floor(box.max(0))
    box_w, box_h = x2 - x1 + 1, y2 - y1 + 1
    h, w = canvas.shape
    ys = np.arange(max(int(y1), 0), min(int(y1 + box_h), h))
    xs = np.arange(max(int(x1), 0), min(int(x1 + box_w), w))
    if ys.size == 0 or xs.size == 0 or region.size == 0:
        return
    rows = np.minimum(((ys - y1) * region.shape[0] / box_h).astype(np.int64), region.shape[0] - 1)
    cols = np.minimum(((xs - x1) * region.shape[1] / box_w).astype(np.int64), region.shape[1] - 1)
    canvas[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1] |= region[np.ix_(rows, cols)]


def _bounding_box(kind: str, xy: np.ndarray) -> np.ndarray:
    """[[x1, y1], [x2, y2]] around a shape's points (a circle's: its centre ± its radius)."""
    if kind == "circle":
        radius = float(np.hypot(*(xy[1] - xy[0])))
        return np.asarray([xy[0] - radius, xy[0] + radius])
    return np.asarray([xy.min(0), xy.max(0)])


def rasterize_annotation(
    source: Path | dict,
    height: int,
    width: int,
    path: Path | None = None,
    draw_size: tuple[int, int] | None = None,
    region: str = DEFAULT_REGION,
) -> Annotation:
    """The lesions of a LabelMe file as `mask: bool [height, width]` — or, with `draw_size` (h, w), drawn directly
    at that size (the image of `height` x `width` scaled; no full-size mask is made).

    `region` chooses the shapes (see REGIONS): `outline` unions the outlining shapes (polygon, circle,
    oriented_rectangle, mask), falling back to the rectangles with a warning when the file has none; `box` unions
    the rectangles, falling back to each outline's bounding box; `all` unions every region shape. The result says
    which was used (`region_used`) and how many lesions the file annotates (`lesions`).

    polygon, rectangle (two corners in any order, or four), circle (centre + a point on it), oriented_rectangle
    (4 points) and mask (base64 PNG inside the box of its two points) have area; line, linestrip and point are
    ignored and counted in a warning. When the file's imageHeight/imageWidth disagree with the real size, shapes are
    scaled to the real size (with a warning); `imagePath` is never used. Raises InputError with a reason for
    anything malformed, unknown region shapes or no region shape at all.
    """
    path = Path(path or (source if isinstance(source, (str, Path)) else "annotation.json"))
    data = read_labelme(Path(source)) if isinstance(source, (str, Path)) else source
    shapes = data.get("shapes")
    if not isinstance(shapes, list):
        raise InputError(path, "not a LabelMe file (no 'shapes' list)")
    if len(shapes) > MAX_SHAPES:
        raise InputError(path, f"{len(shapes)} shapes; the limit is {MAX_SHAPES}")
    total = sum(len(s["points"]) for s in shapes if isinstance(s, dict) and isinstance(s.get("points"), list))
    if total > MAX_POINTS:
        raise InputError(path, f"{total} points; the limit is {MAX_POINTS}")
    canvas_h, canvas_w = draw_size or (height, width)
    declared, warning = _declared_size(data)
    warnings = [warning] if warning else []
    if declared is not None and declared != (height, width):
        warnings.append(
            f"annotation is for a {declared[1]}x{declared[0]} image, the image is {width}x{height}: shapes scaled "
            "to fit"
        )
    file_h, file_w = declared or (height, width)  # the coordinate system of the file's points
    scale = np.asarray([canvas_w / file_w, canvas_h / file_h])
    if region not in REGIONS:
        raise ValueError(f"region must be one of {', '.join(REGIONS)}, not {region!r}")
    parsed, ignored = [], 0
    for index, shape in enumerate(shapes):
        if not isinstance(shape, dict):
            raise InputError(path, f"shape {index} is not an object")
        kind = shape.get("shape_type") or "polygon"  # LabelMe writes null for polygons in old files
        if kind in NO_AREA_SHAPES:
            ignored += 1
            continue
        if not isinstance(kind, str) or kind not in REGION_SHAPES:
            raise InputError(path, f"shape {index} has unknown shape_type {_preview(kind)}")
        points = _points(shape, path, index)
        _check_count(kind, points, path, index)
        _check_range(points, (file_h, file_w), path, index)
        parsed.append((index, kind, shape, points * scale))
    if not parsed:
        raise InputError(path, "annotation has no region shape (polygon, rectangle, circle, mask)")
    outlines = [p for p in parsed if p[1] in OUTLINE_SHAPES]
    boxes = [p for p in parsed if p[1] == "rectangle"]
    used = region
    if region == "outline":
        drawn = outlines
        if not outlines:
            drawn, used = boxes, "box"
            warnings.append(
                f"no outline (polygon, circle, mask) in the file: scored against its {len(boxes)} rectangle(s)"
            )
    elif region == "box":
        drawn = boxes
        if not boxes:
            drawn = [(i, "bounding_box", s, _bounding_box(kind, xy)) for i, kind, s, xy in outlines]
            warnings.append(
                f"no rectangle in the file: scored against the bounding boxes of its {len(outlines)} outline(s)"
            )
    else:
        drawn = parsed
    canvas = np.zeros((canvas_h, canvas_w), dtype=np.uint8)
    pasted = np.zeros((canvas_h, canvas_w), dtype=bool)
    for index, kind, shape, xy in drawn:
        if kind == "mask":
            _paste_region(pasted, _mask_region(shape, path, index, (file_h, file_w)), xy)
        elif kind in ("rectangle", "bounding_box"):
            (x1, y1), (x2, y2) = np.rint(xy.min(0)).astype(int), np.rint(xy.max(0)).astype(int)
            cv2.rectangle(canvas, (int(x1), int(y1)), (int(x2), int(y2)), 1, thickness=-1)
        elif kind == "circle":
            radius = float(np.hypot(*(xy[1] - xy[0])))
            center = tuple(int(v) for v in np.rint(xy[0]))
            cv2.circle(canvas, center, int(round(radius)), 1, thickness=-1)
        else:  # polygon, oriented_rectangle
            polygon = np.rint(xy).astype(np.int32).reshape(-1, 1, 2)
            cv2.fillPoly(canvas, [polygon], 1)
            cv2.polylines(canvas, [polygon], True, 1)
    if ignored:
        warnings.append(f"{ignored} shape(s) without area (line, linestrip, point) ignored")
    lesions = len(outlines) or len(boxes)
    return Annotation(mask=(canvas > 0) | pasted, warnings=warnings, region_used=used, lesions=lesions)
