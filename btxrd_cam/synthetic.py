"""Synthetic BTXRD-layout radiographs whose lesions sit exactly where their annotations say.

One drawing serves every synthetic data set the project makes:
- the demo (`btxrd-cam demo`, `cue="lesion"`): the class is the lesion — Benign images carry well-defined lytic
  lesions with a sclerotic rim, Malignant ones an ill-defined mottled lesion with spicules, Normal images none —
  while global intensity statistics are matched between classes and every class carries look-alike distractors
  (rimless lucencies, dense islands, L/R markers);
- the shortcut data set of `evidence`'s known-answer test (`cue="marker"`): the class is written by a marker in a
  corner, and every image carries a lesion whose look is drawn at random, unrelated to the class.

Data sets follow BTXRD's conventions as far as a quick demo allows (the facts are those of BTXRD's `dataset.csv`
and its annotation files): every lesion is annotated twice, one `polygon` and one `rectangle` around it, both
labelled with the subtype; "multiple osteochondromas" files hold several lesions; `imageData` is null; normal
images have no file. Class mix ≈ 50 / 41 / 9 %; lesion areas are log-normal around the class's median (BTXRD:
benign 0.52 %, malignant 3.1 % of the image), with a floor the demo's model can still learn at its resolution
(DEMO_LESION_FLOOR); malignant images are smaller (BTXRD: median 0.57 vs 3.7–4.4 MP); centres, views and body
regions are drawn with BTXRD's frequencies, centre 3 mostly benign. Nothing is tuned to make heatmaps look good.

Not for: training (commands/demo.py) or anything a user runs on real data.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from btxrd_cam.console import progress
from btxrd_cam.data import DATASET_COLUMNS, DEFAULT_CLASS_NAMES, REGION_COLUMNS, VIEW_COLUMNS
from btxrd_cam.labelme import rasterize_annotation

# BTXRD's subtypes and how often each occurs (its dataset.csv), by class
BENIGN_SUBTYPES = {
    "osteochondroma": 754,
    "multiple osteochondromas": 263,
    "simple bone cyst": 206,
    "giant cell tumor": 93,
    "synovial osteochondroma": 50,
    "osteofibroma": 44,
    "other bt": 115,
}
MALIGNANT_SUBTYPES = {"osteosarcoma": 297, "other mt": 45}
MULTIPLE = "multiple osteochondromas"
SITE_REGION = {
    "hand": "upper limb",
    "ulna": "upper limb",
    "radius": "upper limb",
    "humerus": "upper limb",
    "wrist-joint": "upper limb",
    "elbow-joint": "upper limb",
    "shoulder-joint": "upper limb",
    "foot": "lower limb",
    "tibia": "lower limb",
    "fibula": "lower limb",
    "femur": "lower limb",
    "ankle-joint": "lower limb",
    "knee-joint": "lower limb",
    "hip bone": "pelvis",
    "hip-joint": "pelvis",
}
CLASS_MIX = {"Normal": 0.50, "Benign": 0.41, "Malignant": 0.09}  # BTXRD: 1,879 / 1,525 / 342
EQUAL_MIX = {"Normal": 1 / 3, "Benign": 1 / 3, "Malignant": 1 / 3}  # for tests that want every class often
VIEWS = {"frontal": 2181, "lateral": 1269, "oblique": 296}
REGIONS = {"lower limb": 2406, "upper limb": 1124, "pelvis": 216}
# P(centre | class): 2,938 / 549 / 259 images overall, centre 3 is 78 % benign
CENTRES = {"Normal": (0.82, 0.155, 0.025), "Benign": (0.72, 0.15, 0.13), "Malignant": (0.82, 0.155, 0.025)}
# Long sides in pixels by class, scaled down from BTXRD's (median 4.4 / 3.7 / 0.57 MP) to keep the demo quick
DEMO_LONG_SIDE = {"Normal": (760, 1024), "Benign": (700, 1000), "Malignant": (400, 640)}
BTXRD_LONG_SIDE = (1500, 3000)  # BTXRD's own radiographs, for benchmarks at its scale
# Lesion area as a fraction of the image: log-normal median by class (BTXRD: benign 0.52 %, malignant 3.1 %), and
# the smallest the demo draws — the demo's model sees 160 px, where 0.5 % of the image is a 11 x 11 px patch
LESION_MEDIAN = {"Benign": 0.015, "Malignant": 0.031}
LESION_SPREAD = 0.5  # σ of the log-area (BTXRD's p10 is ~15x below its median; the demo stays narrower)
DEMO_LESION_FLOOR = 0.008
LESION_CEILING = 0.12
CUES = ("lesion", "marker")


@dataclass
class SyntheticImage:
    """One synthetic radiograph: pixels uint8 [H, W] and its LabelMe shapes (two per lesion)."""

    image_id: str
    label: str
    subtype: str | None
    center: int
    pixels: np.ndarray
    shapes: list[dict]
    view: str = "frontal"
    site: str = "femur"
    lesion_looks: list[str] = field(default_factory=list)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: random values on a coarse grid, resized up."""
    gh, gw = max(2, int(height / scale)), max(2, int(width / scale))
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _ellipse_points(cx, cy, a, b, angle, n=32) -> list[list[float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ca, sa = math.cos(angle), math.sin(angle)
    xs, ys = a * np.cos(t), b * np.sin(t)
    return [
        [round(float(cx + x * ca - y * sa), 2), round(float(cy + x * sa + y * ca), 2)]
        for x, y in zip(xs, ys, strict=True)
    ]


def _irregular_points(rng, cx, cy, r, n=14) -> list[list[float]]:
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = r * rng.uniform(0.65, 1.25, n)
    radii = (radii + np.roll(radii, 1) + np.roll(radii, -1)) / 3
    return [
        [round(float(cx + q * math.cos(a)), 2), round(float(cy + q * math.sin(a)), 2)]
        for q, a in zip(radii, t, strict=True)
    ]


def _draw_bone(rng, height, width):
    """A long bone along the image's long axis: returns intensity field, bone mask and its geometry."""
    portrait = height >= width
    length, short = (height, width) if portrait else (width, height)
    half_width = short * rng.uniform(0.12, 0.17)
    angle = rng.uniform(-0.2, 0.2)
    centre = np.array([width / 2 + rng.uniform(-0.08, 0.08) * width, height / 2])
    axis = np.array([math.sin(angle), math.cos(angle)]) if portrait else np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-axis[1], axis[0]])
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    rel_x, rel_y = xs - centre[0], ys - centre[1]
    along = rel_x * axis[0] + rel_y * axis[1]
    across = rel_x * normal[0] + rel_y * normal[1]
    ends = np.clip((np.abs(along) - 0.3 * length) / (0.2 * length), 0, 1)  # epiphyses widen
    local_half = half_width * (1 + 0.5 * ends**2)
    inside = np.abs(across) < local_half
    depth = np.clip(local_half - np.abs(across), 0, None)
    cortex = inside & (depth < half_width * rng.uniform(0.25, 0.35))
    field_ = np.zeros((height, width), np.float32)
    field_[inside] = 55
    field_[cortex] = 95
    return field_, inside, centre, axis, normal, half_width, length


