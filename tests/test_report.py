"""The HTML report: what it reads and writes, and — in Debian's Chromium — how the page behaves."""

from __future__ import annotations

import json
import shutil
import time

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from btxrd_cam.cli import app
from btxrd_cam.commands.annotate import run_annotate
from btxrd_cam.commands.audit import run_audit
from btxrd_cam.commands.compare import run_compare
from btxrd_cam.commands.evidence import run_evidence
from btxrd_cam.commands.gallery import run_gallery
from btxrd_cam.commands.infer import run_infer
from btxrd_cam.commands.report import run_report
from btxrd_cam.commands.sanity import run_sanity
from btxrd_cam.outputs import overlay_name
from btxrd_cam.settings import (
    AnnotateSettings,
    AuditSettings,
    CompareSettings,
    EvidenceSettings,
    GallerySettings,
    InferSettings,
    ReportSettings,
    SanitySettings,
    build_settings,
)
from tests import browser
from tests.conftest import project_settings

HOSTILE = "<script>alert(1)</script>"
needs_browser = pytest.mark.skipif(browser.unavailable() is not None, reason=browser.unavailable() or "")


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_project_template):
    """A results folder written by every command on the tiny project."""
    project = tmp_path_factory.mktemp("report") / "project"
    shutil.copytree(tiny_project_template, project)
    out = project / "out"
    run_gallery(project_settings(GallerySettings, project, k="1"))
    run_annotate(project_settings(AnnotateSettings, project))
    run_compare(project_settings(CompareSettings, project, methods="gradcam,eigencam", layers="bn2,blocks.2"))
    run_sanity(project_settings(SanitySettings, project, images="4", road_images="1", methods="gradcam"))
    run_infer(project_settings(InferSettings, project, metrics=out / "metrics.json", output=project / "p.jsonl"))
    run_evidence(project_settings(EvidenceSettings, project, controls="2"))
    run_audit(build_settings(AuditSettings, data_root=project / "data_raw", splits_dir=project / "data/splits", out=out,
                             quiet=True))  # fmt: skip
    return out


def _report(folder, **extra):
    return run_report(build_settings(ReportSettings, results_dir=folder, quiet=True, **extra))


def test_every_report_present_gets_its_section(results):
    outcome = _report(results)
    html = outcome.path.read_text()
    assert outcome.path == results / "report.html" and outcome.notes == []
    assert outcome.sections == ["annotation", "audit", "classification", "comparison", "evidence", "gallery", "sanity"]
    for section in ("classification", "galleries", "annotation", "images", "comparison", "sanity", "evidence", "audit"):
        assert f'id="{section}"' in html
    evidence = json.loads((results / "evidence_report.json").read_text())
    assert 'src="evidence.png"' in html and 'src="evidence_examples.png"' in html and 'src="audit.png"' in html
    assert "drop, lesion removed" in html and html.count(">yes</td>") + html.count(">no</td>") >= len(
        [r for r in evidence["records"] if r["relies_on_lesion"] is not None]
    )
    annotation = json.loads((results / "annotation_report.json").read_text())
    assert html.count("<tr data-class=") == len(annotation["records"]) + len(annotation["failed"])
    sha = json.loads((results / "comparison_report.json").read_text())["checkpoint"]["sha256"]
    assert sha in html and 'src="images/' in html and 'src="gallery_Benign.png"' in html
    assert "http://" not in html and "https://" not in html  # nothing outside the folder
    assert _report(results).path.read_text() == html  # deterministic


def test_a_page_elsewhere_links_back_and_self_contained_embeds(results, tmp_path):
    page = _report(results, output=tmp_path / "sub" / "page.html").path.read_text()
    assert f'src="../../{results.parent.name}/out/images/' not in page  # relative to the page, not a guess
    assert 'src="../../' in page or 'src="../' in page
    single = _report(results, output=tmp_path / "one.html", self_contained=True).path.read_text()
    assert 'src="images/' not in single and 'src="data:image/jpeg;base64,' in single
    assert 'src="data:image/png;base64,' in single


