"""Whole commands on files (CPU): gallery and annotate-iou wall time against infer on the same split, and peak
RSS from a 500- to a 2,000-image split.

    python benchmarks/bench_commands.py [--images 200]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import timm
import torch
from common import WORK, btxrd_cam, radiograph_jpeg, run_command, save_results, table

from btxrd_cam.checkpoint import save_upstream_checkpoint

CLASSES = ["Normal", "Benign", "Malignant"]


def make_project(root: Path, count: int, height: int, width: int, image_size: int) -> Path:
    """An upstream-layout project of `count` images (tumour ones annotated) and an untrained EfficientNet-B0."""
    if (root / "checkpoints" / "best_stratified.pt").is_file():
        return root
    images, annotations = root / "data_raw" / "images", root / "data_raw" / "Annotations"
    images.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        image_id = f"IMG{i:06d}.jpeg"
        h, w = (height, width) if i % 2 else (width, height)
        radiograph_jpeg(images / image_id, h, w, seed=i)
        label = CLASSES[i % 3]
        if label != "Normal":
            x, y = float(rng.uniform(0.2, 0.6) * w), float(rng.uniform(0.2, 0.6) * h)
            shape = {"label": "tumor", "shape_type": "rectangle", "points": [[x, y], [x + w / 6, y + h / 6]]}
            (annotations / f"IMG{i:06d}.json").write_text(
                json.dumps({"shapes": [shape], "imageHeight": h, "imageWidth": w})
            )
        rows.append({"image_id": image_id, "split": "test", "label": label})
    (root / "data" / "splits").mkdir(parents=True, exist_ok=True)
    with (root / "data" / "splits" / "stratified_test.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image_id", "split", "label"])
        writer.writeheader()
        writer.writerows(rows)
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=3).eval()
    save_upstream_checkpoint(root / "checkpoints" / "best_stratified.pt", model, "efficientnet_b0", CLASSES,
                             image_size)  # fmt: skip
    return root


# --no-cache: every repeat pays what a first run pays (the cache's own benchmark is bench_btxrd_scale.py)
COMMANDS = {"infer": ["infer", "-q"], "gallery": ["gallery", "-q", "--no-cache"],
            "annotate-iou": ["annotate-iou", "-q", "--no-cache"]}  # fmt: skip


def time_commands(root: Path, repeats: int) -> dict[str, dict[str, float]]:
    out = {}
    for name, args in COMMANDS.items():
        runs = [run_command([btxrd_cam(), *args], root) for _ in range(repeats)]
        out[name] = {"wall_s": float(np.median([r[0] for r in runs])), "peak_rss_mb": max(r[1] for r in runs)}
    return out


def time_demo(demo: Path, repeats: int) -> dict:
    """compare (28 configurations + 3 baselines) against annotate-iou (one) on the demo's test split, interleaved."""
    commands = {"annotate-iou": ["annotate-iou", "-q", "--no-cache", "--out", "/tmp/btxrd-bench-a"],
                "compare": ["compare", "-q", "--no-cache", "--out", "/tmp/btxrd-bench-c"]}  # fmt: skip
    walls = {name: [] for name in commands}
    for _ in range(repeats):
        for name, args in commands.items():
            walls[name].append(run_command([btxrd_cam(), *args], demo)[0])
    wall = {name: float(np.median(values)) for name, values in walls.items()}
    print(table(f"On the demo's test split (median of {repeats})", ["command", "wall s", "x annotate-iou"],
                [[k, f"{v:.1f}", f"{v / wall['annotate-iou']:.2f}"] for k, v in wall.items()]))  # fmt: skip
    return {"wall_s": wall, "compare_x_annotate": wall["compare"] / wall["annotate-iou"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo", type=Path, default=Path(__file__).resolve().parents[1] / "demo")
    args = parser.parse_args()
    if (args.demo / "checkpoints" / "best_stratified.pt").is_file():
        save_results("demo_commands", time_demo(args.demo, args.repeats))
    big = make_project(WORK / f"split_{args.images}_large", args.images, 2600, 2000, 224)
    wall = time_commands(big, args.repeats)
    base = wall["infer"]["wall_s"]
    print(table(f"Commands on a {args.images}-image split of 2600x2000 JPEGs, efficientnet_b0 224 px, CPU "
                f"(median of {args.repeats})", ["command", "wall s", "x infer", "peak RSS MB"],
                [[k, f"{v['wall_s']:.1f}", f"{v['wall_s'] / base:.2f}", f"{v['peak_rss_mb']:.0f}"]
                 for k, v in wall.items()]))  # fmt: skip
    rss = {}
    for count in (500, 2000):
        root = make_project(WORK / f"split_{count}_small", count, 320, 256, 64)
        rss[count] = time_commands(root, 1)
    print(table("Peak RSS (MB) vs split size (320x256 JPEGs, efficientnet_b0 at 64 px)",
                ["command", "500 images", "2000 images", "growth MB"],
                [[k, f"{rss[500][k]['peak_rss_mb']:.0f}", f"{rss[2000][k]['peak_rss_mb']:.0f}",
                  f"{rss[2000][k]['peak_rss_mb'] - rss[500][k]['peak_rss_mb']:.0f}"] for k in COMMANDS]))  # fmt: skip
    save_results("commands", {"images": args.images, "wall": wall, "ratio_to_infer": {
        k: v["wall_s"] / base for k, v in wall.items()}, "rss_by_split_size": rss})  # fmt: skip


if __name__ == "__main__":
    main()
