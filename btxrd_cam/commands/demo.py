"""The embedded demo: a synthetic BTXRD-layout project whose lesions sit exactly where its annotations say.

`make_demo(out_dir)` writes `data_raw/` (images, LabelMe annotations, the 37-column dataset.csv),
`data/splits/` manifests and `checkpoints/best_stratified.pt` — an EfficientNet-B0 trained from scratch on the
demo's train split, saved in the upstream format. The only evidence of the class is the lesion: global intensity
statistics are matched between classes, every class carries look-alike distractors, lesions move around. So a
model that classifies well must look at the lesion, and the annotations are ground truth for where the evidence
is. The data and model are never tuned to make heatmaps look good.

Not for: anything a user runs on real data.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from btxrd_cam.checkpoint import save_upstream_checkpoint
from btxrd_cam.console import progress
from btxrd_cam.data import (
    DATASET_COLUMNS,
    DEFAULT_CLASS_NAMES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    REGION_COLUMNS,
    SITE_COLUMNS,
    VIEW_COLUMNS,
    load_image,
    preprocess,
)
from btxrd_cam.errors import raise_if_interrupted
from btxrd_cam.labelme import rasterize_annotation

BENIGN_SUBTYPES = ("osteochondroma", "simple bone cyst", "giant cell tumor", "osteofibroma")
MALIGNANT_SUBTYPES = ("osteosarcoma", "other mt")
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


@dataclass
class DemoImage:
    image_id: str
    label: str
    subtype: str | None
    center: int
    pixels: np.ndarray  # uint8 [H, W]
    shapes: list[dict]


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
    field = np.zeros((height, width), np.float32)
    field[inside] = 55
    field[cortex] = 95
    return field, inside, centre, axis, normal, half_width, length


def _place_on_bone(rng, centre, axis, normal, half_width, length):
    t = rng.uniform(-0.3, 0.3) * length
    offset = rng.uniform(-0.35, 0.35) * half_width
    return centre + axis * t + normal * offset


DEMO_LONG_SIDE = (512, 1024)
BTXRD_LONG_SIDE = (1500, 3000)  # BTXRD's own radiographs, for benchmarks at its scale


def synthesize(
    rng: np.random.Generator, label: str, image_id: str, center: int, long_side_range=DEMO_LONG_SIDE
) -> DemoImage:
    """One synthetic radiograph of the given class, with the exact LabelMe region of its lesion."""
    long_side = int(rng.integers(long_side_range[0], long_side_range[1] + 1))
    short_side = int(long_side * rng.uniform(0.6, 0.85))
    height, width = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    soft = 40 + 12 * _smooth_noise(rng, height, width, 120)
    bone, bone_mask, centre, axis, normal, half_width, length = _draw_bone(rng, height, width)
    trabecular = 10 * _smooth_noise(rng, height, width, 6) * bone_mask
    image = soft + bone + trabecular

    # look-alike distractors in every class: a rimless lucency and a dense island (no lytic centre)
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = _place_on_bone(rng, centre, axis, normal, half_width, length)
        r = half_width * rng.uniform(0.25, 0.45)
        spot = np.zeros((height, width), np.uint8)
        cv2.ellipse(
            spot,
            (int(cx), int(cy)),
            (int(r), int(r * rng.uniform(0.6, 1))),
            float(rng.uniform(0, 180)),
            0,
            360,
            1,
            -1,
        )
        spot = cv2.GaussianBlur(spot.astype(np.float32), (0, 0), max(1.0, r / 6))
        image += spot * (rng.choice([-40, 45]))
    marker = "LR"[int(rng.integers(0, 2))]
    letters = np.zeros((height, width), np.uint8)
    cv2.putText(
        letters,
        marker,
        (int(width * 0.05), int(height * 0.1)),
        cv2.FONT_HERSHEY_SIMPLEX,
        long_side / 500,
        1,
        max(2, long_side // 250),
    )
    image[letters > 0] = 200

    shapes: list[dict] = []
    subtype = None
    if label != "Normal":
        cx, cy = _place_on_bone(rng, centre, axis, normal, half_width, length)
        r = half_width * rng.uniform(0.6, 0.95)
        if label == "Benign":
            subtype = str(rng.choice(BENIGN_SUBTYPES))
            if rng.random() < 0.5:
                a, b = r, r * rng.uniform(0.6, 1.0)
                points = [[round(cx - a, 2), round(cy - b, 2)], [round(cx + a, 2), round(cy + b, 2)]]
                shape_type = "rectangle"
            else:
                points = _ellipse_points(cx, cy, r, r * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi))
                shape_type = "polygon"
        else:
            subtype = str(rng.choice(MALIGNANT_SUBTYPES))
            points = _irregular_points(rng, cx, cy, r)
            shape_type = "polygon"
        shape = {
            "label": subtype,
            "points": points,
            "group_id": None,
            "description": "",
            "shape_type": shape_type,
            "flags": {},
        }
        shapes.append(shape)
        region = rasterize_annotation({"shapes": shapes}, height, width).mask
        region_u8 = region.astype(np.uint8)
        rim_width = max(2, int(r * 0.18))
        inner = cv2.erode(region_u8, np.ones((2 * rim_width + 1,) * 2, np.uint8)) > 0
        if label == "Benign":  # well-defined lytic lesion with a sclerotic rim
            image[inner] -= 60
            image[region & ~inner] += 60
        else:  # ill-defined, mottled lytic/sclerotic lesion with spicules
            mottled = 55 * np.sign(_smooth_noise(rng, height, width, max(3.0, r / 5)))
            image[region] += mottled[region] - 10
            spikes = np.zeros((height, width), np.uint8)
            for angle in rng.uniform(0, 2 * np.pi, 16):
                end = (int(cx + 0.9 * r * math.cos(angle)), int(cy + 0.9 * r * math.sin(angle)))
                cv2.line(spikes, (int(cx), int(cy)), end, 1, max(1, int(r / 14)))
            image[(spikes > 0) & region] += 70
        image[region] = cv2.GaussianBlur(image, (0, 0), 1.2)[region]

    image += 6 * rng.standard_normal((height, width)).astype(np.float32)
    image = cv2.GaussianBlur(image, (0, 0), 0.8)
    # identical global intensity statistics whatever the class
    target_mean, target_std = rng.uniform(95, 115), rng.uniform(42, 52)
    image = (image - image.mean()) / (image.std() + 1e-6) * target_std + target_mean
    pixels = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return DemoImage(image_id, label, subtype, center, pixels, shapes)


def _dataset_row(rng, item: DemoImage) -> dict:
    row = dict.fromkeys(DATASET_COLUMNS, 0)
    site = str(rng.choice(SITE_COLUMNS))
    row.update(
        {
            "image_id": item.image_id,
            "center": item.center,
            "age": int(rng.integers(5, 80)),
            "gender": "MF"[int(rng.integers(0, 2))],
            site: 1,
            SITE_REGION[site]: 1,
            str(rng.choice(VIEW_COLUMNS)): 1,
            "tumor": int(item.label != "Normal"),
            "benign": int(item.label == "Benign"),
            "malignant": int(item.label == "Malignant"),
        }
    )
    if item.subtype:
        row[item.subtype] = 1
    assert all(c in DATASET_COLUMNS for c in row) and len(REGION_COLUMNS) == 3
    return row


def _labelme(item: DemoImage) -> dict:
    height, width = item.pixels.shape
    return {
        "version": "5.2.1",
        "flags": {},
        "shapes": item.shapes,
        "imagePath": f"../images/{item.image_id}",
        "imageData": None,
        "imageHeight": height,
        "imageWidth": width,
    }


def _split_rows(rng, items: list[DemoImage]) -> dict[str, dict[str, list[DemoImage]]]:
    """Stratified 70/15/15 by class; center split: centers 1–2 train/val, center 3 test."""
    splits = {
        "stratified": {"train": [], "val": [], "test": []},
        "center": {"train": [], "val": [], "test": []},
    }
    for label in DEFAULT_CLASS_NAMES:
        group = [it for it in items if it.label == label]
        order = rng.permutation(len(group))
        n_val, n_test = round(0.15 * len(group)), round(0.15 * len(group))
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


def _write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(header))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def write_dataset(out_dir: Path, n_images: int, seed: int, quiet: bool = True, long_side_range=DEMO_LONG_SIDE) -> dict:
    """Write data_raw/ and data/splits/; returns the split membership {split: {subset: [image_id]}}.
    `long_side_range`: the images' long sides in pixels (BTXRD_LONG_SIDE for BTXRD-sized benchmarks)."""
    rng = np.random.default_rng(seed)
    data_root = Path(out_dir) / "data_raw"
    (data_root / "images").mkdir(parents=True, exist_ok=True)
    (data_root / "Annotations").mkdir(parents=True, exist_ok=True)
    labels = [DEFAULT_CLASS_NAMES[i % 3] for i in range(n_images)]
    items, rows = [], []
    with progress(n_images, "demo: drawing radiographs", quiet) as advance:
        for i, label in enumerate(labels):
            suffix = ".jpg" if i % 7 == 3 else ".jpeg"
            center = int(rng.integers(1, 4))
            item = synthesize(rng, label, f"IMG{i + 1:06d}{suffix}", center, long_side_range)
            cv2.imwrite(str(data_root / "images" / item.image_id), item.pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if item.shapes:
                stem = Path(item.image_id).stem
                (data_root / "Annotations" / f"{stem}.json").write_text(json.dumps(_labelme(item), indent=2))
            rows.append(_dataset_row(rng, item))
            items.append(DemoImage(item.image_id, label, item.subtype, item.center, np.empty(0), item.shapes))
            advance()
    _write_csv(data_root / "dataset.csv", DATASET_COLUMNS, rows)
    membership = {}
    for split, subsets in _split_rows(rng, items).items():
        membership[split] = {}
        for subset, members in subsets.items():
            _write_csv(
                Path(out_dir) / "data" / "splits" / f"{split}_{subset}.csv",
                ("image_id", "split", "label"),
                [{"image_id": it.image_id, "split": subset, "label": it.label} for it in members],
            )
            membership[split][subset] = [(it.image_id, it.label) for it in members]
    return membership


def _tensors(data_root: Path, rows, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    names = list(DEFAULT_CLASS_NAMES)
    xs = [
        preprocess(
            load_image(data_root / "images" / image_id, keep_gray=True)[0],
            image_size,
            IMAGENET_MEAN,
            IMAGENET_STD,
        )
        for image_id, _ in rows
    ]
    return torch.from_numpy(np.stack(xs)), torch.tensor([names.index(label) for _, label in rows])


def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> None:
    """Recompute BatchNorm running statistics as exact averages over `images` (eval-mode accuracy needs them)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(images[i : i + batch_size])
    model.eval()


def macro_auc(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    model.eval()
    with torch.inference_mode():
        probs = torch.cat([model(images[i : i + 64]).softmax(1) for i in range(0, len(images), 64)]).numpy()
    return float(roc_auc_score(labels.numpy(), probs, multi_class="ovr", average="macro"))


def train_model(x: torch.Tensor, y: torch.Tensor, arch: str, epochs: int, seed: int, quiet: bool = True) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=len(DEFAULT_CLASS_NAMES))
    model = model.to(memory_format=torch.channels_last)  # ~1.4x faster convolutions on CPU
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    batch_size = 32
    steps = epochs * math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.2)
    generator = torch.Generator().manual_seed(seed)
    with progress(steps, f"demo: training {arch}", quiet) as advance:
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(x), generator=generator)
            for i in range(0, len(x), batch_size):
                raise_if_interrupted()
                idx = order[i : i + batch_size]
                xb = x[idx]
                flips = torch.rand(3, generator=generator)
                if flips[0] < 0.5:
                    xb = xb.flip(3)
                if flips[1] < 0.5:
                    xb = xb.flip(2)
                if flips[2] < 0.5:
                    xb = xb.transpose(2, 3)
                xb = xb.contiguous(memory_format=torch.channels_last)
                loss = nn.functional.cross_entropy(model(xb), y[idx], label_smoothing=0.05)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                advance()
    model = model.to(memory_format=torch.contiguous_format)
    recalibrate_batchnorm(model, x)
    return model


def make_demo(
    out_dir: Path,
    seed: int = 0,
    n_images: int = 300,
    arch: str = "efficientnet_b0",
    image_size: int = 160,
    epochs: int = 18,
    quiet: bool = True,
) -> dict:
    """Build the whole demo project; returns a summary with the eval-mode test macro AUC."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    membership = write_dataset(out_dir, n_images, seed, quiet)
    data_root = out_dir / "data_raw"
    split = membership["stratified"]
    x_train, y_train = _tensors(data_root, split["train"], image_size)
    model = train_model(x_train, y_train, arch, epochs, seed, quiet)
    x_test, y_test = _tensors(data_root, split["test"], image_size)
    auc = macro_auc(model, x_test, y_test)
    ckpt = out_dir / "checkpoints" / "best_stratified.pt"
    save_upstream_checkpoint(
        ckpt,
        model,
        arch,
        list(DEFAULT_CLASS_NAMES),
        image_size,
        extra={"epoch": epochs, "demo": {"seed": seed, "images": n_images, "test_macro_auc": round(auc, 4)}},
    )
    return {
        "out_dir": str(out_dir),
        "images": n_images,
        "seed": seed,
        "arch": arch,
        "image_size": image_size,
        "checkpoint": str(ckpt),
        "test_images": len(split["test"]),
        "test_macro_auc": round(auc, 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
