"""`btxrd-cam explain-image`: a one-off heatmap overlay, prediction and (with an annotation) agreement metrics."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from btxrd_cam.data import find_images
from btxrd_cam.engine import Engine, Explanation
from btxrd_cam.errors import per_image
from btxrd_cam.maps import upsample_cam
from btxrd_cam.outputs import OutputFolder, output_folder, safe_name, write_atomic
from btxrd_cam.pipeline import explain_items, open_engine
from btxrd_cam.render import captioned, draw_outline, overlay, save_png
from btxrd_cam.reports import emit, to_json
from btxrd_cam.scoring import annotation_mask, score_map
from btxrd_cam.settings import ExplainSettings


@dataclass
class ExplainOutcome:
    records: list[dict]
    failed: int


def _blank_record(image_id: str, path: str, method: str, error: str | None) -> dict:
    """Every explain-image record has the same keys, failed or not."""
    return {
        "image_id": image_id, "path": path, "pred": None, "confidence": None, "probs": None, "target": None,
        "method": method, "overlay": None, "heatmap": None, "metrics": None, "source": None, "warnings": [],
        "error": error,
    }  # fmt: skip


def common_folder(paths: list[Path]) -> Path | None:
    """The deepest folder that holds every input image (None without inputs)."""
    folders = [str(Path(p).resolve().parent) for p in paths]
    return Path(os.path.commonpath(folders)) if folders else None


def output_names(images: list[Path], common: Path | None) -> dict[Path, tuple[str, ...]]:
    """Where each image's outputs go, below `--out`, without their `_cam.png` / `_cam.npy` ending: the folders the
    image sits in relative to the folder that holds them all (so `a/x.png` and `b/x.png` give `a/x_cam.png` and
    `b/x_cam.png`), then its stem as a safe file name (`..png`'s stem `.` becomes a safe name, never a path). Images
    that would still share a name — `x.png` and `x.jpg` in one folder — are named by their whole file name instead
    (`x.png_cam.png`, `x.jpg_cam.png`), whatever order they come in."""

    def folder(image: Path) -> tuple[str, ...]:
        return image.resolve().parent.relative_to(common).parts if common is not None else ()

    taken: dict[tuple, list[Path]] = {}
    for image in images:
        taken.setdefault((*folder(image), safe_name(image.stem)), []).append(image)
    names = {}
    for key, group in taken.items():
        for image in group:
            names[image] = key if len(group) == 1 else (*key[:-1], safe_name(image.name))
    return names


def _record(result: Explanation, engine: Engine, settings: ExplainSettings, outputs: OutputFolder, files) -> dict:
    names = engine.class_names
    record = _blank_record(result.item.image_id, str(result.item.path), settings.method, result.error)
    record.update(source=result.source, warnings=list(result.warnings))
    if not result.ok:
        return record
    record.update(
        pred=names[result.pred],
        confidence=float(result.probs[result.pred]),
        probs={n: float(p) for n, p in zip(names, result.probs, strict=True)},
        target=names[result.target],
    )

    def draw_and_score() -> dict:
        done = dict(record)
        cam = upsample_cam(result.cam, result.orig_size)
        pixels = result.pixels
        if pixels.shape[:2] != result.orig_size:  # --fast-decode decoded a reduced image: draw at full size
            pixels = cv2.resize(pixels, result.orig_size[::-1], interpolation=cv2.INTER_LINEAR)
        shown = overlay(pixels, cam, settings.alpha)
        if settings.annotation is not None:
            model_size = engine.checkpoint.image_size
            annotation = annotation_mask(
                settings.annotation, result.orig_size, settings.resolution, model_size, region=settings.region
            )
            size = annotation.mask.shape
            scored = cam if size == result.orig_size else upsample_cam(result.cam, size)
            done["metrics"] = {
                "threshold": settings.threshold,
                "resolution": settings.resolution,
                "region_used": annotation.region_used,
                "lesions": annotation.lesions,
                **score_map(scored, annotation.mask, settings.threshold),
            }
            if annotation.warnings:
                done["metrics"]["warnings"] = annotation.warnings
            shown = draw_outline(shown, annotation.mask)
        del cam
        caption = f"pred {done['pred']} ({done['confidence']:.2f})  target {done['target']}  {settings.method}"
        *folders, stem = files[result.item.path]
        done["overlay"] = str(save_png(outputs.path(*folders, f"{stem}_cam.png"), captioned(shown, caption)))
        if settings.save_heatmap:
            size = engine.checkpoint.image_size
            buffer = io.BytesIO()
            np.save(buffer, upsample_cam(result.cam, (size, size)).astype(np.float32))
            done["heatmap"] = str(write_atomic(outputs.path(*folders, f"{stem}_cam.npy"), buffer.getvalue()))
        return done

    return per_image(
        draw_and_score, lambda reason: {**record, "error": reason}, settings.annotation or result.item.path
    )


def run_explain(settings: ExplainSettings) -> ExplainOutcome:
    items, failures = find_images(settings.inputs)
    outputs = output_folder(settings, inputs=[item.path for item in items])
    engine = open_engine(settings)
    names = output_names([item.path for item in items], common_folder([item.path for item in items]))
    records = [_blank_record(text, text, settings.method, reason) for text, reason in failures]
    for record in records:
        emit(to_json(record, indent=None), None)

    def each(result: Explanation) -> dict:
        record = _record(result, engine, settings, outputs, names)
        result.pixels = None  # the decoded original was kept for this overlay only
        emit(to_json(record, indent=None), None)
        return record

    records += explain_items(
        engine,
        items,
        target=settings.target,
        quiet=settings.quiet,
        description="explaining",
        each=each,
        keep_pixels=True,
    )
    return ExplainOutcome(records, sum(r["error"] is not None for r in records))
