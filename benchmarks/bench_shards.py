"""Shards and merge on the demo: annotate-iou, compare and evidence as one run and as 3 shards + `merge`.

- merge's time against the summary-and-figures time of one run (both in this process, after a warm-up: `finish`
  of one run's records, and `run_merge` — reading 3 parts, checking, joining, the same `finish`), and what merge
  adds to `finish` (reading, checking and joining the parts) timed alone;
- the total CPU time (user + system, of every child process) of the 3 shards + merge against one run, raw and with
  the extra processes' fixed start-up aside: (N − 1) shards' start-up (imports, checkpoint, model: measured by a
  shard with no image) and merge's imports (measured by importing what it imports); each process's least CPU time
  of two rounds;
- that the merged files equal one run's, byte for byte.

The CPU comparison runs on `--cpu-project` (default: the demo, 30 annotated test images — so small that each shard's
first batch, its warm-up, weighs; bench_btxrd_scale.py's 400-image project is the fairer test).

    python benchmarks/bench_shards.py [--demo demo] [--cpu-project benchmarks/.work/btxrd_scale_400]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import WORK, btxrd_cam, save_results, saved_results, table

from btxrd_cam.commands.merge import SETTINGS, run_merge
from btxrd_cam.outputs import output_folder
from btxrd_cam.pipeline import command_module, complete
from btxrd_cam.settings import MergeSettings, build_settings
from btxrd_cam.shards import WHOLE, check_parts, find_parts, join, read_part

COMMANDS = {"annotate-iou": [], "compare": [], "evidence": []}
COUNT = 3
ROUNDS = 5


def cpu_seconds(args: list[str], cwd: Path) -> float:
    """User + system CPU seconds of one child process (and its threads)."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_utime + usage.ru_stime


def written(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.relative_to(out).parts[0] not in (".cache", "shards")
    }


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def merge_against_finish(demo: Path, command: str) -> dict:
    """In this process: one run's finish, and merge of the same run as 3 shards (medians of 5 interleaved rounds,
    after a warm-up)."""
    os.chdir(demo)
    one_out, sharded_out = WORK / f"shards_one_{command}", WORK / f"shards_sharded_{command}"
    for out in (one_out, sharded_out):
        shutil.rmtree(out, ignore_errors=True)
    module = command_module(command)
    settings = build_settings(SETTINGS[command], out=one_out, quiet=True, no_cache=True)
    outputs = output_folder(settings)
    engine = module.make_engine(settings)
    part = module.examine(settings, engine, outputs, WHOLE)
    module.finish(part, settings, outputs)  # warm-up (fonts, first figure)
    for index in range(COUNT):
        shard = f"{index}/{COUNT}"
        sharded = build_settings(SETTINGS[command], out=sharded_out, quiet=True, no_cache=True, shard=shard)
        complete(command, sharded, output_folder(sharded))
    merge_settings = build_settings(MergeSettings, out=sharded_out, quiet=True)
    finishes, merges = [], []
    for _ in range(ROUNDS):  # interleaved, medians: this machine wanders by ±10 %
        finishes.append(timed(lambda: module.finish(part, settings, outputs)))
        merges.append(timed(lambda: run_merge(merge_settings)))
    finish_s, merge_s = statistics.median(finishes), statistics.median(merges)
    # what merge adds to finish, timed alone (the two medians above differ mostly by this machine's noise)
    paths = find_parts(sharded_out)[command]
    joining_s = statistics.median(
        timed(lambda: check_parts(parts := [read_part(path) for path in paths], paths) or join(parts))
        for _ in range(ROUNDS)
    )
    same = written(one_out) == written(sharded_out)
    return {
        "finish_s": finish_s, "merge_s": merge_s, "ratio": merge_s / finish_s, "joining_s": joining_s,
        "ratio_from_joining": (finish_s + joining_s) / finish_s, "byte_identical": same,
    }  # fmt: skip


