"""`btxrd-cam gallery`: per-class grids of true positives, false positives and false negatives with CAMs.

Explain the split once, then select and draw: only the selected images are re-read at full size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from btxrd_cam.console import warn
from btxrd_cam.data import load_image
from btxrd_cam.engine import Engine
from btxrd_cam.errors import UsageError, per_image
from btxrd_cam.labelme import rasterize_annotation
from btxrd_cam.outputs import GALLERY_REPORT, output_folder, safe_name
from btxrd_cam.pipeline import (
    checkpoint_info,
    complete,
    explain_items,
    failure_record,
    load_split,
    open_cache,
    open_engine,
    with_positions,
)
from btxrd_cam.render import Cell, gallery_figure, thumbnail_overlay
from btxrd_cam.reports import SCHEMA_VERSION, write_report
from btxrd_cam.settings import GallerySettings
from btxrd_cam.shards import WHOLE, Part, Shard

CATEGORIES = ("TP", "FP", "FN")
ROW_LABELS = {"TP": "true positives", "FP": "false positives", "FN": "false negatives"}
THUMBNAIL_LONG_SIDE = 480


@dataclass
class GalleryOutcome:
    report: dict
    text: str
    failed: int


def select_examples(
    labels: np.ndarray, preds: np.ndarray, probs: np.ndarray, image_ids: list[str], c: int, k: int
) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Indices of the k examples per category for class c, and the full category counts.

    TP: true c, predicted c, by p[c] descending. FP: true ≠ c, predicted c, by p[c] descending (most confident
    mistakes). FN: true c, predicted ≠ c, by p[c] ascending (worst misses). Ties break by image_id.
    """
    index = range(len(labels))
    tp = sorted((i for i in index if labels[i] == c and preds[i] == c), key=lambda i: (-probs[i, c], image_ids[i]))
    fp = sorted((i for i in index if labels[i] != c and preds[i] == c), key=lambda i: (-probs[i, c], image_ids[i]))
    fn = sorted((i for i in index if labels[i] == c and preds[i] != c), key=lambda i: (probs[i, c], image_ids[i]))
    full = {"TP": tp, "FP": fp, "FN": fn}
    return {name: rows[:k] for name, rows in full.items()}, {name: len(rows) for name, rows in full.items()}


def _thumbnail(result, quiet: bool, region: str) -> np.ndarray | None:
    """The overlay thumbnail (with the annotation outline where one exists); None, with a warning, when the image
    cannot be read again; drawn without its outline when the annotation cannot be used."""

    def outline(size) -> np.ndarray | None:
        if result.item.annotation is None:
            return None
        path = result.item.annotation
        warned = lambda reason: warn(f"{reason} (drawn without its outline)", quiet)  # noqa: E731
        return per_image(lambda: rasterize_annotation(path, *size, region=region).mask, warned, path)

    def draw():
        pixels, size = load_image(result.item.path)
        return thumbnail_overlay(pixels, result.cam, outline(size), 0.4, THUMBNAIL_LONG_SIDE)

    return per_image(draw, lambda reason: warn(f"{reason} (left out of the gallery)", quiet), result.item.path)


def make_engine(settings: GallerySettings) -> Engine:
    return open_engine(settings)


def _selections(records: list[dict], names: list[str], k: int) -> tuple[list[dict], dict]:
    """The records that can be selected (explained, labelled) and, per class, the selection and the counts."""
    ok = [r for r in records if r["error"] is None]
    labels = np.array([names.index(r["label"]) for r in ok], dtype=int)
    preds = np.array([r["pred"] for r in ok], dtype=int)
    probs = np.array([r["probs"] for r in ok], dtype=np.float64).reshape(len(ok), len(names))
    ids = [r["image_id"] for r in ok]
    return ok, {c: select_examples(labels, preds, probs, ids, c, k) for c in range(len(names))}