def test_no_folder_or_no_report_exits_2_saying_what_was_looked_for(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(tmp_path / "nowhere")], catch_exceptions=False)
    assert result.exit_code == 2 and "RESULTS_DIR: got" in result.stderr and "no such directory" in result.stderr
    result = runner.invoke(app, ["report", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 2
    assert (
        "looked for gallery.json, annotation_report.json, comparison_report.json, sanity_report.json" in result.stderr
    )


def test_a_malformed_or_newer_report_becomes_a_note_and_the_rest_renders(results, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(results, folder)
    (folder / "sanity_report.json").write_text("{broken")
    comparison = json.loads((folder / "comparison_report.json").read_text())
    comparison["schema_version"] = 99
    (folder / "comparison_report.json").write_text(json.dumps(comparison))
    outcome = _report(folder)
    assert "sanity" not in outcome.sections and "comparison" not in outcome.sections
    assert "annotation" in outcome.sections
    notes = " ".join(outcome.notes)
    assert "sanity_report.json: not readable JSON" in notes and "comparison_report.json: schema version 99" in notes
    html = outcome.path.read_text()
    assert 'id="notes"' in html and 'id="annotation"' in html and 'id="sanity"' not in html


def _hostile_folder(folder, count: int):
    """An annotate-iou report of `count` records (one of them named like a script) and their overlays."""
    folder.mkdir(parents=True)
    (folder / "images/annotate-iou").mkdir(parents=True)
    ok, thumbnail = cv2.imencode(".jpg", np.full((48, 64, 3), 120, np.uint8))
    rng = np.random.default_rng(0)
    classes = ["Benign", "Malignant", f"Ben{HOSTILE}"]
    subtypes = ["osteosarcoma", "giant cell tumor", f"<b>{HOSTILE}</b>"]
    records = []
    for i in range(count):
        image_id = HOSTILE if i == 7 else f"IMG{i:06d}"
        label = classes[i % 3]
        pred = label if rng.random() < 0.8 else classes[(i + 1) % 3]
        records.append({
            "image_id": image_id, "label": label, "pred": pred, "confidence": float(rng.random()),
            "subtype": subtypes[i % 3], "iou": float(rng.random()), "dice": float(rng.random()),
            "pointing_game": bool(rng.random() < 0.3), "energy_pointing_game": 0.1, "pxap": float(rng.random()),
            "cam_area": 0.1, "mask_area": 0.05, "error": None,
        })  # fmt: skip
        (folder / "images/annotate-iou" / overlay_name(image_id)).write_bytes(thumbnail.tobytes())
    failed = [{**records[0], "image_id": "IMG_bad", "iou": None, "pxap": None, "dice": None,
               "pointing_game": None, "error": f"IMG_bad.json: malformed JSON {HOSTILE}"}]  # fmt: skip
    describe = {"count": count, "mean": 0.5, "median": 0.5, "std": 0.1, "iqr": 0.2, "min": 0.0, "max": 1.0}
    summary = {m: describe for m in ("iou", "dice", "pointing_game", "energy_pointing_game", "pxap", "cam_area",
                                      "mask_area")}  # fmt: skip
    summary.update(iou_mean_ci95=[0.4, 0.6], pointing_game_hit_rate=0.3, pointing_game_ci95=[0.2, 0.4],
                   pxap_mean_ci95=[0.4, 0.6], count=count)  # fmt: skip
    report = {
        "schema_version": 1, "command": "annotate-iou",
        "settings": {"split": HOSTILE, "subset": "test", "method": f"gradcam{HOSTILE}", "target": "pred",
                     "select": "all", "resolution": 1024, "threshold": 0.5},
        "threshold": {"mode": "fixed", "value": 0.5, "tuning": None},
        "checkpoint": {"name": f"{HOSTILE}.pt", "sha256": "0" * 64, "arch": "efficientnet_b0",
                       "class_names": classes, "image_size": 224, "target_layer": "bn2"},
        "images_in_split": count + 1, "annotated_images": count + 1, "evaluated": count, "excluded_by_select": 0,
        "summary": summary, "breakdowns": {key: {HOSTILE: summary} for key in ("by_class", "by_outcome",
                                                                               "by_subtype", "by_lesion_size")},
        "sweep": {"note": "", "thresholds": [0.5], "mean_iou": [0.5]},
        "records": records, "failed": failed,
    }  # fmt: skip
    (folder / "annotation_report.json").write_text(json.dumps(report))
    return report


def test_strings_from_files_are_escaped(tmp_path):
    _hostile_folder(tmp_path / "hostile", 20)
    html = _report(tmp_path / "hostile").path.read_text()
    assert HOSTILE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # the page's own


@needs_browser
def test_the_page_works_in_a_real_browser(results, tmp_path):
    page_path = _report(results).path
    annotation = json.loads((results / "annotation_report.json").read_text())
    records = annotation["records"] + annotation["failed"]
    with browser.open_page(page_path.as_uri()) as (page, log):
        browser.load_every_image(page)
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        assert log["console_errors"] == [] and log["page_errors"] == []
        assert all(url.startswith(("file://", "data:")) for url in log["requests"]), log["requests"]
        shown = "Array.from(document.images).filter(i => i.getAttribute('src'))"  # the lightbox's is empty
        broken = page.evaluate(f"{shown}.filter(i => !(i.naturalWidth > 0)).map(i => i.src)")
        assert broken == [] and page.evaluate(f"{shown}.length") > len(records)
        rows = page.locator("#images-table tbody tr")
        assert rows.count() == len(records)
        # sorting by IoU orders the rows (rows without a value last), and a second click reverses
        page.click("#images-table th:has-text('IoU')")
        ious = page.evaluate(_column_values, 6)
        values = [v for v in ious if v is not None]
        assert values == sorted(values) and ious[len(values) :] == [None] * (len(ious) - len(values))
        page.click("#images-table th:has-text('IoU')")
        values = [v for v in page.evaluate(_column_values, 6) if v is not None]
        assert values == sorted(values, reverse=True)
        # each filter hides exactly the other rows
        label = records[0]["label"]
        page.select_option("#filter-class", label)
        assert _visible_ids(page) == sorted(r["image_id"] for r in records if r["label"] == label)
        page.select_option("#filter-class", "")
        page.select_option("#filter-outcome", "correct")
        expected = sorted(r["image_id"] for r in records if not r["error"] and r["pred"] == r["label"])
        assert _visible_ids(page) == expected
        page.select_option("#filter-outcome", "")
        subtype = records[0]["subtype"]
        page.select_option("#filter-subtype", subtype)
        assert _visible_ids(page) == sorted(r["image_id"] for r in records if r["subtype"] == subtype)
        page.select_option("#filter-subtype", "")
        page.fill("#filter-id", records[1]["image_id"].lower())
        assert _visible_ids(page) == [records[1]["image_id"]]
        page.fill("#filter-id", "")
        # a click on a thumbnail opens the overlay
        page.locator("#images-table tbody img").first.click()
        assert page.locator("#lightbox.open img").evaluate("i => i.naturalWidth") > 0


_column_values = """column => Array.from(document.querySelectorAll('#images-table tbody tr'))
    .filter(r => !r.hidden).map(r => { const v = r.cells[column].getAttribute('data-v');
                                       return v === '' ? null : parseFloat(v); })"""


def _visible_ids(page) -> list[str]:
    return sorted(
        page.evaluate(
            """() => Array.from(document.querySelectorAll('#images-table tbody tr'))
                .filter(r => !r.hidden).map(r => r.cells[1].textContent)"""
        )
    )


@needs_browser
def test_hostile_names_show_as_text_and_4000_rows_load_and_sort(tmp_path, capsys):
    report = _hostile_folder(tmp_path / "big", 4000)
    started = time.perf_counter()
    page_path = _report(tmp_path / "big").path
    written = time.perf_counter() - started
    with browser.open_page(page_path.as_uri()) as (page, log):
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
        assert page.locator("#images-table tbody tr").count() == 4001
        sort_ms = page.evaluate(
            """() => { const t = performance.now();
                       document.querySelector('#images-table th:nth-child(7)').click();
                       return performance.now() - t; }"""
        )
        ious = [v for v in page.evaluate(_column_values, 6) if v is not None]
        assert ious == sorted(ious) and len(ious) == 4000
        # the script-like id, class, subtype and error are text in the live DOM, never markup
        cell = page.evaluate(
            "() => Array.from(document.querySelectorAll('#images-table tbody tr')).map(r => r.cells[1].textContent)"
            ".filter(t => t.includes('script'))"
        )
        assert cell == [report["records"][7]["image_id"]]
        assert page.evaluate("document.scripts.length") == 1 and dialogs == []
        assert HOSTILE in page.inner_text("#annotation") and HOSTILE in page.inner_text("header")
        assert log["console_errors"] == [] and log["page_errors"] == []
    with capsys.disabled():
        print(f"\n4,001-row report: written in {written:.2f} s, loaded in {load_ms:.0f} ms, sorted by IoU in "
              f"{sort_ms:.0f} ms (Chromium, this machine)")  # fmt: skip
