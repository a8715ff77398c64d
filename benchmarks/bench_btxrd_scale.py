"""BTXRD at scale: gallery, annotate-iou and compare over radiographs of BTXRD's sizes (long side 1,500-3,000 px,
grayscale JPEG, half of them annotated), each against its floor measured in the same run — decoding the images it
must explain plus one model pass over them, nothing else — with py-spy's shares of decode, model, scoring,
drawing and cache; re-runs served by the explanation cache; and projected minutes for all of BTXRD (3,746 images,
1,867 annotated), from a subsample scaled linearly.

    python benchmarks/bench_btxrd_scale.py [--demo demo] [--images 200]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import WORK, btxrd_cam, run_command, save_results, table

from btxrd_cam.commands.demo import BTXRD_LONG_SIDE, write_dataset

BTXRD_IMAGES, BTXRD_ANNOTATED = 3746, 1867
PARTS = {  # a sample's stack containing this function counts for the part (first match wins, in this order)
    "cache": ("store", "load", "probe"),
    "decode": ("decode_image",),
    "model": ("explain_all", "predict_tensors"),
    "scoring": ("score_map", "annotation_mask", "score_image", "score_configurations"),
    "drawing": ("save_overlay", "save_figure", "thumbnail_overlay", "_thumbnail", "_grid_rows", "_figure_rows"),
}
FLOOR = """
import sys, time
from pathlib import Path
from btxrd_cam.checkpoint import load_checkpoint
from btxrd_cam.data import manifest_path, split_items, default_workers
from btxrd_cam.engine import CamConfig, Engine, SINGLE_PASS
from btxrd_cam.layers import auto_layers
project, which, configs = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
ckpt = load_checkpoint(project / "checkpoints/best_stratified.pt")
items = split_items(project / "data_raw", manifest_path(project / "data/splits", "stratified", "test"))
items = [i for i in items if i.annotation is not None] if which == "annotated" else items
layers = auto_layers(ckpt.model, ckpt.target_layer_name, ckpt.image_size) if configs == "compare" else None
chosen = [CamConfig(m, l) for m in SINGLE_PASS for l in layers] if layers else None
engine = Engine(ckpt, configs=chosen, workers=default_workers())
for result in engine.run(items):
    pass
"""


def project(demo: Path, count: int) -> Path:
    """`count` BTXRD-sized radiographs with the demo's lesions, half of them annotated (all of them the test
    subset), and the demo's weights at 224 px."""
    root = WORK / f"btxrd_scale_{count}"
    if (root / "checkpoints" / "best_stratified.pt").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    generated = count * 3 // 4  # the demo draws thirds: Normal, Benign, Malignant
    write_dataset(root, generated, seed=21, long_side_range=BTXRD_LONG_SIDE)
    with (root / "data_raw" / "dataset.csv").open() as f:
        rows = list(csv.DictReader(f))
    normal = [r for r in rows if r["tumor"] == "0"]
    tumour = [r for r in rows if r["tumor"] == "1"][: len(normal)]

    def label(r):
        return "Malignant" if r["malignant"] == "1" else "Benign" if r["benign"] == "1" else "Normal"

    chosen = sorted(normal + tumour, key=lambda r: r["image_id"])
    lines = ["image_id,split,label"] + [f"{r['image_id']},test,{label(r)}" for r in chosen]
    for subset in ("train", "val"):
        (root / "data" / "splits" / f"stratified_{subset}.csv").unlink()
    (root / "data" / "splits" / "stratified_test.csv").write_text("\n".join(lines) + "\n")
    (root / "checkpoints").mkdir()
    payload = torch.load(demo / "checkpoints" / "best_stratified.pt", map_location="cpu", weights_only=True)
    payload["config"]["data"]["image_size"] = 224
    torch.save(payload, root / "checkpoints" / "best_stratified.pt")
    return root


def wall(args: list[str], cwd: Path) -> float:
    return run_command(args, cwd)[0]


