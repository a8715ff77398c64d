"""LabelMe annotations → binary tumour masks at the real image resolution.

Not for: deciding which annotation belongs to which image (data.py) or scoring masks (metrics.py).
"""

from __future__ import annotations

import base64
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
NO_AREA_SHAPES = ("line", "linestrip", "point", "points")


@dataclass
class Annotation:
    """A rasterised annotation. `mask: bool [H, W]` at the real image size; warnings are for people."""

    mask: np.ndarray
    warnings: list[str] = field(default_factory=list)

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def outline(self) -> list[np.ndarray]:
        """Contours of the mask, int32 [N, 1, 2] (x, y) each, for drawing."""
        contours, _ = cv2.findContours(self.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        return list(contours)


def read_labelme(path: Path) -> dict:
    """Parse a LabelMe JSON file; InputError for anything that is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"malformed JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise InputError(path, "not a LabelMe file (no 'shapes' list)")
    return data


def _points(shape: dict, path: Path, index: int) -> np.ndarray:
    try:
        points = np.asarray(shape["points"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise InputError(path, f"shape {index} has no valid 'points'") from None
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise InputError(path, f"shape {index} has malformed 'points'")
    return points


def _paste_mask(canvas: np.ndarray, shape: dict, points: np.ndarray, path: Path, index: int, scale) -> None:
    try:
        png = base64.b64decode(shape["mask"])
        region = np.asarray(Image.open(io.BytesIO(png)).convert("L")) > 0
    except Exception:
        raise InputError(path, f"shape {index} ('mask') has no readable base64 PNG") from None
    (x1, y1), (x2, y2) = np.floor(points[:2].min(0)).astype(int), np.floor(points[:2].max(0)).astype(int)
    box_w, box_h = x2 - x1 + 1, y2 - y1 + 1
    if scale != (1.0, 1.0) or region.shape != (box_h, box_w):
        x1, y1 = int(math.floor(x1 * scale[0])), int(math.floor(y1 * scale[1]))
        box_w, box_h = max(1, round(box_w * scale[0])), max(1, round(box_h * scale[1]))
        region = cv2.resize(region.astype(np.uint8), (box_w, box_h), interpolation=cv2.INTER_NEAREST) > 0
    h, w = canvas.shape
    ys, xs = slice(max(y1, 0), min(y1 + region.shape[0], h)), slice(max(x1, 0), min(x1 + region.shape[1], w))
    if ys.start < ys.stop and xs.start < xs.stop:
        canvas[ys, xs] |= region[ys.start - y1 : ys.stop - y1, xs.start - x1 : xs.stop - x1]


def rasterize_annotation(
    source: Path | dict, height: int, width: int, path: Path | None = None, draw_size: tuple[int, int] | None = None
) -> Annotation:
    """Union of every region shape of a LabelMe file as `mask: bool [height, width]` — or, with `draw_size`
    (h, w), drawn directly at that size (the image of `height` x `width` scaled; no full-size mask is made).

    polygon, rectangle (two corners, any order), circle (centre + a point on it), oriented_rectangle (4 points)
    and mask (base64 PNG inside the box of its two points) have area; line, linestrip and point are ignored and
    counted in a warning. Shapes are clipped to the image. When the file's imageHeight/imageWidth disagree with
    the real size, shapes are scaled to the real size (with a warning); `imagePath` is never used.
    Raises InputError for malformed files, unknown region shapes or no region shape at all.
    """
    path = Path(path or (source if isinstance(source, (str, Path)) else "annotation.json"))
    data = read_labelme(Path(source)) if isinstance(source, (str, Path)) else source
    warnings: list[str] = []
    canvas_h, canvas_w = draw_size or (height, width)
    scale = (canvas_w / width, canvas_h / height)
    declared_h, declared_w = data.get("imageHeight"), data.get("imageWidth")
    declared = all(isinstance(v, (int, float)) and v > 0 for v in (declared_h, declared_w))
    if declared and (int(declared_h), int(declared_w)) != (height, width):
        scale = (canvas_w / float(declared_w), canvas_h / float(declared_h))
        warnings.append(
            f"annotation is for a {int(declared_w)}x{int(declared_h)} image, the image is {width}x{height}: "
            "shapes scaled to fit"
        )
    canvas = np.zeros((canvas_h, canvas_w), dtype=np.uint8)
    pasted = np.zeros((canvas_h, canvas_w), dtype=bool)
    regions, ignored = 0, 0
    for index, shape in enumerate(data["shapes"]):
        if not isinstance(shape, dict):
            raise InputError(path, f"shape {index} is not an object")
        kind = shape.get("shape_type") or "polygon"  # LabelMe writes null for polygons in old files
        if kind in NO_AREA_SHAPES:
            ignored += 1
            continue
        if kind not in REGION_SHAPES:
            raise InputError(path, f"shape {index} has unknown shape_type {kind!r}")
        points = _points(shape, path, index)
        if kind == "mask":
            if len(points) < 2:
                raise InputError(path, f"shape {index} ('mask') needs 2 points")
            _paste_mask(pasted, shape, points, path, index, scale)
            regions += 1
            continue
        xy = points * np.asarray(scale)
        if kind == "rectangle":
            if len(xy) < 2:
                raise InputError(path, f"shape {index} ('rectangle') needs 2 points")
            (x1, y1), (x2, y2) = np.rint(xy[:2].min(0)).astype(int), np.rint(xy[:2].max(0)).astype(int)
            cv2.rectangle(canvas, (int(x1), int(y1)), (int(x2), int(y2)), 1, thickness=-1)
        elif kind == "circle":
            if len(xy) < 2:
                raise InputError(path, f"shape {index} ('circle') needs 2 points")
            radius = float(np.hypot(*(xy[1] - xy[0])))
            center = tuple(int(v) for v in np.rint(xy[0]))
            cv2.circle(canvas, center, int(round(radius)), 1, thickness=-1)
        else:  # polygon, oriented_rectangle
            if len(xy) < 3:
                raise InputError(path, f"shape {index} ({kind!r}) needs at least 3 points")
            polygon = np.rint(xy).astype(np.int32).reshape(-1, 1, 2)
            cv2.fillPoly(canvas, [polygon], 1)
            cv2.polylines(canvas, [polygon], True, 1)
        regions += 1
    if regions == 0:
        raise InputError(path, "annotation has no region shape (polygon, rectangle, circle, mask)")
    if ignored:
        warnings.append(f"{ignored} shape(s) without area (line, linestrip, point) ignored")
    return Annotation(mask=(canvas > 0) | pasted, warnings=warnings)
