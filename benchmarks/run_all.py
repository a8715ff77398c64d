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
    for script in ("bench_engine.py", "bench_decode.py", "bench_commands.py"):
        args = [sys.executable, str(HERE / script)]
        if script == "bench_decode.py":
            args += ["--demo", str(DEMO)]
        subprocess.run(args, check=True, cwd=HERE)
