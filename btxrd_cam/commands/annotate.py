"""`btxrd-cam annotate-iou`: agreement between CAMs and the radiologists' LabelMe tumour outlines.

Explain the annotated images of the split once, score each against its mask (at the original size by
default), summarise with bootstrap intervals and breakdowns, and draw the most confident correct cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from btxrd_cam.console import show, summary_table
from btxrd_cam.data import ImageItem
from btxrd_cam.engine import Engine, Explanation
from btxrd_cam.errors import UsageError
from btxrd_cam.labelme import DEFAULT_REGION, rasterize_annotation, read_labelme
from btxrd_cam.maps import upsample_cam
from btxrd_cam.metrics import SWEEP_THRESHOLDS
from btxrd_cam.outputs import ANNOTATION_REPORT, OVERLAY_LONG_SIDE, output_folder, overlay_folder
from btxrd_cam.pipeline import (
    annotated,
    checkpoint_info,
    explain_and_score,
    image_context,
    load_split,
    load_tuning_items,
    open_cache,
    open_engine,
    reread_most_confident,
)
from btxrd_cam.render import annotation_metrics_figure, comparison_figure, save_overlay
from btxrd_cam.reports import SCHEMA_VERSION, write_report
from btxrd_cam.scoring import annotation_mask, score_map
from btxrd_cam.settings import AnnotateSettings
from btxrd_cam.statistics import bootstrap_ci, describe
from btxrd_cam.statistics import breakdowns as group_breakdowns

METRICS = ("iou", "dice", "pointing_game", "energy_pointing_game", "pxap", "cam_area", "mask_area")
FIGURE_NAME = "annotation_comparison.png"
METRICS_FIGURE_NAME = "annotation_metrics.png"


@dataclass
class Scored:
    """One scored image: its report record plus the small things the figure needs later."""

    record: dict
    item: ImageItem
    cam: np.ndarray | None
    sweep: list[float] | None


@dataclass
class AnnotateOutcome:
    report: dict
    text: str
    failed: int
    empty: bool


def score_image(
    result: Explanation, engine: Engine, threshold, resolution, overlays: Path | None = None, region=DEFAULT_REGION
) -> tuple[dict, list[float]]:
    """Metrics of one explained image against its annotation, and its overlay in `overlays` when given (drawn on
    the thumbnail the engine kept from its decode). Raises InputError for an unusable annotation."""
    path = result.item.annotation
    data = read_labelme(path)
    model_size = engine.checkpoint.image_size
    annotation = annotation_mask(data, result.orig_size, resolution, model_size, path=path, region=region)
    cam = upsample_cam(result.cam, annotation.mask.shape)
    metrics = score_map(cam, annotation.mask, threshold, sweep=SWEEP_THRESHOLDS)
    sweep = metrics.pop("sweep")
    metrics.update(region_used=annotation.region_used, lesions=annotation.lesions)
    if result.warnings or annotation.warnings:  # the image's (a multi-frame DICOM, say), then the annotation's
        metrics["warnings"] = [*result.warnings, *annotation.warnings]
    if overlays is not None and result.thumbnail is not None:
        small = result.thumbnail.shape[:2]
        outline = rasterize_annotation(data, *result.orig_size, path=path, draw_size=small, region=region)
        save_overlay(overlays, result.item.image_id, result.thumbnail, result.cam, outline.mask)
        result.thumbnail = None  # drawn: no longer needed
    return metrics, sweep


def _record(result: Explanation, names: list[str], error: str | None) -> dict:
    item = result.item
    ok = result.ok and result.probs is not None
    return {
        "image_id": item.image_id,
        "label": item.label,
        "pred": names[result.pred] if ok else None,
        "confidence": float(result.probs[result.pred]) if ok else None,
        "subtype": item.subtype,
        **image_context(item, result.orig_size),
        **dict.fromkeys(METRICS),
        "region_used": None,
        "lesions": None,
        "error": error,
    }


def _score(result: Explanation, engine: Engine, settings: AnnotateSettings, threshold, overlays) -> Scored:
    """Raises InputError for an unusable annotation (the per-image boundary turns it into a failed record)."""
    record = _record(result, engine.class_names, result.error)
    if not result.ok:
        return Scored(record, result.item, None, None)
    metrics, sweep = score_image(result, engine, threshold, settings.resolution, overlays, settings.region)
    record.update(metrics)
    return Scored(record, result.item, result.cam, sweep)


def score_items(
    engine: Engine,
    items: list[ImageItem],
    settings: AnnotateSettings,
    threshold,
    description: str,
    overlays=None,
    cache=None,
):
    """Explain the items in one engine pass (or from the cache) and score each (beside the engine); overlays
    into `overlays`."""
    return explain_and_score(
        engine,
        items,
        lambda result: _score(result, engine, settings, threshold, overlays),
        lambda result, reason: Scored(_record(result, engine.class_names, reason), result.item, None, None),
        target=settings.target,
        quiet=settings.quiet,
        description=description,
        thumbnail=OVERLAY_LONG_SIDE if overlays is not None else None,
        cache=cache,
    )


def tune_threshold(engine: Engine, settings: AnnotateSettings) -> dict:
    """The sweep threshold with the highest mean IoU on the split's `val` subset (never the scored images)."""
    val_items, manifest = load_tuning_items(settings, engine.class_names)
    scored = score_items(engine, val_items, settings, 0.5, "tuning on val", cache=open_cache(settings, engine))
    sweeps = [s.sweep for s in scored if s.sweep is not None and _selected(s.record, settings.select)]
    if not sweeps:
        raise UsageError(f"--threshold: no usable annotated image in {manifest} to tune on")
    means = np.mean(np.asarray(sweeps), axis=0)
    best = int(np.argmax(means))
    return {
        "value": SWEEP_THRESHOLDS[best],
        "tuned_on": f"{settings.split}/val",
        "images": len(sweeps),
        "mean_iou_on_val": float(means[best]),
    }


