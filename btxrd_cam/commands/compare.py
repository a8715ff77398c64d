"""`btxrd-cam compare`: every CAM method × layer, and the chance baselines, against the annotations in one pass.

Explain the annotated images of the split once with every configuration (`METHOD@LAYER`), score every map — and
the `uniform`, `centre` and `edges` baselines, as rows of the same tables — against the annotation exactly as
annotate-iou does, then summarise: mean and bootstrap 95% CI per configuration and metric, the paired bootstrap
difference against a reference configuration, a ranking, a forest plot and a grid of examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from btxrd_cam.console import comparison_table, show, warn
from btxrd_cam.data import ImageItem, manifest_path, resize_for_model
from btxrd_cam.engine import Engine, Explanation
from btxrd_cam.errors import UsageError
from btxrd_cam.labelme import rasterize_annotation, read_labelme
from btxrd_cam.maps import baseline_map, upsample_cam
from btxrd_cam.metrics import SWEEP_THRESHOLDS
from btxrd_cam.outputs import COMPARISON_REPORT, OVERLAY_LONG_SIDE, output_folder, overlay_folder
from btxrd_cam.pipeline import (
    annotated,
    checkpoint_info,
    complete,
    explain_and_score,
    image_context,
    load_split,
    load_tuning_items,
    open_cache,
    open_checkpoint,
    open_engine,
    reread_most_confident,
    resolve_configurations,
    resolve_reference,
    with_positions,
)
from btxrd_cam.render import comparison_grid, forest_plot, save_overlay
from btxrd_cam.reports import SCHEMA_VERSION, write_report
from btxrd_cam.scoring import annotation_mask, score_map
from btxrd_cam.settings import CompareSettings
from btxrd_cam.shards import WHOLE, Part, Shard
from btxrd_cam.statistics import breakdowns as group_breakdowns
from btxrd_cam.statistics import mean_ci, paired_bootstrap

FOREST_NAME = "comparison.png"
GRID_NAME = "comparison_grid.png"
METRICS = ("iou", "dice", "pointing_game", "energy_pointing_game", "pxap", "cam_area", "mask_area")
PAIRED_METRICS = ("iou", "dice", "pointing_game", "energy_pointing_game", "pxap")
FOREST_METRICS = ("iou", "pointing_game", "pxap")
GRID_CONFIGURATIONS = 3  # best-ranked CAM configurations shown beside the reference in the grid
GRID_LONG_SIDE = 384


@dataclass
class Scored:
    """One image after scoring: its report record, and its raw maps for the example grid."""

    record: dict
    item: ImageItem
    maps: dict[str, np.ndarray] | None
    sweeps: dict[str, list[float]] | None
    excluded: bool = False


@dataclass
class CompareOutcome:
    report: dict
    text: str
    failed: int
    empty: bool


def _record(result: Explanation, names: list[str], error: str | None) -> dict:
    ok = result.ok and result.probs is not None
    return {
        "image_id": result.item.image_id,
        "label": result.item.label,
        "pred": names[result.pred] if ok else None,
        "confidence": float(result.probs[result.pred]) if ok else None,
        "subtype": result.item.subtype,
        **image_context(result.item, result.orig_size),
        "metrics": None,
        "region_used": None,
        "lesions": None,
        "error": error,
    }


def failed_image(result: Explanation, names: list[str], reason: str) -> Scored:
    return Scored(_record(result, names, reason), result.item, None, None)


def score_configurations(
    result: Explanation,
    engine: Engine,
    settings: CompareSettings,
    thresholds: dict[str, float | str],
    sweep: bool = False,
    overlay: tuple[Path, str] | None = None,
) -> Scored:
    """Every configuration's map and every baseline of one image against its annotation, at the scoring size;
    with `overlay` = (folder, configuration), that configuration's overlay drawn on the engine's thumbnail.
    Raises InputError for an unusable annotation (the per-image boundary turns it into a failed record)."""
    item = result.item
    record = _record(result, engine.class_names, result.error)
    if not result.ok:
        return Scored(record, item, None, None)
    if settings.select == "correct" and record["pred"] != record["label"]:
        return Scored(record, item, None, None, excluded=True)
    model_size = engine.checkpoint.image_size
    data = read_labelme(item.annotation)
    annotation = annotation_mask(
        data, result.orig_size, settings.resolution, model_size, path=item.annotation, region=settings.region
    )
    size, mask = annotation.mask.shape, annotation.mask
    metrics, sweeps = {}, {}
    maps = [(name, lambda raw=raw: upsample_cam(raw, size)) for name, raw in result.maps.items()]
    maps += [(name, lambda name=name: baseline_map(name, size, result.model_pixels)) for name in settings.baselines]
    for name, make in maps:
        scores = score_map(make(), mask, thresholds[name], sweep=SWEEP_THRESHOLDS if sweep else ())
        sweeps[name] = {key: scores.pop(key, None) for key in SWEEPS}
        metrics[name] = scores
    record["metrics"] = metrics
    record.update(region_used=annotation.region_used, lesions=annotation.lesions)
    if result.warnings or annotation.warnings:
        record["warnings"] = [*result.warnings, *annotation.warnings]
    if overlay is not None and result.thumbnail is not None:
        folder, name = overlay
        small = result.thumbnail.shape[:2]
        shown = result.maps.get(name)
        if shown is None:  # a baseline as the reference
            shown = baseline_map(name, small, result.model_pixels)
        outline = rasterize_annotation(
            data, *result.orig_size, path=item.annotation, draw_size=small, region=settings.region
        ).mask
        save_overlay(folder, item.image_id, result.thumbnail, shown, outline)
        result.thumbnail = None
    return Scored(record, item, result.maps, sweeps if sweep else None)


def tuning_records(engine: Engine, settings: CompareSettings, names: list[str], shard: Shard, cache) -> list[dict]:
    """The shard's share of the val subset scored for tuning: {position, sweeps: {name: IoU per threshold}}."""
    val_items, _ = load_tuning_items(settings, engine.class_names)
    chosen = shard.take(with_positions(val_items), settings.batch_size)
    scored = explain_and_score(
        engine,
        [item for _, item in chosen],
        lambda result: score_configurations(result, engine, settings, dict.fromkeys(names, 0.5), sweep=True),
        lambda result, reason: failed_image(result, engine.class_names, reason),
        target=settings.target,
        quiet=settings.quiet,
        description="tuning on val",
        cache=cache,
    )
    return [
        {"position": position, "sweeps": {name: s.sweeps[name]["sweep"] for name in names}}
        for (position, _), s in zip(chosen, scored, strict=True)
        if s.sweeps is not None
    ]