def profiled(args: list[str], cwd: Path, name: str) -> dict:
    """Shares of the sampled CPU time (py-spy, all threads) per part."""
    raw = WORK / f"{name}.pyspy"
    spy = Path(sys.executable).with_name("py-spy")
    subprocess.run([str(spy), "record", "-r", "40", "-f", "raw", "-o", str(raw), "--", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    counts = dict.fromkeys([*PARTS, "other (start-up, imports, the rest)"], 0)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = {frame.split(" (")[0].rsplit(".", 1)[-1] for frame in stack.split(";")}
        total += int(samples)
        part = next((p for p, needles in PARTS.items() if frames & set(needles)), "other (start-up, imports, the rest)")
        counts[part] += int(samples)
    return {part: count / total for part, count in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", type=Path, default=Path(__file__).resolve().parents[1] / "demo")
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    root = project(args.demo, args.images)
    with (root / "data" / "splits" / "stratified_test.csv").open() as f:
        n_images = sum(1 for _ in f) - 1
    ids = [line.split(",")[0] for line in (root / "data/splits/stratified_test.csv").read_text().splitlines()[1:]]
    n_annotated = sum((root / "data_raw/Annotations" / f"{Path(i).stem}.json").is_file() for i in ids)
    cli = btxrd_cam()
    start = time.perf_counter()
    stack = "import torch, timm, pytorch_grad_cam, cv2, matplotlib, sklearn"
    subprocess.run([sys.executable, "-c", stack], check=True)
    startup = time.perf_counter() - start
    results: dict = {"images": n_images, "annotated": n_annotated, "startup_s": startup, "commands": {}}
    commands = {
        "gallery": (["gallery", "-q"], "all", "1"),
        "annotate-iou": (["annotate-iou", "-q"], "annotated", "1"),
        "compare": (["compare", "-q"], "annotated", "compare"),
    }
    rows = []
    for name, (command, which, configs) in commands.items():
        out = WORK / f"scale_out_{name}"
        shutil.rmtree(out, ignore_errors=True)
        floor = wall([sys.executable, "-c", FLOOR, str(root), which, configs], root)
        took = wall([cli, *command, "--out", str(out)], root)  # the first run: nothing cached
        shutil.rmtree(out, ignore_errors=True)
        shares = profiled([cli, *command, "--out", str(out)], root, f"scale_{name}")
        n = n_images if which == "all" else n_annotated
        per_image = (took - startup) / n
        full = BTXRD_IMAGES if which == "all" else BTXRD_ANNOTATED
        projected = (startup + per_image * full) / 60
        results["commands"][name] = {
            "wall_s": took,
            "floor_s": floor,
            "ratio_to_floor": took / floor,
            "images": n,
            "projected_btxrd_min": projected,
            "profile_share": shares,
        }
        profile = " ".join(f"{k.split(' ')[0]} {v:.0%}" for k, v in shares.items())
        rows.append([name, n, f"{floor:.1f}", f"{took:.1f}", f"{took / floor:.2f}", f"{projected:.1f}", profile])
    print(table(f"BTXRD-sized radiographs ({n_images} images, {n_annotated} annotated; start-up {startup:.1f} s), "
                "first runs, EfficientNet-B0 224 px, CPU",
                ["command", "images", "floor s", "wall s", "x floor", "all BTXRD min", "profile (CPU share)"],
                rows))  # fmt: skip
    # re-runs: the cache spares decoding and the model
    out = WORK / "scale_out_annotate-iou"
    shutil.rmtree(out, ignore_errors=True)
    first = wall([cli, "annotate-iou", "-q", "--out", str(out)], root)
    again = wall([cli, "annotate-iou", "-q", "--threshold", "0.3", "--out", str(out)], root)
    gallery_after = wall([cli, "gallery", "-q", "--out", str(out)], root)
    uncached_gallery = wall([cli, "gallery", "-q", "--no-cache", "--out", str(WORK / "scale_out_nocache")], root)
    project_ratio = (startup + (again - startup) / n_annotated * BTXRD_ANNOTATED) / (
        startup + (first - startup) / n_annotated * BTXRD_ANNOTATED
    )
    results["rerun"] = {"annotate_first_s": first, "annotate_threshold_0.3_s": again, "ratio": again / first,
                        "projected_ratio_btxrd": project_ratio, "gallery_after_annotate_s": gallery_after,
                        "gallery_uncached_s": uncached_gallery, "cache_mb": sum(
                            p.stat().st_size for p in (out / ".cache").rglob("*") if p.is_file()) / 2**20}  # fmt: skip
    print(table("Re-runs from the explanation cache", ["run", "wall s", "x first run"],
                [["annotate-iou (first, writes the cache)", f"{first:.1f}", "1.00"],
                 ["annotate-iou --threshold 0.3 (cached)", f"{again:.1f}", f"{again / first:.2f}"],
                 ["  projected to all 1,867 annotated images", "", f"{project_ratio:.2f}"],
                 ["gallery after annotate-iou (tumour images cached)", f"{gallery_after:.1f}", ""],
                 ["gallery --no-cache", f"{uncached_gallery:.1f}", ""]]))  # fmt: skip
    print(json.dumps(results["rerun"], indent=1))
    save_results("btxrd_scale", results)


if __name__ == "__main__":
    main()
