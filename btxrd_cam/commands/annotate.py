"""`btxrd-cam annotate-iou`: agreement between CAMs and the radiologists' LabelMe tumour outlines.

`examine` explains the annotated images of the split (or of one shard of it) once and scores each against its mask
— a part: records, and what the summary needs besides (every sweep threshold's IoU, Dice and CAM area, so that a
threshold tuned later is a lookup; the raw maps of the shard's most confident correct images, for the figure).
`finish` turns a part — one run's, or the shards' joined by `merge` — into the report: the tuned threshold,
summaries with bootstrap intervals and breakdowns, the figures. One function for both paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from btxrd_cam.console import show, summary_table
from btxrd_cam.data import ImageItem, manifest_path
from btxrd_cam.engine import Engine, Explanation
from btxrd_cam.errors import UsageError
from btxrd_cam.labelme import DEFAULT_REGION, rasterize_annotation, read_labelme
from btxrd_cam.maps import upsample_cam
from btxrd_cam.metrics import SWEEP_THRESHOLDS
from btxrd_cam.outputs import ANNOTATION_REPORT, OVERLAY_LONG_SIDE, output_folder, overlay_folder
from btxrd_cam.pipeline import (
    annotated,
    checkpoint_info,
    complete,
    explain_and_score,
    image_context,
    load_split,
    load_tuning_items,
    open_cache,
    open_engine,
    reread_most_confident,
    with_positions,
)
from btxrd_cam.render import annotation_metrics_figure, comparison_figure, save_overlay
from btxrd_cam.reports import SCHEMA_VERSION, write_report
from btxrd_cam.scoring import annotation_mask, score_map
from btxrd_cam.settings import AnnotateSettings
from btxrd_cam.shards import WHOLE, Part, Shard
from btxrd_cam.statistics import bootstrap_ci, describe
from btxrd_cam.statistics import breakdowns as group_breakdowns

METRICS = ("iou", "dice", "pointing_game", "energy_pointing_game", "pxap", "cam_area", "mask_area")
FIGURE_NAME = "annotation_comparison.png"
METRICS_FIGURE_NAME = "annotation_metrics.png"
SWEEPS = ("sweep", "sweep_dice", "sweep_cam_area")


@dataclass
class Scored:
    """One scored image: its report record plus the small things the figure needs later."""

    record: dict
    item: ImageItem
    cam: np.ndarray | None
    sweeps: dict[str, list[float]] | None  # IoU, Dice and CAM area at each sweep threshold

    @property
    def sweep(self) -> list[float] | None:
        return self.sweeps["sweep"] if self.sweeps else None


@dataclass
class AnnotateOutcome:
    report: dict
    text: str
    failed: int
    empty: bool


def score_image(
    result: Explanation, engine: Engine, threshold, resolution, overlays: Path | None = None, region=DEFAULT_REGION
) -> tuple[dict, dict[str, list[float]]]:
    """Metrics of one explained image against its annotation, and its overlay in `overlays` when given (drawn on
    the thumbnail the engine kept from its decode). Raises InputError for an unusable annotation."""
    path = result.item.annotation
    data = read_labelme(path)
    model_size = engine.checkpoint.image_size
    annotation = annotation_mask(data, result.orig_size, resolution, model_size, path=path, region=region)
    cam = upsample_cam(result.cam, annotation.mask.shape)
    metrics = score_map(cam, annotation.mask, threshold, sweep=SWEEP_THRESHOLDS)
    sweep = {key: metrics.pop(key) for key in SWEEPS}
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


def tuning_records(engine: Engine, settings: AnnotateSettings, shard: Shard, cache) -> list[dict]:
    """The shard's share of the val subset, scored for tuning: {position, label, pred, sweep} per image (val is
    split into shards like the scored subset, and merged the same way)."""
    val_items, _ = load_tuning_items(settings, engine.class_names)
    chosen = shard.take(with_positions(val_items), settings.batch_size)
    scored = score_items(engine, [item for _, item in chosen], settings, 0.5, "tuning on val", cache=cache)
    return [
        {"position": position, "label": s.record["label"], "pred": s.record["pred"], "sweep": s.sweep}
        for (position, _), s in zip(chosen, scored, strict=True)
        if s.sweep is not None
    ]


def tune(val: list[dict], settings: AnnotateSettings) -> dict:
    """The sweep threshold with the highest mean IoU on the val records (never the scored images)."""
    sweeps = [v["sweep"] for v in sorted(val, key=lambda v: v["position"]) if _selected(v, settings.select)]
    if not sweeps:
        manifest = manifest_path(settings.splits_dir, settings.split, "val")
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


def examine(settings: AnnotateSettings, engine: Engine, outputs, shard: Shard = WHOLE) -> Part:
    """Score the shard's annotated images (overlays drawn as it goes): the part `finish` summarises."""
    names = engine.class_names
    items = load_split(settings, names)
    cache = open_cache(settings, engine)
    val = tuning_records(engine, settings, shard, cache) if settings.threshold == "tune" else []
    threshold = 0.5 if settings.threshold == "tune" else settings.threshold  # tune: filled in from the sweeps
    chosen = shard.take(with_positions(annotated(items)), settings.batch_size)
    overlays = outputs.path(overlay_folder("annotate-iou")) if settings.images else None
    scored = score_items(engine, [item for _, item in chosen], settings, threshold, "scoring", overlays, cache)
    records = [{**s.record, "position": position} for (position, _), s in zip(chosen, scored, strict=True)]
    empty = [np.nan] * len(SWEEP_THRESHOLDS)
    arrays = {
        f"r_{key}": np.asarray([s.sweeps[key] if s.sweeps else empty for s in scored], np.float64).reshape(
            len(scored), len(SWEEP_THRESHOLDS)
        )
        for key in SWEEPS
    }
    for record, s in zip(records, scored, strict=True):  # the maps of the shard's figure candidates
        if s.cam is not None and record in figure_candidates(records, settings):
            arrays[f"cam_{record['position']}"] = s.cam
    context = {
        "checkpoint": checkpoint_info(engine),
        "images_in_split": len(items),
        "annotated_images": len(annotated(items)),
    }
    return Part("annotate-iou", settings.part_settings(), context, records, arrays, {"val": val}, shard)


