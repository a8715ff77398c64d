"""`btxrd-cam audit` at BTXRD's size: 3,746 JPEGs of BTXRD's dimensions (flat content: only headers are read)
and 1,867 BTXRD-style annotation files, with BTXRD's class mix and sizes by class. Also one header read against
one full decode per image.

    python benchmarks/bench_audit.py
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import cv2
import numpy as np
from common import WORK, btxrd_cam, run_command, save_results, table

from btxrd_cam.data import DATASET_COLUMNS, decode_image, image_size

IMAGES = 3746
CLASS_COUNTS = {"Normal": 1879, "Benign": 1525, "Malignant": 342}
MEGAPIXELS = {"Normal": 4.4, "Benign": 3.7, "Malignant": 0.57}  # BTXRD's medians by class


def project() -> Path:
    root = WORK / "btxrd_headers"
    done = root / ".complete"
    if done.is_file():
        return root
    rng = np.random.default_rng(0)
    images, notes = root / "data_raw/images", root / "data_raw/Annotations"
    images.mkdir(parents=True, exist_ok=True)
    notes.mkdir(parents=True, exist_ok=True)
    labels = [label for label, count in CLASS_COUNTS.items() for _ in range(count)]
    rows = []
    for i, label in enumerate(labels):
        megapixels = MEGAPIXELS[label] * float(np.exp(rng.normal(0, 0.35)))
        aspect = float(np.clip(np.exp(rng.normal(np.log(1.4), 0.3)), 0.35, 4.5))
        width = max(153, int(np.sqrt(megapixels * 1e6 / aspect)))
        height = max(153, int(width * aspect))
        image_id = f"IMG{i + 1:06d}.jpeg"
        flat = np.full((height, width), 100, np.uint8)
        cv2.imwrite(str(images / image_id), flat, [cv2.IMWRITE_JPEG_QUALITY, 80])
        row = dict.fromkeys(DATASET_COLUMNS, 0)
        row.update(image_id=image_id, center=1 + (i % 7 == 0) + (i % 13 == 0), femur=1, frontal=1)
        row.update(**{"lower limb": 1, "tumor": int(label != "Normal"), "benign": int(label == "Benign")})
        row["malignant"] = int(label == "Malignant")
        if label != "Normal":
            subtype = "osteosarcoma" if label == "Malignant" else "osteochondroma"
            row[subtype] = 1
            cx, cy, r = width / 2, height / 2, np.sqrt(0.01 * width * height / np.pi)
            points = [[cx + r * np.cos(a), cy + r * np.sin(a)] for a in np.linspace(0, 2 * np.pi, 24, endpoint=False)]
            shapes = [
                {"label": subtype, "points": points, "shape_type": "polygon", "flags": {}},
                {"label": subtype, "points": [[cx - r, cy - r], [cx + r, cy + r]], "shape_type": "rectangle"},
            ]
            (notes / f"IMG{i + 1:06d}.json").write_text(
                json.dumps(
                    {
                        "version": "5.2.1",
                        "shapes": shapes,
                        "imageData": None,
                        "imageHeight": height,
                        "imageWidth": width,
                    }
                )  # fmt: skip
            )
        rows.append(row)
    with (root / "data_raw/dataset.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(DATASET_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    done.write_text("ok")
    return root


def main() -> None:
    root = project()
    wall, rss = run_command([btxrd_cam(), "audit", "--split", "dataset", "-q", "--out", str(WORK / "audit_out")], root)
    report = json.loads((WORK / "audit_out" / "audit_report.json").read_text())
    paths = sorted((root / "data_raw/images").iterdir())[:40]
    start = time.perf_counter()
    for path in paths:
        image_size(path)
    header_ms = 1000 * (time.perf_counter() - start) / len(paths)
    start = time.perf_counter()
    for path in paths[:10]:
        decode_image(path, keep_gray=True)
    decode_ms = 1000 * (time.perf_counter() - start) / 10
    print(table(f"btxrd-cam audit on {IMAGES:,} images of BTXRD's sizes and {sum(CLASS_COUNTS.values()) - 1879:,} "
                "annotation files", ["", "value"],
                [["wall s (start-up included)", f"{wall:.1f}"], ["peak RSS MB", f"{rss:.0f}"],
                 ["header read, ms per image", f"{header_ms:.2f}"], ["full decode, ms per image", f"{decode_ms:.1f}"],
                 ["image size cue AUC", f"{report['cues']['image size']['auc']:.3f}"]]))  # fmt: skip
    save_results("audit", {"images": IMAGES, "wall_s": wall, "peak_rss_mb": rss, "header_ms": header_ms,
                           "decode_ms": decode_ms, "cues": report["cues"]})  # fmt: skip


if __name__ == "__main__":
    main()