def examine(settings: GallerySettings, engine: Engine, outputs, shard: Shard = WHOLE) -> Part:
    """Explain the shard's images: a record each, and the maps of the images the shard itself would select (the
    gallery's cells are among them, whichever shards the others are in)."""
    names = engine.class_names
    items = load_split(settings, names)
    if not items:
        raise UsageError(f"--split: the {settings.split}/{settings.subset} split has no images")
    chosen = shard.take(with_positions(items), settings.batch_size)
    results = explain_items(
        engine,
        [item for _, item in chosen],
        target=settings.target,
        quiet=settings.quiet,
        description="explaining",
        cache=open_cache(settings, engine),
    )
    records, maps = [], {}
    for (position, item), result in zip(chosen, results, strict=True):
        error = result.error
        if result.ok and item.label is None:
            error = "no label for this image in the manifest or dataset.csv"
        explained = result.ok and error is None
        records.append(
            {
                "position": position,
                "image_id": item.image_id,
                "path": str(item.path),
                "label": item.label,
                "pred": result.pred if explained else None,
                "target": result.target if explained else None,
                "probs": [float(p) for p in result.probs] if explained else None,
                "error": error,
            }
        )
        if explained:
            maps[position] = result.cam
    ok, selections = _selections(records, names, settings.k)
    wanted = {ok[i]["position"] for chosen_, _ in selections.values() for rows in chosen_.values() for i in rows}
    arrays = {f"cam_{position}": maps[position] for position in sorted(wanted)}
    context = {"checkpoint": checkpoint_info(engine), "images": len(items)}
    return Part("gallery", settings.part_settings(), context, records, arrays, {}, shard)


def finish(part: Part, settings: GallerySettings, outputs) -> GalleryOutcome:
    """The galleries and their report from a part — one run's, or the shards' joined."""
    context = part.context
    names = context["checkpoint"]["class_names"]
    ok, selections = _selections(part.records, names, settings.k)
    failed = [failure_record(r["image_id"], r["path"], r["error"]) for r in part.records if r["error"] is not None]
    items = {item.image_id: item for item in load_split(settings, names)}
    thumbnails: dict[int, np.ndarray | None] = {}  # an image may appear in several galleries: read it once
    classes = {}
    for c, name in enumerate(names):
        chosen, counts = selections[c]
        filename = f"gallery_{safe_name(name)}.{settings.format}"  # a class name is no path
        rows, selected = {}, {}
        for category in CATEGORIES:
            cells, entries = [], []
            for i in chosen[category]:
                record = ok[i]
                if i not in thumbnails:
                    shown = _Shown(items[record["image_id"]], part.arrays[f"cam_{record['position']}"])
                    thumbnails[i] = _thumbnail(shown, settings.quiet, settings.region)
                probs = record["probs"]
                entries.append(
                    {
                        "image_id": record["image_id"],
                        "path": record["path"],
                        "label": record["label"],
                        "pred": names[record["pred"]],
                        "target": names[record["target"]],
                        f"p_{name}": float(probs[c]),
                        "probs": {n: float(p) for n, p in zip(names, probs, strict=True)},
                        "file": filename,
                    }
                )
                if thumbnails[i] is not None:
                    title = f"{record['image_id']}\n{record['label']} → {names[record['pred']]}  p={probs[c]:.2f}"
                    cells.append(Cell(thumbnails[i], title))
            rows[ROW_LABELS[category]] = cells
            selected[category] = entries
        title = (
            f"{name} — {settings.split}/{settings.subset} — {settings.method} — {context['checkpoint']['name']}\n"
            f"TP {counts['TP']} · FP {counts['FP']} · FN {counts['FN']}"
        )
        gallery_figure(rows, settings.k, title, outputs.path(filename))
        classes[name] = {"file": filename, "counts": counts, "selected": selected}
    report = {
        "schema_version": SCHEMA_VERSION,
        "command": "gallery",
        "settings": {
            "split": settings.split,
            "subset": settings.subset,
            "k": settings.k,
            "method": settings.method,
            "target": settings.target,
            "format": settings.format,
            "region": settings.region,
            "data_root": str(settings.data_root),
            "splits_dir": str(settings.splits_dir),
        },
        "checkpoint": context["checkpoint"],
        "images": context["images"],
        "explained": len(ok),
        "classes": classes,
        "failed": failed,
    }
    text = write_report(report, outputs.path(GALLERY_REPORT))
    return GalleryOutcome(report, text, len(failed))


@dataclass
class _Shown:
    """What drawing a cell needs of an image: where it is (and its annotation), and its map."""

    item: object
    cam: np.ndarray


def run_gallery(settings: GallerySettings) -> GalleryOutcome:
    """One run: examine every image (or this shard's, for `merge`; or every shard on Ray), then finish."""
    return complete("gallery", settings, output_folder(settings))
