"""Scoring maps against an annotation at a chosen resolution: the step annotate-iou, compare and explain-image share.

Resolutions: `original` (the image's own size), `model` (the model's square input, the mask rasterised at the
original size and resized by nearest neighbour: upstream's way) or a number N (the image's long side scaled to N
pixels — never up — with the annotation drawn directly at that size). Maps are upsampled to the same size with
`maps.upsample_cam`. Not for: the metrics themselves (metrics.py) or making maps (engine.py, maps.py).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from btxrd_cam.errors import InputError
from btxrd_cam.labelme import DEFAULT_REGION, Annotation, rasterize_annotation
from btxrd_cam.metrics import localization_metrics, otsu_threshold

Resolution = str | int  # "original", "model" or a long side in pixels


def scoring_size(orig_size: tuple[int, int], resolution: Resolution, model_size: int) -> tuple[int, int]:
    """(h, w) at which a map and its annotation are compared."""
    if resolution == "original":
        return orig_size
    if resolution == "model":
        return (model_size, model_size)
    height, width = orig_size
    scale = int(resolution) / max(height, width)
    if scale >= 1:
        return orig_size
    return (max(1, round(height * scale)), max(1, round(width * scale)))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool [h, w] → bool [H, W] by nearest neighbour (upstream's way of comparing at model resolution)."""
    height, width = size
    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0


def annotation_mask(
    source: Path | dict,
    orig_size: tuple[int, int],
    resolution: Resolution,
    model_size: int,
    path: Path | None = None,
    region: str = DEFAULT_REGION,
) -> Annotation:
    """The annotation (a LabelMe file, or its parsed contents with `path` naming it) of an image of `orig_size` as a
    mask at the scoring size, drawn from the shapes `region` chooses; InputError if it has no area there."""
    path = Path(path or source)
    size = scoring_size(orig_size, resolution, model_size)
    if resolution == "model":
        annotation = rasterize_annotation(source, *orig_size, path=path, region=region)
        if annotation.area == 0:
            raise InputError(path, "annotation has no area")
        annotation = Annotation(
            resize_mask(annotation.mask, size), annotation.warnings, annotation.region_used, annotation.lesions
        )
        where = " at model resolution"
    else:
        draw_size = None if size == orig_size else size
        annotation = rasterize_annotation(source, *orig_size, path=path, draw_size=draw_size, region=region)
        where = "" if size == orig_size else f" at {size[1]}x{size[0]}"
    if annotation.area == 0:
        raise InputError(path, f"annotation has no area{where}")
    return annotation


def score_map(
    cam: np.ndarray, mask: np.ndarray, threshold: float | str, sweep: tuple[float, ...] = ()
) -> dict[str, float | bool | list | None]:
    """Every agreement metric of one map (float32 [H, W] in [0, 1]) against one mask at one threshold — a number,
    or "otsu" (chosen per map, recorded as `threshold`) — plus the IoU at each `sweep` threshold."""
    used = otsu_threshold(cam) if threshold == "otsu" else float(threshold)
    metrics = localization_metrics(cam, mask, used, sweep=sweep)
    if threshold == "otsu":
        metrics["threshold"] = used
    return metrics