def cpu_of_shards(demo: Path, command: str, repeats: int = 2) -> dict:
    """Total CPU seconds: one run; 3 shards + merge; a shard with no image (a process's fixed start-up); merge's
    imports — each the least of `repeats` rounds (a run's CPU time wanders by ±10 % on this machine)."""
    cli = btxrd_cam()
    out_one, out_sharded, out_empty = (WORK / f"shards_cpu_{name}_{command}" for name in ("one", "sharded", "empty"))
    base = [cli, command, "-q", "--no-cache"]
    imports = f"import btxrd_cam.cli, btxrd_cam.commands.merge, btxrd_cam.pipeline as p; p.command_module({command!r})"
    rounds = []
    for _ in range(repeats):
        for out in (out_one, out_sharded, out_empty):
            shutil.rmtree(out, ignore_errors=True)
        one = cpu_seconds([*base, "-O", str(out_one)], demo)
        shards = [cpu_seconds([*base, "-O", str(out_sharded), "--shard", f"{k}/{COUNT}"], demo) for k in range(COUNT)]
        merge = cpu_seconds([cli, "merge", str(out_sharded), "-q"], demo)
        # more shards than batches: shard 999 of 1000 has no image
        empty = cpu_seconds([*base, "-O", str(out_empty), "--shard", "999/1000"], demo)
        merge_imports = cpu_seconds([sys.executable, "-c", imports], demo)
        rounds.append((one, shards, merge, empty, merge_imports))
    one = min(r[0] for r in rounds)
    shards = [min(r[1][k] for r in rounds) for k in range(COUNT)]
    merge, empty, merge_imports = (min(r[i] for r in rounds) for i in (2, 3, 4))
    total = sum(shards) + merge
    extra = (COUNT - 1) * empty + merge_imports
    return {
        "one_cpu_s": one, "shards_cpu_s": shards, "merge_cpu_s": merge, "startup_cpu_s": empty,
        "merge_imports_cpu_s": merge_imports, "ratio": total / one, "ratio_startup_aside": (total - extra) / one,
        "one_cpu_s_rounds": [r[0] for r in rounds],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", type=Path, default=Path(__file__).resolve().parents[1] / "demo")
    parser.add_argument("--cpu-project", type=Path, help="where to compare CPU time (default: the demo)")
    parser.add_argument("--no-cpu", action="store_true", help="merge against finish only (CPU times as saved)")
    args = parser.parse_args()
    demo = args.demo.resolve()
    cpu_project = (args.cpu_project or args.demo).resolve()
    project = saved_results("shards").get("cpu_project") if args.no_cpu else cpu_project.name
    WORK.mkdir(parents=True, exist_ok=True)
    results, rows = {}, []
    for command in COMMANDS:
        merged = merge_against_finish(demo, command)
        cpu = saved_results("shards")[command]["cpu"] if args.no_cpu else cpu_of_shards(cpu_project, command)
        results[command] = {"merge": merged, "cpu": cpu}
        rows.append([command, f"{merged['finish_s']:.2f}", f"{merged['merge_s']:.2f}", f"{merged['ratio']:.2f}",
                     f"{merged['joining_s'] * 1000:.0f}", f"{merged['ratio_from_joining']:.3f}",
                     "yes" if merged["byte_identical"] else "NO", f"{cpu['one_cpu_s']:.1f}",
                     f"{sum(cpu['shards_cpu_s']) + cpu['merge_cpu_s']:.1f}", f"{cpu['startup_cpu_s']:.1f}",
                     f"{cpu['ratio']:.2f}", f"{cpu['ratio_startup_aside']:.2f}"])  # fmt: skip
    print(table(f"{COUNT} shards + merge against one run (merge: the demo; CPU time: {project}; "
                f"{os.cpu_count()} cores)",
                ["command", "finish s", "merge s", "merge x finish", "read+check+join ms", "x finish (from it)",
                 "same bytes", "one run CPU s",
                 "shards+merge CPU s", "start-up CPU s", "x one run", "x, start-ups aside"], rows))  # fmt: skip
    save_results("shards", {"cpu_project": project, **results})
    if not all(r["merge"]["byte_identical"] for r in results.values() if isinstance(r, dict)):
        sys.exit("merged files differ from one run's")


if __name__ == "__main__":
    main()
