"""The HTML report at BTXRD's scale: a generated annotate-iou report of 3,746 records, its page written, then
loaded and sorted in Debian's Chromium (the browser test measures the same on 4,001 rows).

    python benchmarks/bench_report.py
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from common import WORK, save_results, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from btxrd_cam.commands.report import run_report  # noqa: E402
from btxrd_cam.settings import ReportSettings, build_settings  # noqa: E402
from tests import browser  # noqa: E402
from tests.test_report import _hostile_folder  # noqa: E402


def main() -> None:
    if browser.unavailable():
        print(f"skipped: {browser.unavailable()}")
        return
    folder = WORK / "report_3746"
    shutil.rmtree(folder, ignore_errors=True)
    _hostile_folder(folder, 3746)
    start = time.perf_counter()
    page = run_report(build_settings(ReportSettings, results_dir=folder, quiet=True)).path
    written = time.perf_counter() - start
    loads, sorts = [], []
    for _ in range(3):
        with browser.open_page(page.as_uri()) as (tab, _log):
            loads.append(tab.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd"))
            sorts.append(
                tab.evaluate("""() => { const t = performance.now();
                document.querySelector('#images-table th:nth-child(7)').click(); return performance.now() - t; }""")
            )
    load, sort = sorted(loads)[1], sorted(sorts)[1]
    print(table("HTML report of 3,747 rows (Chromium, headless; medians of 3)", ["", "value"],
                [["page written (s)", f"{written:.2f}"], ["page size (MB)", f"{page.stat().st_size / 2**20:.1f}"],
                 ["load event (ms)", f"{load:.0f}"], ["sort by IoU (ms)", f"{sort:.0f}"]]))  # fmt: skip
    save_results("report", {"rows": 3747, "written_s": written, "page_mb": page.stat().st_size / 2**20,
                            "load_ms": load, "sort_ms": sort})  # fmt: skip


if __name__ == "__main__":
    main()