def tune(val: list[dict], settings: CompareSettings, names: list[str]) -> tuple[dict, dict]:
    """Each configuration's sweep threshold with the highest mean IoU on the val records — never on the images it
    scores (CheXlocalize tunes per task the same way). Returns (thresholds, tuning info)."""
    usable = sorted(val, key=lambda v: v["position"])
    if not usable:
        manifest = manifest_path(settings.splits_dir, settings.split, "val")
        raise UsageError(f"--threshold: no usable annotated image in {manifest} to tune on")
    thresholds, best_iou = {}, {}
    for name in names:
        means = np.mean([v["sweeps"][name] for v in usable], axis=0)
        best = int(np.argmax(means))  # the lowest threshold among equals
        thresholds[name], best_iou[name] = SWEEP_THRESHOLDS[best], float(means[best])
    info = {"tuned_on": f"{settings.split}/val", "images": len(usable), "mean_iou_on_val": best_iou}
    return thresholds, info


def _values(records: list[dict], name: str, metric: str) -> list[float | None]:
    values = [r["metrics"][name][metric] for r in records]
    return [None if v is None else float(v) for v in values]


def summarize(records: list[dict], names: list[str]) -> dict:
    """{name: {metric: {mean, ci95}}}; the energy pointing game also as a multiple of chance (`x_chance`): the
    uniform map's energy pointing game is the mask's area fraction, so chance is the mean mask area."""
    chance = mean_ci(_values(records, names[0], "mask_area"))["mean"] if records else None
    summary = {}
    for name in names:
        summary[name] = {metric: mean_ci(_values(records, name, metric)) for metric in METRICS}
        energy = summary[name]["energy_pointing_game"]
        energy["x_chance"] = energy["mean"] / chance if energy["mean"] is not None and chance else None
    return summary


BREAKDOWN_METRICS = ("iou", "pointing_game", "pxap")


def breakdowns(records: list[dict], names: list[str]) -> dict:
    """{grouping: {group: {name: {metric: {mean, ci95}}, count}}} for IoU, pointing game and PxAP: by true class,
    correct vs missed, subtype, lesion size, centre, view, body region and image size (as annotate-iou's)."""

    def summarise(rows):
        body = {name: {m: mean_ci(_values(rows, name, m)) for m in BREAKDOWN_METRICS} for name in names}
        return {"count": len(rows), "configurations": body}

    return group_breakdowns(records, summarise, lambda r: r["metrics"][names[0]]["mask_area"])


def paired_differences(records: list[dict], names: list[str], reference: str) -> dict:
    """{name: {metric: {difference, ci95, excludes_zero}}} of name − reference over the same images."""
    return {
        name: {
            metric: paired_bootstrap(_values(records, name, metric), _values(records, reference, metric))
            for metric in PAIRED_METRICS
        }
        for name in names
        if name != reference
    }


def rank(summary: dict, metric: str) -> list[str]:
    """Names by mean `metric`, best first (ties by name; no value last)."""
    return sorted(summary, key=lambda n: (summary[n][metric]["mean"] is None, -(summary[n][metric]["mean"] or 0), n))


