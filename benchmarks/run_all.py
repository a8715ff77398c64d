"""`make bench`: every benchmark, one table each; numbers also go to benchmarks/results/<machine>.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "demo"

if __name__ == "__main__":
    if not (DEMO / "checkpoints" / "best_stratified.pt").is_file():
        print("building the demo first (for the --fast-decode check)", file=sys.stderr)
        subprocess.run([str(Path(sys.executable).with_name("btxrd-cam")), "demo", str(DEMO), "-q"], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    only = sys.argv[1:]  # e.g. `python benchmarks/run_all.py bench_sanity.py`
    scripts = ("bench_engine.py", "bench_compare_engine.py", "bench_decode.py", "bench_commands.py",
               "bench_resolution.py", "bench_sanity.py", "bench_evidence.py", "bench_btxrd_scale.py",
               "bench_report.py", "bench_audit.py", "bench_attribution.py", "bench_shards.py")  # fmt: skip
    for script in scripts:
        if only and script not in only:
            continue
        args = [sys.executable, str(HERE / script)]
        if script not in (
            "bench_engine.py",
            "bench_compare_engine.py",
            "bench_report.py",
            "bench_audit.py",
            "bench_attribution.py",
        ):
            args += ["--demo", str(DEMO)]
        subprocess.run(args, check=True, cwd=HERE)
