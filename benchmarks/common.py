"""Helpers shared by the benchmark scripts: timing, machine description, result files, input generation."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
WORK = ROOT / ".work"


def machine() -> dict:
    info = {"cpu_cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_kind() -> str:
    return (
        "cuda-" + torch.cuda.get_device_name(0).replace(" ", "-").lower()
        if torch.cuda.is_available()
        else (f"cpu-{os.cpu_count()}core")
    )


def median_time(fn, repeats: int = 7, warmup: int = 2, sync: bool = False) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` runs."""
    return interleaved_medians({"fn": fn}, repeats, warmup, sync)["fn"]


def interleaved_medians(candidates: dict, repeats: int = 7, warmup: int = 3, sync: bool = False) -> dict:
    """Median seconds per candidate, measured round-robin so that drift (warm-up, clocks) hits all alike."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            if sync:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if sync:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def saved_results(name: str) -> dict:
    """What an earlier run of benchmark `name` saved on this kind of machine ({} if none)."""
    path = RESULTS / f"{machine_kind()}.json"
    return json.loads(path.read_text()).get(name, {}) if path.exists() else {}


def save_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{machine_kind()}.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing["machine"] = machine()
    existing[name] = payload
    path.write_text(json.dumps(existing, indent=2) + "\n")
    return path


def radiograph_jpeg(path: Path, height: int, width: int, seed: int) -> None:
    """A large grayscale radiograph-like JPEG (smooth anatomy + film grain), ~200 KB at 2600x2000."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((height // 100 + 2, width // 100 + 2)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) * 30 + 110
    field += rng.standard_normal((height, width)).astype(np.float32) * 2.5
    field = cv2.GaussianBlur(field, (0, 0), 0.7)
    cv2.imwrite(str(path), np.clip(field, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 80])


def run_command(args: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def btxrd_cam() -> str:
    return str(Path(sys.executable).with_name("btxrd-cam"))


def table(title: str, header: list[str], rows: list[list]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = lambda values: "  ".join(str(v).rjust(w) for v, w in zip(values, widths, strict=False))  # noqa: E731
    return "\n".join([f"\n{title}", line(header), line(["-" * w for w in widths]), *map(line, rows)])
