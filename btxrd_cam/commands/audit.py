"""`btxrd-cam audit`: the data set itself, no model — what a classifier could learn besides the lesion.

Per subset of a split: counts by class × centre, view and body region; image sizes (megapixels, aspect) per class
and centre, read from the files' headers (nothing is decoded: all of BTXRD takes seconds); annotation coverage
(tumour images without a file, normal images with one, several lesions, rectangle-only files, labels that are not
the image's subtype); lesion areas per class. Then the cues that are not the lesion: how well image size, aspect
ratio, centre and view predict the class, alone and together (a cross-validated logistic regression, macro
one-vs-rest AUC with a bootstrap CI), with a warning when one exceeds 0.70 — the shortcut Zech et al. (2018) found
in chest radiographs, where the hospital alone predicted the finding.

Not for: anything about a model (the other commands).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from btxrd_cam.console import show, warn
from btxrd_cam.data import SUBSETS, ImageItem, image_size, manifest_path, read_metadata, split_items
from btxrd_cam.errors import UsageError, per_image
from btxrd_cam.labelme import OUTLINE_SHAPES, rasterize_annotation, read_labelme
from btxrd_cam.outputs import AUDIT_REPORT, output_folder
from btxrd_cam.reports import SCHEMA_VERSION, write_report
from btxrd_cam.settings import AuditSettings
from btxrd_cam.statistics import cue_auc, describe

FIGURE_NAME = "audit.png"
CUE_WARNING = 0.70
AREA_RESOLUTION = 512  # lesion areas are measured with the outline drawn at this long side (as scoring does)
EXAMPLES = 10  # ids listed per annotation finding


@dataclass
class AuditedImage:
    """What the audit reads of one image: its split entry, header size and annotation summary."""

    item: ImageItem
    subset: str
    size: tuple[int, int] | None = None
    outlines: int = 0
    rectangles: int = 0
    labels: tuple[str, ...] = ()
    lesion_area: float | None = None
    annotation_error: str | None = None
    error: str | None = None

    @property
    def megapixels(self) -> float | None:
        return self.size[0] * self.size[1] / 1e6 if self.size else None

    @property
    def aspect(self) -> float | None:
        return self.size[0] / self.size[1] if self.size else None


def _dataset_items(data_root: Path) -> list[ImageItem]:
    """Every image of dataset.csv (for `--split dataset`), with its annotation when there is one."""
    from btxrd_cam.data import resolve_image

    items = []
    for stem, meta in sorted(read_metadata(data_root).items()):
        annotation = data_root / "Annotations" / f"{stem}.json"
        items.append(
            ImageItem(
                image_id=stem,
                path=resolve_image(data_root / "images", meta.image_id),
                label=meta.label,
                annotation=annotation if annotation.is_file() else None,
                subtype=meta.subtype,
                center=meta.center,
                view=meta.view,
                body_region=meta.body_region,
            )
        )
    return items


def split_membership(settings: AuditSettings) -> tuple[dict[str, list[ImageItem]], list[str]]:
    """{subset: items} of the split (the subsets asked for that have a manifest), and notes for those missing."""
    if settings.split == "dataset":
        items = _dataset_items(settings.data_root)
        if not items:
            raise UsageError(f"--split: dataset has no rows in {settings.data_root / 'dataset.csv'} (or .xlsx)")
        return {"dataset": items}, []
    wanted = SUBSETS if settings.subset == "all" else (settings.subset,)
    subsets, notes = {}, []
    for subset in wanted:
        manifest = manifest_path(settings.splits_dir, settings.split, subset)
        if manifest.is_file():
            subsets[subset] = split_items(settings.data_root, manifest)
        else:
            notes.append(f"{manifest} does not exist: subset {subset} left out")
        if settings.split not in ("stratified", "center"):
            break  # a manifest path names one subset
    if not subsets:
        raise UsageError(f"--split: no manifest of the {settings.split} split in {settings.splits_dir}")
    return subsets, notes


def read_image(item: ImageItem, subset: str, region: str) -> AuditedImage:
    """The header size and annotation summary of one image; failures are recorded, never raised."""
    audited = AuditedImage(item, subset)

    def size():
        audited.size = image_size(item.path)

    per_image(size, lambda reason: setattr(audited, "error", reason), item.path)
    if item.annotation is None:
        return audited

    def annotation():
        data = read_labelme(item.annotation)
        shapes = [s for s in data["shapes"] if isinstance(s, dict)]
        kinds = [(s.get("shape_type") or "polygon") for s in shapes]
        audited.outlines = sum(kind in OUTLINE_SHAPES for kind in kinds)
        audited.rectangles = sum(kind == "rectangle" for kind in kinds)
        audited.labels = tuple(sorted({str(s.get("label") or "").strip().lower() for s in shapes}))
        if audited.size is not None:
            height, width = audited.size
            scale = min(1.0, AREA_RESOLUTION / max(height, width))
            draw = (max(1, round(height * scale)), max(1, round(width * scale)))
            mask = rasterize_annotation(data, *audited.size, path=item.annotation, draw_size=draw, region=region).mask
            audited.lesion_area = float(mask.mean())

    per_image(annotation, lambda reason: setattr(audited, "annotation_error", reason), item.annotation)
    return audited


def _counts(images: list[AuditedImage], key) -> dict:
    """{class: {value: count}} (values `unknown` when missing), classes and values sorted."""
    table: dict[str, Counter] = defaultdict(Counter)
    for image in images:
        value = key(image.item)
        table[str(image.item.label)][str(value) if value is not None else "unknown"] += 1
    return {label: dict(sorted(counter.items())) for label, counter in sorted(table.items())}


def subset_counts(images: list[AuditedImage]) -> dict:
    return {
        "images": len(images),
        "class": dict(sorted(Counter(str(i.item.label) for i in images).items())),
        "class_by_centre": _counts(images, lambda item: item.center),
        "class_by_view": _counts(images, lambda item: item.view),
        "class_by_body_region": _counts(images, lambda item: item.body_region),
    }


def _by(images: list[AuditedImage], group, value) -> dict:
    groups: dict[str, list] = defaultdict(list)
    for image in images:
        name = group(image)
        groups[str(name) if name is not None else "unknown"].append(value(image))
    return {name: describe(values) for name, values in sorted(groups.items())}


def sizes(images: list[AuditedImage]) -> dict:
    """Megapixels and aspect (height / width) per class and per centre."""
    return {
        measure: {
            "by_class": _by(images, lambda i: i.item.label, read),
            "by_centre": _by(images, lambda i: i.item.center, read),
            "all": describe(read(i) for i in images),
        }
        for measure, read in (("megapixels", lambda i: i.megapixels), ("aspect", lambda i: i.aspect))
    }


def annotation_coverage(images: list[AuditedImage]) -> dict:
    """How the annotations cover the images (BTXRD: one polygon and one rectangle per lesion, tumours only)."""
    findings: dict[str, list[str]] = {
        "tumour_without_file": [],
        "normal_with_file": [],
        "several_lesions": [],
        "rectangle_only": [],
        "outline_without_rectangle": [],
        "rectangles_differ_from_outlines": [],
        "label_not_subtype": [],
        "unreadable": [],
    }
    files = 0
    for image in images:
        item = image.item
        tumour = item.label not in (None, "Normal")
        if item.annotation is None:
            if tumour:
                findings["tumour_without_file"].append(item.image_id)
            continue
        files += 1
        if not tumour:
            findings["normal_with_file"].append(item.image_id)
        if image.annotation_error:
            findings["unreadable"].append(item.image_id)
            continue
        if max(image.outlines, image.rectangles) > 1:
            findings["several_lesions"].append(item.image_id)
        if image.outlines == 0 and image.rectangles > 0:
            findings["rectangle_only"].append(item.image_id)
        elif image.outlines > 0 and image.rectangles == 0:
            findings["outline_without_rectangle"].append(item.image_id)
        elif image.outlines != image.rectangles:
            findings["rectangles_differ_from_outlines"].append(item.image_id)
        if item.subtype and any(label != item.subtype for label in image.labels):
            findings["label_not_subtype"].append(item.image_id)
    labels = Counter(label for image in images for label in image.labels)
    return {
        "tumour_images": sum(i.item.label not in (None, "Normal") for i in images),
        "files": files,
        **{name: len(ids) for name, ids in findings.items()},
        "labels": dict(sorted(labels.items())),
        "examples": {name: sorted(ids)[:EXAMPLES] for name, ids in findings.items() if ids},
    }


def _one_hot(values: list[str | None]) -> np.ndarray:
    names = sorted({str(v) for v in values})
    return np.asarray([[float(str(v) == name) for name in names] for v in values], dtype=float).reshape(len(values), -1)


def cues(images: list[AuditedImage], seed: int) -> dict:
    """{cue: {auc, ci95, folds}}: how well each non-lesion cue predicts the class, alone and together."""
    usable = [i for i in images if i.size is not None and i.item.label is not None]
    if not usable:
        return {}
    labels_named = sorted({i.item.label for i in usable})
    labels = np.asarray([labels_named.index(i.item.label) for i in usable])
    features = {
        "image size": np.log([[i.megapixels] for i in usable]),
        "aspect ratio": np.log([[i.aspect] for i in usable]),
        "centre": _one_hot([i.item.center for i in usable]),
        "view": _one_hot([i.item.view for i in usable]),
    }
    result = {name: cue_auc(values, labels, seed) for name, values in features.items()}
    result["together"] = cue_auc(np.hstack(list(features.values())), labels, seed)
    return result


def cue_warnings(found: dict) -> list[str]:
    """A warning for each cue that predicts the class better than AUC 0.70."""
    messages = []
    for name, body in found.items():
        auc = body.get("auc")
        if auc is None or auc <= CUE_WARNING:
            continue
        if name == "together":
            what = "image size, aspect ratio, centre and view together predict"
        else:
            what = f"{name} alone predicts"
        messages.append(f"{what} the class (AUC {auc:.2f}): check that the model does not use it")
    return messages


def run_audit(settings: AuditSettings) -> tuple[dict, str, int]:
    from btxrd_cam.render import audit_figure

    outputs = output_folder(settings)
    subsets, notes = split_membership(settings)
    for note in notes:
        warn(note, settings.quiet)
    audited = {name: [read_image(item, name, settings.region) for item in items] for name, items in subsets.items()}
    everything = [image for images in audited.values() for image in images]
    failed = [{"image_id": i.item.image_id, "path": str(i.item.path), "error": i.error} for i in everything if i.error]
    failed += [
        {"image_id": i.item.image_id, "path": str(i.item.annotation), "error": i.annotation_error}
        for i in everything
        if i.annotation_error
    ]
    counts = {name: subset_counts(images) for name, images in audited.items()}
    if len(audited) > 1:
        counts["all"] = subset_counts(everything)
    found = cues(everything, settings.seed)
    messages = cue_warnings(found)
    coverage = annotation_coverage(everything)
    if coverage["tumour_without_file"]:
        messages.append(f"{coverage['tumour_without_file']} tumour image(s) have no annotation file")
    if coverage["normal_with_file"]:
        messages.append(f"{coverage['normal_with_file']} normal image(s) have an annotation file")
    areas = [i for i in everything if i.lesion_area is not None]
    report = {
        "schema_version": SCHEMA_VERSION,
        "command": "audit",
        "settings": {
            "split": settings.split,
            "subset": settings.subset,
            "region": settings.region,
            "seed": settings.seed,
            "data_root": str(settings.data_root),
            "splits_dir": str(settings.splits_dir),
        },
        "images": len(everything),
        "counts": counts,
        "sizes": sizes([i for i in everything if i.size is not None]),
        "annotations": coverage,
        "lesion_area": {
            "by_class": _by(areas, lambda i: i.item.label, lambda i: i.lesion_area),
            "all": describe(i.lesion_area for i in areas),
        },
        "cues": found,
        "warnings": messages,
        "notes": notes,
        "failed": failed,
    }
    text = write_report(report, outputs.path(AUDIT_REPORT))
    audit_figure(report, everything, outputs.path(FIGURE_NAME))
    show(audit_tables(report), settings.quiet)
    for message in messages:
        warn(message, settings.quiet)
    return report, text, len(failed)


def audit_tables(report: dict):
    """Counts by class × centre / view / body region, sizes by class and the cues, as rich tables."""
    from rich.console import Group
    from rich.table import Table

    counts = report["counts"].get("all") or next(iter(report["counts"].values()))
    tables = []
    for key, label in (("class_by_centre", "centre"), ("class_by_view", "view"), ("class_by_body_region", "region")):
        values = sorted({v for row in counts[key].values() for v in row})
        table = Table(title=f"images by class × {label} ({counts['images']} images)")
        table.add_column("class")
        for value in values:
            table.add_column(value, justify="right")
        for name, row in counts[key].items():
            table.add_row(name, *(str(row.get(v, 0)) for v in values))
        tables.append(table)
    table = Table(title="image size by class (megapixels)")
    for column in ("class", "n", "median", "IQR", "min", "max"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, row in report["sizes"]["megapixels"]["by_class"].items():
        table.add_row(name, str(row["count"]), *(_num(row[k]) for k in ("median", "iqr", "min", "max")))
    tables.append(table)
    table = Table(title="cues that are not the lesion: how well each predicts the class", caption="cross-validated "
                  "logistic regression, macro one-vs-rest AUC (0.5: chance)")  # fmt: skip
    for column in ("cue", "AUC", "95% CI"):
        table.add_column(column, justify="left" if column == "cue" else "right")
    for name, body in report["cues"].items():
        ci = body.get("ci95")
        style = "red" if body.get("auc") is not None and body["auc"] > CUE_WARNING else None
        table.add_row(name, _num(body.get("auc")), f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "—", style=style)
    tables.append(table)
    return Group(*tables)


def _num(value) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
