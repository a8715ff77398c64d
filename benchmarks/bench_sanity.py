"""`btxrd-cam sanity` wall time on the demo (EfficientNet-B0 at its 160 px) and with the demo's weights at 224 px
(48 images, 5 methods, ROAD on 16), with and without ROAD, and a profile of where the time goes.

    python benchmarks/bench_sanity.py [--demo demo]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from common import WORK, btxrd_cam, run_command, save_results, table

# where a sanity run spends its CPU time: (label, a function name that a sample's stack must contain)
PARTS = {
    "ROAD (all)": "road_combined",
    "  ROAD: sparse solves of the imputation": "solve_symmetric",
    "  ROAD: assembling the imputation system": "linear_system",
    "  ROAD: model forwards": "_call_impl",
    "explaining: trained + randomised passes": "_chunk_maps",
    "similarity: Spearman": "spearman",
    "similarity: SSIM": "ssim",
    "figures": "save_figure",
}


def at_224(demo: Path) -> Path:
    """A copy of the demo project whose checkpoint says 224 px (the same weights: EfficientNet takes any size)."""
    root = WORK / "demo_224"
    if not (root / "checkpoints" / "best_stratified.pt").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for part in ("data_raw", "data"):
            (root / part).symlink_to((demo / part).resolve())
        (root / "checkpoints").mkdir()
        payload = torch.load(demo / "checkpoints" / "best_stratified.pt", map_location="cpu", weights_only=True)
        payload["config"]["data"]["image_size"] = 224
        torch.save(payload, root / "checkpoints" / "best_stratified.pt")
    return root


def profile(project: Path) -> dict:
    """Shares of the sampled CPU time (py-spy, every thread) whose stack holds each part's function."""
    raw = WORK / "sanity_224.pyspy"
    spy = Path(sys.executable).with_name("py-spy")
    command = [str(spy), "record", "-r", "50", "-f", "raw", "-o", str(raw), "--", btxrd_cam(), "sanity", "-q",
               "--out", str(WORK / "sanity_out")]  # fmt: skip
    subprocess.run(command, cwd=project, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counts: dict[str, int] = dict.fromkeys(PARTS, 0)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = {frame.split(" (")[0].rsplit(".", 1)[-1] for frame in stack.split(";")}  # Module._call_impl
        total += int(samples)
        for label, needle in PARTS.items():
            if needle in frames and (needle != "_call_impl" or "road_combined" in frames):
                counts[label] += int(samples)
    return {"samples": total, "share": {label: count / total for label, count in counts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", type=Path, default=Path(__file__).resolve().parents[1] / "demo")
    parser.add_argument("--profile-only", action="store_true")
    args = parser.parse_args()
    projects = {"demo (160 px)": args.demo, "demo weights at 224 px": at_224(args.demo)}
    rows, results = [], {}
    for label, project in projects.items() if not args.profile_only else []:
        out = str(WORK / "sanity_out")
        full, _ = run_command([btxrd_cam(), "sanity", "-q", "--out", out], project)
        bare, _ = run_command([btxrd_cam(), "sanity", "-q", "--no-road", "--out", out], project)
        results[label] = {"wall_s": full, "no_road_wall_s": bare, "road_s": full - bare}
        rows.append([label, f"{full:.0f}", f"{bare:.0f}", f"{full - bare:.0f}", f"{(full - bare) / full:.0%}"])
    if rows:
        print(table("btxrd-cam sanity: 48 images, 5 methods, 10 randomisation steps, ROAD on 16 images x 8 maps",
                    ["", "wall s", "--no-road s", "ROAD s", "ROAD share"], rows))  # fmt: skip
    found = profile(projects["demo weights at 224 px"])
    print(table(f"Where sanity spends its CPU time at 224 px (py-spy, all threads, {found['samples']} samples)",
                ["part", "share"], [[k, f"{v:.0%}"] for k, v in found["share"].items()]))  # fmt: skip
    results["profile_224"] = found
    save_results("sanity", results)


if __name__ == "__main__":
    main()
