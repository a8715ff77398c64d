"""`btxrd-cam gallery`: per-class grids of true positives, false positives and false negatives with CAMs.

Explain the split once, then select and draw: only the selected images are re-read at full size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from btxrd_cam.console import warn
from btxrd_cam.data import load_image
from btxrd_cam.engine import Explanation
from btxrd_cam.errors import UsageError, per_image
from btxrd_cam.labelme import rasterize_annotation
from btxrd_cam.outputs import GALLERY_REPORT, output_folder, safe_name
from btxrd_cam.pipeline import (
    checkpoint_info,
    explain_items,
    failure_record,
    load_split,
    open_cache,
    open_engine,
)
from btxrd_cam.render import Cell, gallery_figure, thumbnail_overlay
from btxrd_cam.reports import SCHEMA_VERSION, write_report
from btxrd_cam.settings import GallerySettings

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


def _thumbnail(result: Explanation, quiet: bool, region: str) -> np.ndarray | None:
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


def run_gallery(settings: GallerySettings) -> GalleryOutcome:
    outputs = output_folder(settings)
    engine = open_engine(settings)
    names = engine.class_names
    items = load_split(settings, names)
    if not items:
        raise UsageError(f"--split: the {settings.split}/{settings.subset} split has no images")
    cache = open_cache(settings, engine)
    results = explain_items(
        engine, items, target=settings.target, quiet=settings.quiet, description="explaining", cache=cache
    )
    for result in results:
        if result.ok and result.item.label is None:
            result.error = "no label for this image in the manifest or dataset.csv"
    ok = [r for r in results if r.ok]
    failed = [failure_record(r.item.image_id, r.item.path, r.error) for r in results if not r.ok]
    labels = np.array([names.index(r.item.label) for r in ok], dtype=int)
    preds = np.array([r.pred for r in ok], dtype=int)
    probs = np.array([r.probs for r in ok], dtype=np.float64).reshape(len(ok), len(names))
    ids = [r.item.image_id for r in ok]
    thumbnails: dict[int, np.ndarray | None] = {}  # an image may appear in several galleries: read it once
    classes = {}
    for c, name in enumerate(names):
        chosen, counts = select_examples(labels, preds, probs, ids, c, settings.k)
        filename = f"gallery_{safe_name(name)}.{settings.format}"  # a class name is no path
        rows, selected = {}, {}
        for category in CATEGORIES:
            cells, entries = [], []
            for i in chosen[category]:
                if i not in thumbnails:
                    thumbnails[i] = _thumbnail(ok[i], settings.quiet, settings.region)
                result = ok[i]
                entries.append(
                    {
                        "image_id": result.item.image_id,
                        "path": str(result.item.path),
                        "label": result.item.label,
                        "pred": names[result.pred],
                        "target": names[result.target],
                        f"p_{name}": float(probs[i, c]),
                        "probs": {n: float(p) for n, p in zip(names, result.probs, strict=True)},
                        "file": filename,
                    }
                )
                if thumbnails[i] is not None:
                    title = f"{result.item.image_id}\n{result.item.label} → {names[result.pred]}  p={probs[i, c]:.2f}"
                    cells.append(Cell(thumbnails[i], title))
            rows[ROW_LABELS[category]] = cells
            selected[category] = entries
        title = (
            f"{name} — {settings.split}/{settings.subset} — {settings.method} — {engine.checkpoint.name}\n"
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
        "checkpoint": checkpoint_info(engine),
        "images": len(items),
        "explained": len(ok),
        "classes": classes,
        "failed": failed,
    }
    text = write_report(report, outputs.path(GALLERY_REPORT))
    return GalleryOutcome(report, text, len(failed))
