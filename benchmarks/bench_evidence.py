"""`btxrd-cam evidence` against `annotate-iou` on the demo (first runs, no cache; best of two), the imputation's
sparse solve (the library's COLAMD `spsolve` against btxrd-cam's symmetric ordering, shared with sanity's ROAD),
and a profile of where evidence spends its time.

    python benchmarks/bench_evidence.py [--demo demo]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from common import WORK, btxrd_cam, interleaved_medians, run_command, save_results, table
from scipy.sparse.linalg import spsolve

from btxrd_cam.faithfulness import linear_system, solve_symmetric

PARTS = {
    "imputation (all)": ("fill_region", None),
    "  sparse solves": ("solve_symmetric", None),
    "  assembling the systems": ("linear_system", None),
    "control placement, body, top pixels": ("place_controls", "body_mask", "top_pixels"),
    "forwards of the copies": ("score_copies", None),
    "engine pass (decode + prediction + maps)": ("explain_all", "decode"),
    "pointing game and upsampling": ("pointing_game", "upsample_cam"),
    "figures": ("save_figure", None),
}


def solves() -> list[list]:
    """Milliseconds per imputation solve: a lesion-sized region (1 % and 3 % of the image) and `lesion_only` (all
    but 1 %), at the demo's 160 px and at 224 px."""
    rows = []
    rng = np.random.default_rng(0)
    for size in (160, 224):
        image = rng.standard_normal((3, size, size))
        for label, fraction, inverted in (("1 % removed", 0.01, False), ("3 % removed", 0.03, False),
                                          ("all but 1 % removed (lesion only)", 0.01, True)):  # fmt: skip
            side = int(np.sqrt(fraction) * size)
            keep = np.ones((size, size))
            keep[40 : 40 + side, 50 : 50 + side] = 0
            if inverted:
                keep = 1 - keep
            matrix, b = linear_system(keep, image)
            times = interleaved_medians(
                {
                    "library": lambda m=matrix, v=b: spsolve(m, v),
                    "ordered": lambda m=matrix, v=b: solve_symmetric(m, v),
                },
                repeats=5,
                warmup=1,
            )
            rows.append([size, label, matrix.shape[0], f"{1000 * times['library']:.1f}",
                         f"{1000 * times['ordered']:.1f}", f"{times['library'] / times['ordered']:.1f}x"])  # fmt: skip
    return rows


def profile(project: Path) -> dict:
    """Shares of the sampled CPU time (py-spy, every thread) whose stack holds each part's functions."""
    raw = WORK / "evidence.pyspy"
    spy = Path(sys.executable).with_name("py-spy")
    command = [str(spy), "record", "-r", "100", "-f", "raw", "-o", str(raw), "--", btxrd_cam(), "evidence", "-q",
               "--no-cache", "--out", str(WORK / "evidence_out")]  # fmt: skip
    subprocess.run(command, cwd=project, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counts = dict.fromkeys(PARTS, 0)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = {frame.split(" (")[0].rsplit(".", 1)[-1] for frame in stack.split(";")}
        total += int(samples)
        for label, needles in PARTS.items():
            if any(n is not None and n in frames for n in needles):
                counts[label] += int(samples)
    return {"samples": total, "share": {label: count / total for label, count in counts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", type=Path, default=Path(__file__).resolve().parents[1] / "demo")
    args = parser.parse_args()
    out = str(WORK / "evidence_out")
    walls = {"annotate-iou": [], "evidence": []}
    for _ in range(2):
        for command in walls:
            walls[command].append(run_command([btxrd_cam(), command, "-q", "--no-cache", "--out", out], args.demo)[0])
    best = {command: min(times) for command, times in walls.items()}
    ratio = best["evidence"] / best["annotate-iou"]
    print(table("evidence against annotate-iou on the demo's test split (first runs, --no-cache, best of two)",
                ["command", "wall s", "x annotate-iou"],
                [[c, f"{w:.1f}", f"{w / best['annotate-iou']:.2f}"] for c, w in best.items()]))  # fmt: skip
    rows = solves()
    print(table("The imputation's sparse solve, ms (SuperLU: the library's COLAMD spsolve vs the symmetric ordering)",
                ["px", "region", "unknowns", "library", "btxrd-cam", "speed-up"], rows))  # fmt: skip
    found = profile(args.demo)
    print(table(f"Where evidence spends its CPU time (py-spy, all threads, {found['samples']} samples)",
                ["part", "share"], [[k, f"{v:.0%}"] for k, v in found["share"].items()]))  # fmt: skip
    save_results(
        "evidence",
        {"wall_s": best, "ratio_to_annotate_iou": ratio, "solves_ms": rows, "profile": found},
    )


if __name__ == "__main__":
    main()