def figure_candidates(records: list[dict], settings: CompareSettings) -> list[dict]:
    """The `--top` most confident correctly classified evaluated records (ties by image id): the grid's rows — and,
    per shard, the only ones whose maps a part keeps."""
    correct = [r for r in records if r["metrics"] is not None and r["pred"] == r["label"]]
    return sorted(correct, key=lambda r: (-r["confidence"], r["image_id"]))[: settings.top]


def _grid_rows(records: list[dict], part: Part, columns: list[str], settings: CompareSettings) -> list[dict]:
    """The grid's images, re-read for drawing only, with each column's map at the thumbnail's size."""
    context = part.context
    names = [c["name"] for c in context["configurations"]]
    items = {item.image_id: item for item in load_split(settings, context["checkpoint"]["class_names"])}
    candidates = []
    for record in figure_candidates(records, settings):
        maps = {name: part.arrays[f"map_{record['position']}_{j}"] for j, name in enumerate(names)
                if f"map_{record['position']}_{j}" in part.arrays}  # fmt: skip
        candidates.append(Scored(record, items[record["image_id"]], maps, None))
    rows = []
    drawn = reread_most_confident(candidates, settings.top, settings.quiet, "the grid", GRID_LONG_SIDE, settings.region)
    for s, small, mask in drawn:
        panels = []
        for name in columns:
            if name in s.maps:
                shown = upsample_cam(s.maps[name], small.shape[:2])
            else:
                shown = baseline_map(name, small.shape[:2], resize_for_model(small, context["image_size"]))
            panels.append({"name": name, "map": shown, "pxap": s.record["metrics"][name]["pxap"]})
        title = f"{s.item.image_id}\n{s.record['label']} p={s.record['confidence']:.2f}"
        rows.append({"pixels": small, "mask": mask, "panels": panels, "title": title})
    return rows


def make_engine(settings: CompareSettings) -> Engine:
    """The engine of every configuration `--methods` × `--layers` asks for (repeats and costs noted on stderr)."""
    checkpoint = open_checkpoint(settings)
    layers = "auto" if settings.layers == "auto" else settings.layers
    configs, notes = resolve_configurations(settings.methods, layers, checkpoint)
    for note in notes:
        warn(note, settings.quiet)
    option = "--layers" if layers != "auto" else "the layers chosen automatically (auto)"
    return open_engine(settings, checkpoint, configs, layer_option=option)


SWEEPS = ("sweep", "sweep_dice", "sweep_cam_area")


def examine(settings: CompareSettings, engine: Engine, outputs, shard: Shard = WHOLE) -> Part:
    """Score every configuration and baseline on the shard's annotated images (the reference's overlays drawn as
    it goes): the part `finish` summarises."""
    configs = engine.configs
    names = [c.name for c in configs] + list(settings.baselines)
    default = f"{settings.method}@{engine.checkpoint.target_layer_name}"
    reference, notes = resolve_reference(settings.reference, default, engine.checkpoint, names)
    for note in notes:
        warn(note, settings.quiet)
    items = load_split(settings, engine.class_names)
    cache = open_cache(settings, engine)
    tuning = settings.threshold == "tune"
    val = tuning_records(engine, settings, names, shard, cache) if tuning else []
    thresholds = dict.fromkeys(names, 0.5 if tuning else settings.threshold)  # tune: filled in from the sweeps
    chosen = shard.take(with_positions(annotated(items)), settings.batch_size)
    overlay = (outputs.path(overlay_folder("compare", reference)), reference) if settings.images else None
    scored = explain_and_score(
        engine,
        [item for _, item in chosen],
        lambda result: score_configurations(result, engine, settings, thresholds, sweep=tuning, overlay=overlay),
        lambda result, reason: failed_image(result, engine.class_names, reason),
        target=settings.target,
        quiet=settings.quiet,
        description=f"comparing {len(names)} configurations",
        thumbnail=OVERLAY_LONG_SIDE if overlay else None,
        cache=cache,
    )
    records = [{**s.record, "position": p, "excluded": s.excluded} for (p, _), s in zip(chosen, scored, strict=True)]
    arrays = {}
    if tuning:  # every configuration's IoU, Dice and CAM area at each sweep threshold, a row per record
        empty = np.full((len(SWEEP_THRESHOLDS),), np.nan)
        for j, name in enumerate(names):
            for key in SWEEPS:
                rows = [s.sweeps[name][key] if s.sweeps else empty for s in scored]
                arrays[f"r_{key}_{j}"] = np.asarray(rows, np.float64).reshape(len(scored), len(SWEEP_THRESHOLDS))
    candidates = {r["position"] for r in figure_candidates([r for r in records if not r["excluded"]], settings)}
    for record, s in zip(records, scored, strict=True):  # the shard's grid candidates' maps
        if record["position"] in candidates and s.maps is not None:
            for j, config in enumerate(configs):
                arrays[f"map_{record['position']}_{j}"] = s.maps[config.name]
    context = {
        "checkpoint": checkpoint_info(engine),
        "configurations": [
            {"name": c.name, "method": c.method, "layer": c.layer, "grid": list(engine.grids[c.layer])} for c in configs
        ],
        "reference": reference,
        "image_size": engine.checkpoint.image_size,
        "images_in_split": len(items),
        "annotated_images": len(annotated(items)),
    }
    return Part("compare", settings.part_settings(), context, records, arrays, {"val": val}, shard)