def _place_on_bone(rng, centre, axis, normal, half_width, length, spread=0.3):
    t = rng.uniform(-spread, spread) * length
    offset = rng.uniform(-0.35, 0.35) * half_width
    return centre + axis * t + normal * offset


def _shape(label: str, points, shape_type: str) -> dict:
    return {
        "label": label,
        "points": points,
        "group_id": None,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
    }


def _box_around(points: list[list[float]], margin: float) -> list[list[float]]:
    """The rectangle a radiologist draws around an outline: its bounding box and a small margin."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [
        [round(min(xs) - margin, 2), round(min(ys) - margin, 2)],
        [round(max(xs) + margin, 2), round(max(ys) + margin, 2)],
    ]


def lesion_fraction(rng, look: str, floor: float = DEMO_LESION_FLOOR) -> float:
    """A lesion's area as a fraction of the image: log-normal around the look's median, within [floor, ceiling]."""
    median = LESION_MEDIAN["Malignant" if look == "malignant" else "Benign"]
    return float(np.clip(median * math.exp(LESION_SPREAD * rng.standard_normal()), floor, LESION_CEILING))


def _polygon_area(points: list[list[float]]) -> float:
    xy = np.asarray(points, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _scaled_to_area(points: list[list[float]], cx: float, cy: float, area: float) -> list[list[float]]:
    """The outline scaled about (cx, cy) so that it encloses `area` square pixels."""
    factor = math.sqrt(area / max(_polygon_area(points), 1e-9))
    return [[round(cx + (x - cx) * factor, 2), round(cy + (y - cy) * factor, 2)] for x, y in points]


def _draw_lesion(rng, image, look: str, cx: float, cy: float, area: float, subtype: str) -> list[dict]:
    """Draw one lesion of `look` (benign: lytic with a sclerotic rim; malignant: mottled with spicules) enclosing
    `area` square pixels into image (float32 [H, W], in place); returns its two LabelMe shapes, polygon and
    rectangle."""
    height, width = image.shape
    r = math.sqrt(area / math.pi)
    if look == "benign":
        points = _ellipse_points(cx, cy, r, r * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi))
    else:
        points = _irregular_points(rng, cx, cy, r)
    points = _scaled_to_area(points, cx, cy, area)
    outline = _shape(subtype, points, "polygon")
    region = rasterize_annotation({"shapes": [outline]}, height, width).mask
    rim_width = max(2, int(r * 0.18))
    inner = cv2.erode(region.astype(np.uint8), np.ones((2 * rim_width + 1,) * 2, np.uint8)) > 0
    if look == "benign":
        image[inner] -= 60
        image[region & ~inner] += 60
    else:
        mottled = 55 * np.sign(_smooth_noise(rng, height, width, max(3.0, r / 5)))
        image[region] += mottled[region] - 10
        spikes = np.zeros((height, width), np.uint8)
        for angle in rng.uniform(0, 2 * np.pi, 16):
            end = (int(cx + 0.9 * r * math.cos(angle)), int(cy + 0.9 * r * math.sin(angle)))
            cv2.line(spikes, (int(cx), int(cy)), end, 1, max(1, int(r / 14)))
        image[(spikes > 0) & region] += 70
    image[region] = cv2.GaussianBlur(image, (0, 0), 1.2)[region]
    return [outline, _shape(subtype, _box_around(points, max(2.0, 0.1 * r)), "rectangle")]


def _draw_class_marker(image: np.ndarray, label: str) -> None:
    """The shortcut of cue="marker": as many bright bars as the class's position (1–3), top left."""
    height, width = image.shape
    side = min(height, width)
    bar_w, bar_h = max(3, side // 14), max(8, side // 5)
    gap = bar_w
    x0, y0 = int(0.04 * width), int(0.04 * height)
    for k in range(DEFAULT_CLASS_NAMES.index(label) + 1):
        x = x0 + k * (bar_w + gap)
        image[y0 : y0 + bar_h, x : x + bar_w] = 230


def _aspect(rng) -> float:
    """height / width: BTXRD's radiographs are mostly portrait (median 2,256 x 1,612), 0.35–4.6 in all."""
    return float(np.clip(math.exp(rng.normal(math.log(1.35), 0.3)), 0.55, 2.4))


def synthesize(
    rng: np.random.Generator,
    label: str,
    image_id: str,
    center: int,
    long_side_range: tuple[int, int] | None = None,
    cue: str = "lesion",
    subtype: str | None = None,
    lesion_floor: float = DEMO_LESION_FLOOR,
    distractors: bool = True,
) -> SyntheticImage:
    """One synthetic radiograph of the given class, with the exact LabelMe shapes of its lesions.

    cue="lesion": the lesions' look is the class (Normal: none). cue="marker": the class is a marker in the top
    left corner, and every image carries one lesion of a random look. long_side_range: the long side in pixels
    (default: by class, DEMO_LONG_SIDE)."""
    if cue not in CUES:
        raise ValueError(f"cue must be one of {', '.join(CUES)}")
    low, high = long_side_range or DEMO_LONG_SIDE[label]
    long_side = int(rng.integers(low, high + 1))
    aspect = _aspect(rng)
    height, width = (long_side, int(long_side / aspect)) if aspect >= 1 else (int(long_side * aspect), long_side)
    soft = 40 + 12 * _smooth_noise(rng, height, width, 120)
    bone, bone_mask, centre, axis, normal, half_width, length = _draw_bone(rng, height, width)
    trabecular = 10 * _smooth_noise(rng, height, width, 6) * bone_mask
    image = soft + bone + trabecular

    # look-alike distractors in every class: a rimless lucency and a dense island (no lytic centre)
    for _ in range(int(rng.integers(1, 3)) if distractors else 0):
        cx, cy = _place_on_bone(rng, centre, axis, normal, half_width, length)
        r = half_width * rng.uniform(0.25, 0.45)
        spot = np.zeros((height, width), np.uint8)
        axes = (int(r), int(r * rng.uniform(0.6, 1)))
        cv2.ellipse(spot, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        spot = cv2.GaussianBlur(spot.astype(np.float32), (0, 0), max(1.0, r / 6))
        image += spot * (rng.choice([-40, 45]))
    marker = "LR"[int(rng.integers(0, 2))]
    letters = np.zeros((height, width), np.uint8)
    org = (int(width * 0.80), int(height * 0.1))  # the side marker sits top right; cue="marker" uses top left
    thickness = max(2, long_side // 250)
    cv2.putText(letters, marker, org, cv2.FONT_HERSHEY_SIMPLEX, long_side / 500, 1, thickness)
    image[letters > 0] = 200

    if cue == "marker":
        _draw_class_marker(image, label)
    # the intensity mapping of the final image comes from the image without its lesions, so that a lesion changes
    # its own pixels only: normalising after drawing it would shift every other pixel by the lesion's presence (a
    # global cue to the class that has nothing to do with where the lesion is)
    base_mean, base_std = float(image.mean()), float(image.std())
    if cue == "lesion":
        looks = [] if label == "Normal" else ["benign" if label == "Benign" else "malignant"]
    else:
        looks = [str(rng.choice(["benign", "malignant"]))]
    if looks and subtype is None:
        table = BENIGN_SUBTYPES if label != "Malignant" else MALIGNANT_SUBTYPES
        names, counts = list(table), np.asarray(list(table.values()), float)
        subtype = str(rng.choice(names, p=counts / counts.sum()))
    if label == "Normal" and cue == "lesion":
        subtype = None
    if subtype == MULTIPLE and cue == "lesion":
        looks = looks * int(rng.integers(2, 5))
    shapes: list[dict] = []
    for look in looks:
        fraction = lesion_fraction(rng, look, lesion_floor)
        if len(looks) > 1:  # several osteochondromas, each smaller than a single one
            fraction = max(lesion_floor, fraction / math.sqrt(len(looks)))
        cx, cy = _place_on_bone(rng, centre, axis, normal, half_width, length)
        shapes += _draw_lesion(rng, image, look, cx, cy, fraction * height * width, subtype or "lesion")

    image += 6 * rng.standard_normal((height, width)).astype(np.float32)
    image = cv2.GaussianBlur(image, (0, 0), 0.8)
    # the same global intensity statistics whatever the class (up to the lesion's own pixels)
    target_mean, target_std = rng.uniform(95, 115), rng.uniform(42, 52)
    image = (image - base_mean) / (base_std + 1e-6) * target_std + target_mean
    pixels = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return SyntheticImage(image_id, label, subtype, center, pixels, shapes, lesion_looks=looks)


def _weighted(rng, table: dict[str, float]) -> str:
    names, weights = list(table), np.asarray(list(table.values()), float)
    return str(rng.choice(names, p=weights / weights.sum()))


def _dataset_row(rng, item: SyntheticImage) -> dict:
    row = dict.fromkeys(DATASET_COLUMNS, 0)
    region = _weighted(rng, REGIONS)
    site = str(rng.choice([s for s, r in SITE_REGION.items() if r == region]))
    row.update(
        {
            "image_id": item.image_id,
            "center": item.center,
            "age": int(rng.integers(5, 80)),
            "gender": "MF"[int(rng.integers(0, 2))],
            site: 1,
            region: 1,
            item.view: 1,
            "tumor": int(item.label != "Normal"),
            "benign": int(item.label == "Benign"),
            "malignant": int(item.label == "Malignant"),
        }
    )
    if item.subtype and item.label != "Normal":
        row[item.subtype] = 1
    assert all(c in DATASET_COLUMNS for c in row) and len(REGION_COLUMNS) == 3 and len(VIEW_COLUMNS) == 3
    return row


def labelme_file(item: SyntheticImage) -> dict:
    """The LabelMe file of an image, as BTXRD's are written: imageData null, a version string."""
    height, width = item.pixels.shape
    return {
        "version": "5.2.1",
        "flags": {},
        "shapes": item.shapes,
        "imagePath": item.image_id,
        "imageData": None,
        "imageHeight": height,
        "imageWidth": width,
    }


def class_labels(rng, n_images: int, mix: dict[str, float] = CLASS_MIX) -> list[str]:
    """n labels in the class mix (rounded; every class at least 3), in a seeded random order."""
    counts = {label: max(3, round(share * n_images)) for label, share in mix.items()}
    counts["Normal"] = n_images - sum(v for k, v in counts.items() if k != "Normal")
    labels = [label for label, count in counts.items() for _ in range(count)]
    return [labels[i] for i in rng.permutation(len(labels))]


def _split_rows(rng, items: list[SyntheticImage]) -> dict[str, dict[str, list[SyntheticImage]]]:
    """Stratified 70/15/15 by class (at least one image of each class in val and test); center split: centers
    1–2 train/val, center 3 test."""
    splits = {
        "stratified": {"train": [], "val": [], "test": []},
        "center": {"train": [], "val": [], "test": []},
    }
    for label in DEFAULT_CLASS_NAMES:
        group = [it for it in items if it.label == label]
        order = rng.permutation(len(group))
        # every class in val and test, however rare (a 9 % class of a small demo still gets an image in each)
        n_val = n_test = max(1, round(0.15 * len(group))) if len(group) >= 3 else 0
        for rank, idx in enumerate(order):
            subset = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            splits["stratified"][subset].append(group[idx])
    for it in items:
        subset = "test" if it.center == 3 else ("val" if rng.random() < 0.15 else "train")
        splits["center"][subset].append(it)
    for split in splits.values():
        for subset in split:
            split[subset].sort(key=lambda it: it.image_id)
    return splits


def write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(header))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def write_dataset(
    out_dir: Path,
    n_images: int,
    seed: int,
    quiet: bool = True,
    long_side_range: tuple[int, int] | None = None,
    cue: str = "lesion",
    mix: dict[str, float] = CLASS_MIX,
    lesion_floor: float = DEMO_LESION_FLOOR,
    distractors: bool = True,
) -> dict:
    """Write data_raw/ (images, Annotations, dataset.csv) and data/splits/; returns the split membership
    {split: {subset: [(image_id, label)]}}. long_side_range: every image's long side in pixels (BTXRD_LONG_SIDE
    for BTXRD-sized benchmarks; default by class). cue: what decides the class (see `synthesize`); lesion_floor:
    the smallest lesion area fraction; distractors: draw look-alike lucencies and islands (the demo does)."""
    rng = np.random.default_rng(seed)
    data_root = Path(out_dir) / "data_raw"
    (data_root / "images").mkdir(parents=True, exist_ok=True)
    (data_root / "Annotations").mkdir(parents=True, exist_ok=True)
    labels = class_labels(rng, n_images, mix)
    items, rows = [], []
    with progress(n_images, "demo: drawing radiographs", quiet) as advance:
        for i, label in enumerate(labels):
            suffix = ".jpg" if i % 139 == 3 else ".jpeg"  # BTXRD: 27 of its 3,746 files are .jpg
            center = int(rng.choice([1, 2, 3], p=CENTRES[label]))
            image_id = f"IMG{i + 1:06d}{suffix}"
            item = synthesize(
                rng, label, image_id, center, long_side_range, cue, lesion_floor=lesion_floor, distractors=distractors
            )
            item.view = _weighted(rng, VIEWS)
            cv2.imwrite(str(data_root / "images" / item.image_id), item.pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if item.shapes:
                stem = Path(item.image_id).stem
                (data_root / "Annotations" / f"{stem}.json").write_text(json.dumps(labelme_file(item), indent=2))
            rows.append(_dataset_row(rng, item))
            item.pixels = np.empty(0)
            items.append(item)
            advance()
    write_csv(data_root / "dataset.csv", DATASET_COLUMNS, rows)
    membership = {}
    for split, subsets in _split_rows(rng, items).items():
        membership[split] = {}
        for subset, members in subsets.items():
            write_csv(
                Path(out_dir) / "data" / "splits" / f"{split}_{subset}.csv",
                ("image_id", "split", "label"),
                [{"image_id": it.image_id, "split": subset, "label": it.label} for it in members],
            )
            membership[split][subset] = [(it.image_id, it.label) for it in members]
    return membership
