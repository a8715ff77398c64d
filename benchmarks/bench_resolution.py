"""How far IoU, pointing game and PxAP move when compare scores at a reduced resolution instead of the original
size, and what each resolution costs: on the demo's test split and on BTXRD-sized synthetic radiographs
(long side 1,500-3,000 px, the demo's lesions and annotations, scored with the demo's checkpoint).

    python benchmarks/bench_resolution.py [--demo demo] [--btxrd-images 48]

For every configuration (28 CAMs + 3 baselines) and metric: the largest change of the mean over configurations
(|Δ mean|, what a report would show) and the mean per-image absolute change (|Δ| per image).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from common import WORK, save_results, table

from btxrd_cam.commands.compare import run_compare
from btxrd_cam.settings import CompareSettings, build_settings
from btxrd_cam.synthetic import BTXRD_LONG_SIDE, write_dataset

METRICS = ("iou", "pointing_game", "pxap")
RESOLUTIONS = (512, 1024)


def btxrd_sized_project(demo: Path, count: int) -> Path:
    root = WORK / f"btxrd_sized_{count}"
    if not (root / "checkpoints" / "best_stratified.pt").is_file():
        shutil.rmtree(root, ignore_errors=True)
        write_dataset(root, count, seed=11, long_side_range=BTXRD_LONG_SIDE)
        (root / "checkpoints").mkdir(parents=True)
        shutil.copy(demo / "checkpoints" / "best_stratified.pt", root / "checkpoints")
        for subset in ("train", "val"):  # every image is scored: make them all the test subset
            (root / "data" / "splits" / f"stratified_{subset}.csv").unlink()
        lines = ["image_id,split,label"] + [
            f"{p.name},test,{label}"
            for p, label in sorted((p, _label(root, p.stem)) for p in (root / "data_raw" / "images").iterdir())
        ]
        (root / "data" / "splits" / "stratified_test.csv").write_text("\n".join(lines) + "\n")
    return root


def _label(root: Path, stem: str) -> str:
    import csv

    with (root / "data_raw" / "dataset.csv").open() as f:
        for row in csv.DictReader(f):
            if Path(row["image_id"]).stem == stem:
                return "Malignant" if row["malignant"] == "1" else "Benign" if row["benign"] == "1" else "Normal"
    raise KeyError(stem)


def run(project: Path, resolution) -> tuple[dict, float]:
    settings = build_settings(
        CompareSettings,
        ckpt=project / "checkpoints" / "best_stratified.pt",
        data_root=project / "data_raw",
        splits_dir=project / "data" / "splits",
        out=WORK / "resolution_out",
        resolution=resolution,
        quiet=True,
        no_cache=True,  # each resolution pays for its own pass: the times compare scoring, not the cache
    )
    start = time.perf_counter()
    report = run_compare(settings).report
    return report, time.perf_counter() - start


def deviations(base: dict, other: dict) -> dict:
    names = [c["name"] for c in base["configurations"]]
    out = {}
    for metric in METRICS:
        mean_shift, per_image = [], []
        for name in names:
            a = np.array([float(r["metrics"][name][metric]) for r in base["records"]])
            b = np.array([float(r["metrics"][name][metric]) for r in other["records"]])
            mean_shift.append(abs(a.mean() - b.mean()))
            per_image.append(np.abs(a - b).mean())
        worst = int(np.argmax(mean_shift))
        reference = names.index(base["reference"])
        out[metric] = {
            "max_abs_mean_change": float(max(mean_shift)),
            "max_abs_mean_change_at": names[worst],
            "mean_abs_per_image_change": float(np.mean(per_image)),
            "reference_abs_mean_change": float(mean_shift[reference]),
            "reference_mean_abs_per_image_change": float(per_image[reference]),
        }
    ranking_same = base["ranking"][:5] == other["ranking"][:5]
    out["top5_ranking_unchanged"] = ranking_same
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", type=Path, default=Path(__file__).resolve().parents[1] / "demo")
    parser.add_argument("--btxrd-images", type=int, default=48)
    args = parser.parse_args()
    datasets = {"demo test split": args.demo, "BTXRD-sized": btxrd_sized_project(args.demo, args.btxrd_images)}
    results, rows = {}, []
    for label, project in datasets.items():
        base, base_s = run(project, "original")
        results[label] = {"images": base["evaluated"], "seconds": {"original": base_s}}
        for resolution in RESOLUTIONS:
            other, seconds = run(project, resolution)
            found = deviations(base, other)
            results[label]["seconds"][str(resolution)] = seconds
            results[label][str(resolution)] = found
            for metric in METRICS:
                cell = found[metric]
                rows.append([label, resolution, metric, f"{cell['max_abs_mean_change']:.4f}",
                             cell["max_abs_mean_change_at"], f"{cell['mean_abs_per_image_change']:.4f}",
                             f"{cell['reference_abs_mean_change']:.4f}",
                             f"{cell['reference_mean_abs_per_image_change']:.4f}", found["top5_ranking_unchanged"],
                             f"{seconds:.1f} vs {base_s:.1f}"])  # fmt: skip
    print(table("compare at a reduced scoring resolution vs the original size (31 configurations)",
                ["images", "long side", "metric", "max |Δ mean|", "at", "mean |Δ| per image",
                 "gradcam@bn2 |Δ mean|", "its |Δ| per image", "same top 5", "wall s (vs original)"], rows))  # fmt: skip
    save_results("scoring_resolution", results)


if __name__ == "__main__":
    main()