def figure_candidates(records: list[dict], settings: AnnotateSettings) -> list[dict]:
    """The `--top` most confident correctly classified of the evaluated records (ties by image id): the figure's
    rows — and, per shard, the only maps a part needs to keep for it."""
    correct = [r for r in records if r["error"] is None and _selected(r, settings.select) and r["pred"] == r["label"]]
    return sorted(correct, key=lambda r: (-r["confidence"], r["image_id"]))[: settings.top]


def finish(part: Part, settings: AnnotateSettings, outputs) -> AnnotateOutcome:
    """The report of a part — one run's, or the shards' joined — with its figures: a pure function of the part."""
    context = part.context
    tuned = tune(part.extra.get("val", []), settings) if settings.threshold == "tune" else None
    threshold = tuned["value"] if tuned else settings.threshold
    records = [dict(r) for r in part.records]
    if tuned:  # each record's threshold-dependent metrics at the tuned threshold, from its sweep
        at = SWEEP_THRESHOLDS.index(tuned["value"])
        for i, record in enumerate(records):
            if record["error"] is None:
                record.update(
                    iou=float(part.arrays["r_sweep"][i, at]),
                    dice=float(part.arrays["r_sweep_dice"][i, at]),
                    cam_area=float(part.arrays["r_sweep_cam_area"][i, at]),
                )
    rows = [i for i, r in enumerate(records) if r["error"] is None and _selected(r, settings.select)]
    failed = [_public(r) for r in records if r["error"] is not None]
    evaluated = [_public(records[i]) for i in rows]
    sweep_means = np.mean(part.arrays["r_sweep"][rows], axis=0).tolist() if rows else [None] * len(SWEEP_THRESHOLDS)
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
        "checkpoint": context["checkpoint"],
        "images_in_split": context["images_in_split"],
        "annotated_images": context["annotated_images"],
        "evaluated": len(evaluated),
        "excluded_by_select": len(records) - len(failed) - len(evaluated),
        "summary": summarize(evaluated),
        "breakdowns": breakdowns(evaluated),
        "sweep": {
            "note": "exploratory: mean IoU over the evaluated images at each threshold; not a tuned result",
            "thresholds": list(SWEEP_THRESHOLDS),
            "mean_iou": sweep_means,
        },
        "records": evaluated,
        "failed": failed,
    }
    text = write_report(report, outputs.path(ANNOTATION_REPORT))
    if context["annotated_images"]:
        comparison_figure(_figure_rows(records, part, settings), outputs.path(FIGURE_NAME))
        annotation_metrics_figure(report, outputs.path(METRICS_FIGURE_NAME))
    show(
        summary_table(f"CAM vs annotation ({len(evaluated)} images)", report["summary"], METRICS),
        settings.quiet,
    )
    return AnnotateOutcome(report, text, len(failed), empty=not context["annotated_images"])


def _public(record: dict) -> dict:
    """A record as the report holds it (without its position in the manifest)."""
    return {k: v for k, v in record.items() if k != "position"}


def _figure_rows(records: list[dict], part: Part, settings: AnnotateSettings) -> list[dict]:
    """The figure candidates, re-read for drawing only, with their maps from the part."""
    items = {item.image_id: item for item in load_split(settings, part.context["checkpoint"]["class_names"])}
    candidates = [
        Scored(r, items[r["image_id"]], part.arrays[f"cam_{r['position']}"], None)
        for r in figure_candidates(records, settings)
        if f"cam_{r['position']}" in part.arrays
    ]
    rows = []
    for s, pixels, mask in reread_most_confident(candidates, settings.top, settings.quiet, "the figure",
                                                 region=settings.region):  # fmt: skip
        title = f"{s.item.image_id}\n{s.record['label']} p={s.record['confidence']:.2f}"
        rows.append({"pixels": pixels, "mask": mask, "cam": s.cam, "iou": s.record["iou"], "title": title})
    return rows


def make_engine(settings: AnnotateSettings) -> Engine:
    return open_engine(settings)


def run_annotate(settings: AnnotateSettings) -> AnnotateOutcome:
    """One run: examine every image (or this shard's, written for `merge`; or every shard on Ray), then finish."""
    return complete("annotate-iou", settings, output_folder(settings))