def _selected(record: dict, select: str) -> bool:
    return select == "all" or (record["pred"] is not None and record["pred"] == record["label"])


def summarize(records: list[dict]) -> dict:
    """Describe every metric, IoU hit shares and bootstrap 95% CIs of mean IoU, pointing-game hit rate and PxAP."""
    summary = {metric: describe(r[metric] for r in records) for metric in METRICS}
    ious = [r["iou"] for r in records]
    hits = [float(r["pointing_game"]) for r in records]
    summary["count"] = len(records)
    summary["share_iou_above_0.1"] = float(np.mean([v > 0.1 for v in ious])) if ious else None
    summary["share_iou_above_0.5"] = float(np.mean([v > 0.5 for v in ious])) if ious else None
    summary["iou_mean_ci95"] = bootstrap_ci(ious)
    summary["pointing_game_hit_rate"] = float(np.mean(hits)) if hits else None
    summary["pointing_game_ci95"] = bootstrap_ci(hits)
    summary["pxap_mean_ci95"] = bootstrap_ci(r["pxap"] for r in records)
    return summary


def breakdowns(records: list[dict]) -> dict:
    """The summary by true class, correct vs missed, subtype, lesion-size tertile, centre, view, body region and
    image size."""
    return group_breakdowns(records, summarize, lambda r: r["mask_area"])


def _figure_rows(scored: list[Scored], top: int, quiet: bool, region: str) -> list[dict]:
    rows = []
    usable = [s for s in scored if s.cam is not None]
    for s, pixels, mask in reread_most_confident(usable, top, quiet, "the figure", region=region):
        title = f"{s.item.image_id}\n{s.record['label']} p={s.record['confidence']:.2f}"
        rows.append({"pixels": pixels, "mask": mask, "cam": s.cam, "iou": s.record["iou"], "title": title})
    return rows


def run_annotate(settings: AnnotateSettings) -> AnnotateOutcome:
    outputs = output_folder(settings)
    engine = open_engine(settings)
    names = engine.class_names
    items = load_split(settings, names)
    tuned = tune_threshold(engine, settings) if settings.threshold == "tune" else None
    threshold = tuned["value"] if tuned else settings.threshold
    to_score = annotated(items)  # none: an empty but valid report, and `empty` for the caller's exit code
    overlays = outputs.path(overlay_folder("annotate-iou")) if settings.images else None
    scored = score_items(engine, to_score, settings, threshold, "scoring", overlays, open_cache(settings, engine))
    failed = [s.record for s in scored if s.record["error"] is not None]
    evaluated = [s for s in scored if s.record["error"] is None and _selected(s.record, settings.select)]
    records = [s.record for s in evaluated]
    sweep_means = np.mean([s.sweep for s in evaluated], axis=0).tolist() if evaluated else [None] * 19
    report = {
        "schema_version": SCHEMA_VERSION,
        "command": "annotate-iou",
        "settings": {
            "split": settings.split,
            "subset": settings.subset,
            "method": settings.method,
            "target": settings.target,
            "select": settings.select,
            "resolution": settings.resolution,
            "region": settings.region,
            "threshold": settings.threshold,
            "data_root": str(settings.data_root),
            "splits_dir": str(settings.splits_dir),
        },
        "threshold": {
            "mode": settings.threshold if isinstance(settings.threshold, str) else "fixed",
            "value": None if threshold == "otsu" else threshold,
            "tuning": tuned,
        },
        "checkpoint": checkpoint_info(engine),
        "images_in_split": len(items),
        "annotated_images": len(to_score),
        "evaluated": len(records),
        "excluded_by_select": len(scored) - len(failed) - len(records),
        "summary": summarize(records),
        "breakdowns": breakdowns(records),
        "sweep": {
            "note": "exploratory: mean IoU over the evaluated images at each threshold; not a tuned result",
            "thresholds": list(SWEEP_THRESHOLDS),
            "mean_iou": sweep_means,
        },
        "records": records,
        "failed": failed,
    }
    text = write_report(report, outputs.path(ANNOTATION_REPORT))
    if to_score:
        comparison_figure(
            _figure_rows(evaluated, settings.top, settings.quiet, settings.region), outputs.path(FIGURE_NAME)
        )
        annotation_metrics_figure(report, outputs.path(METRICS_FIGURE_NAME))
    show(
        summary_table(f"CAM vs annotation ({len(records)} images)", report["summary"], METRICS),
        settings.quiet,
    )
    return AnnotateOutcome(report, text, len(failed), empty=not to_score)
