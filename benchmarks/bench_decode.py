"""Decoding BTXRD-sized radiographs: exact and reduced-DCT decoders, the share of decode + resize in the cost of
explaining an image, `--fast-decode` against the exact path on the demo test split, and throughput vs --workers.

    python benchmarks/bench_decode.py [--demo demo] [--images 24]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import timm
import torch
from common import WORK, median_time, radiograph_jpeg, save_results, table
from PIL import Image

from btxrd_cam.checkpoint import Checkpoint, load_checkpoint
from btxrd_cam.data import ImageItem, load_image, manifest_path, preprocess, split_items
from btxrd_cam.engine import Engine


def make_inputs(count: int) -> list[Path]:
    folder = WORK / "large"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"IMG{i:06d}.jpeg"
        if not path.exists():
            height, width = (2600, 2000) if i % 2 else (2000, 2600)
            radiograph_jpeg(path, height, width, seed=i)
        paths.append(path)
    return paths


def per_image(fn, paths, repeats=5) -> float:
    return median_time(lambda: [fn(p) for p in paths], repeats=repeats, warmup=1) / len(paths)


def decoders(paths) -> dict[str, float]:
    out = {
        "Pillow RGB decode": per_image(lambda p: np.asarray(Image.open(p).convert("RGB")), paths),
        "OpenCV IMREAD_COLOR": per_image(lambda p: cv2.imread(str(p), cv2.IMREAD_COLOR), paths),
        "btxrd-cam exact (grey, replicated on use)": per_image(lambda p: load_image(p, keep_gray=True), paths),
        "btxrd-cam --fast-decode (Pillow draft, >= 2x224)": per_image(
            lambda p: load_image(p, keep_gray=True, draft_size=448), paths),
        "OpenCV IMREAD_REDUCED_GRAYSCALE_4": per_image(
            lambda p: cv2.imread(str(p), cv2.IMREAD_REDUCED_GRAYSCALE_4), paths),
    }  # fmt: skip
    try:
        import simplejpeg

        out["simplejpeg GRAY min 448"] = per_image(
            lambda p: simplejpeg.decode_jpeg(p.read_bytes(), colorspace="GRAY", min_height=448, min_width=448), paths
        )
    except ImportError:
        pass
    return out


def decode_share(paths, model_ckpt) -> dict:
    """Per-image seconds of decode+resize vs the engine's prediction + Grad-CAM (batch 16, in memory)."""
    decode = per_image(lambda p: preprocess(load_image(p, keep_gray=True)[0], 224, (0.5,) * 3, (0.5,) * 3), paths)
    fast = per_image(
        lambda p: preprocess(load_image(p, keep_gray=True, draft_size=448)[0], 224, (0.5,) * 3, (0.5,) * 3), paths
    )
    engine = Engine(model_ckpt)
    x = torch.randn(16, 3, 224, 224)
    model = median_time(lambda: engine.explain_tensors(x, [None] * 16), repeats=5) / 16
    return {"decode_resize_s": decode, "fast_decode_resize_s": fast, "explain_s": model,
            "share_exact": decode / (decode + model), "share_fast": fast / (fast + model)}  # fmt: skip


def workers_sweep(paths, model_ckpt) -> dict[int, float]:
    items = [ImageItem(p.stem, p) for p in paths]
    out = {}
    for workers in (0, 1, 2, 4):
        engine = Engine(model_ckpt, batch_size=8, workers=workers)
        seconds = median_time(lambda e=engine: list(e.run(items)), repeats=3, warmup=1)
        out[workers] = len(items) / seconds
    return out


def fast_decode_agreement(demo: Path) -> dict | None:
    ckpt_path = demo / "checkpoints" / "best_stratified.pt"
    if not ckpt_path.is_file():
        return None
    items = split_items(demo / "data_raw", manifest_path(demo / "data" / "splits", "stratified", "test"))
    results = {}
    for fast in (False, True):
        engine = Engine(load_checkpoint(ckpt_path), fast_decode=fast, workers=0)
        start = time.perf_counter()
        results[fast] = list(engine.run(items, cams=False))
        results[f"s{fast}"] = time.perf_counter() - start
    exact, fast = results[False], results[True]
    agree = sum(a.pred == b.pred for a, b in zip(exact, fast, strict=True))
    diff = max(float(np.abs(a.probs - b.probs).max()) for a, b in zip(exact, fast, strict=True))
    return {"images": len(items), "prediction_agreement": agree / len(items), "max_prob_diff": diff,
            "exact_s": results["sFalse"], "fast_s": results["sTrue"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", type=Path, default=Path("demo"))
    parser.add_argument("--images", type=int, default=24)
    args = parser.parse_args()
    paths = make_inputs(args.images)
    size_kb = np.mean([p.stat().st_size for p in paths]) / 1024
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=3).eval()
    ckpt = Checkpoint(model, "efficientnet_b0", ["Normal", "Benign", "Malignant"], 224, (0.5,) * 3, (0.5,) * 3,
                      "bn2", None, "")  # fmt: skip
    times = decoders(paths)
    base = times["Pillow RGB decode"]
    print(table(f"Decoding {len(paths)} radiograph JPEGs of 2600x2000 px (~{size_kb:.0f} KB), ms per image",
                ["decoder", "ms", "speed-up vs Pillow RGB"],
                [[k, f"{v * 1000:.1f}", f"{base / v:.2f}x"] for k, v in times.items()]))  # fmt: skip
    share = decode_share(paths, ckpt)
    print(table("Share of decode + resize in explaining one image (CPU, engine batch 16)", ["path", "ms", "share"], [
        ["exact decode + resize", f"{share['decode_resize_s'] * 1000:.1f}", f"{share['share_exact']:.0%}"],
        ["--fast-decode + resize", f"{share['fast_decode_resize_s'] * 1000:.1f}", f"{share['share_fast']:.0%}"],
        ["prediction + Grad-CAM", f"{share['explain_s'] * 1000:.1f}", ""],
    ]))  # fmt: skip
    sweep = workers_sweep(paths, ckpt)
    print(table("Engine throughput on files vs --workers (batch 8, prediction + Grad-CAM)", ["workers", "images/s"],
                [[w, f"{v:.1f}"] for w, v in sweep.items()]))  # fmt: skip
    agreement = fast_decode_agreement(args.demo)
    if agreement:
        print(table("--fast-decode vs exact on the demo stratified test split", list(agreement),
                    [[f"{v:.4g}" if isinstance(v, float) else v for v in agreement.values()]]))  # fmt: skip
    else:
        print(f"\n(no demo at {args.demo}: run `make demo` for the fast-decode agreement check)")
    save_results(
        "decode",
        {
            "images": len(paths),
            "mean_kb": size_kb,
            "ms_per_image": {k: v * 1000 for k, v in times.items()},
            "share": share,
            "workers_images_per_s": sweep,
            "fast_decode_on_demo": agreement,
        },
    )


if __name__ == "__main__":
    main()