def finish(part: Part, settings: CompareSettings, outputs) -> CompareOutcome:
    """The report of a part — one run's, or the shards' joined — with its figures: a pure function of the part."""
    context = part.context
    configs = context["configurations"]
    names = [c["name"] for c in configs] + list(settings.baselines)
    reference = context["reference"]
    if settings.threshold == "tune":
        thresholds, tuning = tune(part.extra.get("val", []), settings, names)
    else:
        thresholds, tuning = dict.fromkeys(names, settings.threshold), None
    records = [dict(r) for r in part.records]
    if tuning:  # each configuration's threshold-dependent metrics at its tuned threshold, from its sweep
        for i, record in enumerate(records):
            if record["metrics"] is None:
                continue
            record["metrics"] = {name: dict(values) for name, values in record["metrics"].items()}
            for j, name in enumerate(names):
                at = SWEEP_THRESHOLDS.index(thresholds[name])
                record["metrics"][name].update(
                    iou=float(part.arrays[f"r_sweep_{j}"][i, at]),
                    dice=float(part.arrays[f"r_sweep_dice_{j}"][i, at]),
                    cam_area=float(part.arrays[f"r_sweep_cam_area_{j}"][i, at]),
                )
    failed = [_public(r) for r in records if r["error"] is not None]
    kept = [r for r in records if r["error"] is None and not r["excluded"]]
    evaluated = [_public(r) for r in kept]
    summary = summarize(evaluated, names)
    ranking = rank(summary, settings.rank_by)
    report = {
        "schema_version": SCHEMA_VERSION,
        "command": "compare",
        "settings": {
            "split": settings.split,
            "subset": settings.subset,
            "methods": settings.methods,
            "layers": settings.layers,
            "baselines": settings.baselines,
            "target": settings.target,
            "select": settings.select,
            "resolution": settings.resolution,
            "region": settings.region,
            "threshold": settings.threshold,
            "rank_by": settings.rank_by,
            "data_root": str(settings.data_root),
            "splits_dir": str(settings.splits_dir),
        },
        "checkpoint": context["checkpoint"],
        "configurations": configs
        + [{"name": b, "method": None, "layer": None, "grid": None} for b in settings.baselines],
        "reference": reference,
        "threshold": {
            "mode": settings.threshold if isinstance(settings.threshold, str) else "fixed",
            "value": settings.threshold if isinstance(settings.threshold, float) else None,
            "tuning": tuning,
        },
        "thresholds": thresholds if tuning else None,
        "images_in_split": context["images_in_split"],
        "annotated_images": context["annotated_images"],
        "evaluated": len(evaluated),
        "excluded_by_select": sum(1 for r in records if r["error"] is None and r["excluded"]),
        "summary": summary,
        "paired": paired_differences(evaluated, names, reference) if evaluated else {},
        "ranking": ranking,
        "breakdowns": breakdowns(evaluated, names) if evaluated else {},
        "records": evaluated,
        "failed": failed,
    }
    text = write_report(report, outputs.path(COMPARISON_REPORT))
    if context["annotated_images"]:
        forest_plot(report, FOREST_METRICS, outputs.path(FOREST_NAME))
        cams = [n for n in ranking if n != reference and n not in settings.baselines][:GRID_CONFIGURATIONS]
        columns = [reference, *cams] + (["centre"] if "centre" in names and reference != "centre" else [])
        comparison_grid(_grid_rows(kept, part, columns, settings), columns, outputs.path(GRID_NAME))
    show(comparison_table(report, settings.rank_by), settings.quiet)
    return CompareOutcome(report, text, len(failed), empty=not context["annotated_images"])


def _baseline_row(name: str) -> dict:
    return {"name": name, "method": None, "layer": None, "grid": None}


def _public(record: dict) -> dict:
    """A record as the report holds it (without its place in the run)."""
    return {k: v for k, v in record.items() if k not in ("position", "excluded")}


def run_compare(settings: CompareSettings) -> CompareOutcome:
    """One run: examine every image (or this shard's, for `merge`; or every shard on Ray), then finish."""
    return complete("compare", settings, output_folder(settings))
