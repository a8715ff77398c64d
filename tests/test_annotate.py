import json

import pytest

from btxrd_cam.commands.annotate import METRICS, run_annotate
from btxrd_cam.commands.explain import run_explain
from btxrd_cam.errors import UsageError
from btxrd_cam.metrics import SWEEP_THRESHOLDS
from btxrd_cam.settings import AnnotateSettings, ExplainSettings, build_settings
from tests.conftest import project_settings

RECORD_KEYS = {
    "image_id",
    "label",
    "pred",
    "confidence",
    "subtype",
    "iou",
    "dice",
    "pointing_game",
    "energy_pointing_game",
    "pxap",
    "cam_area",
    "mask_area",
    "center",
    "view",
    "body_region",
    "megapixels",
    "region_used",
    "lesions",
    "error",
}


def _settings(project, **extra):
    return project_settings(AnnotateSettings, project, **extra)


def _annotated_ids(project, subset="test"):
    lines = (project / f"data/splits/stratified_{subset}.csv").read_text().splitlines()[1:]
    ids = [line.split(",")[0].split(".")[0] for line in lines]
    return [i for i in ids if (project / "data_raw/Annotations" / f"{i}.json").is_file()]


def test_report_scores_every_annotated_image(tiny_project):
    outcome = run_annotate(_settings(tiny_project))
    report = json.loads((tiny_project / "out/annotation_report.json").read_text())
    assert report == json.loads(outcome.text)
    assert [r["image_id"] for r in report["records"]] == _annotated_ids(tiny_project)
    for record in report["records"]:
        assert set(record) == RECORD_KEYS and record["error"] is None
        assert 0 <= record["iou"] <= 1 and 0 < record["mask_area"] < 1 and record["label"] != "Normal"
    summary = report["summary"]
    assert summary["iou"]["count"] == len(report["records"]) and set(METRICS) <= set(summary)
    assert summary["iou_mean_ci95"][0] <= summary["iou"]["mean"] <= summary["iou_mean_ci95"][1]
    assert report["sweep"]["thresholds"] == list(SWEEP_THRESHOLDS) and len(report["sweep"]["mean_iou"]) == 19
    assert set(report["breakdowns"]) == {
        "by_class", "by_outcome", "by_subtype", "by_lesion_size", "by_centre", "by_view", "by_body_region",
        "by_image_size",
    }  # fmt: skip
    for key in ("by_centre", "by_view", "by_body_region"):
        groups = report["breakdowns"][key]
        assert sum(g["count"] for g in groups.values()) == len(report["records"]) and "unknown" not in groups
    assert set(report["breakdowns"]["by_view"]) <= {"frontal", "lateral", "oblique"}
    assert all(r["region_used"] == "outline" and r["lesions"] >= 1 for r in report["records"])
    assert (tiny_project / "out/annotation_comparison.png").is_file()


def test_iou_equals_what_explain_image_reports(tiny_project):
    report = run_annotate(_settings(tiny_project, threshold="0.3")).report
    record = report["records"][0]
    image = next((tiny_project / "data_raw/images").glob(record["image_id"] + ".*"))
    explain = build_settings(
        ExplainSettings,
        ckpt=tiny_project / "checkpoints/best_stratified.pt",
        inputs=[str(image)],
        out=tiny_project / "explain",
        threshold="0.3",
        quiet=True,
        annotation=tiny_project / "data_raw/Annotations" / f"{record['image_id']}.json",
    )
    (one,) = run_explain(explain).records
    assert one["metrics"]["iou"] == pytest.approx(record["iou"], abs=1e-12)
    assert one["metrics"]["pxap"] == pytest.approx(record["pxap"], abs=1e-5)  # batched convs differ by ~1e-7


def test_same_inputs_give_byte_identical_json(tiny_project):
    first = run_annotate(_settings(tiny_project)).text
    assert run_annotate(_settings(tiny_project, batch_size=2, workers=2)).text == first


def test_tune_picks_on_val_and_records_it(tiny_project):
    report = run_annotate(_settings(tiny_project, threshold="tune")).report
    tuning = report["threshold"]["tuning"]
    assert tuning["tuned_on"] == "stratified/val" and tuning["images"] == len(_annotated_ids(tiny_project, "val"))
    assert report["threshold"]["value"] == tuning["value"] and tuning["value"] in SWEEP_THRESHOLDS


def test_tune_refuses_without_val_or_on_val(tiny_project):
    with pytest.raises(UsageError, match="cannot score val itself"):
        run_annotate(_settings(tiny_project, threshold="tune", subset="val"))
    val = tiny_project / "data/splits/stratified_val.csv"
    rows = val.read_text().splitlines()
    val.write_text("\n".join([rows[0]] + [r for r in rows[1:] if r.endswith("Normal")]) + "\n")
    with pytest.raises(UsageError, match="needs annotated images"):
        run_annotate(_settings(tiny_project, threshold="tune"))
    val.unlink()
    with pytest.raises(UsageError, match="needs a val manifest"):
        run_annotate(_settings(tiny_project, threshold="tune"))


def test_no_annotated_image_gives_an_empty_valid_report(tiny_project):
    path = tiny_project / "data/splits/stratified_test.csv"
    path.write_text("\n".join(r for r in path.read_text().splitlines() if not r.endswith(("Benign", "Malignant"))))
    outcome = run_annotate(_settings(tiny_project))
    assert outcome.empty and outcome.report["records"] == [] and outcome.report["summary"]["iou"]["count"] == 0
    assert json.loads((tiny_project / "out/annotation_report.json").read_text())["evaluated"] == 0


def test_bad_annotations_are_listed_and_the_rest_scored(tiny_project):
    ids = _annotated_ids(tiny_project)
    folder = tiny_project / "data_raw/Annotations"
    (folder / f"{ids[0]}.json").write_text("{broken")
    (folder / f"{ids[1]}.json").write_text('{"shapes": []}')
    data = json.loads((folder / f"{ids[2]}.json").read_text())
    data["imageWidth"] *= 2  # annotated on a differently sized copy: scaled, with a warning
    data["shapes"][0]["points"] = [[x * 2, y] for x, y in data["shapes"][0]["points"]]
    (folder / f"{ids[2]}.json").write_text(json.dumps(data))
    outcome = run_annotate(_settings(tiny_project))
    failed = {r["image_id"]: r["error"] for r in outcome.report["failed"]}
    assert set(failed) == {ids[0], ids[1]}
    assert "malformed JSON" in failed[ids[0]] and "no region shape" in failed[ids[1]]
    assert failed[ids[0]].startswith(f"{ids[0]}.json: ")
    scored = {r["image_id"]: r for r in outcome.report["records"]}
    assert ids[2] in scored and "scaled" in scored[ids[2]]["warnings"][0]
    assert outcome.failed == 2


def test_select_correct_and_model_resolution(tiny_project):
    everything = run_annotate(_settings(tiny_project)).report
    correct = run_annotate(_settings(tiny_project, select="correct", resolution="model")).report
    assert all(r["pred"] == r["label"] for r in correct["records"])
    assert correct["evaluated"] + correct["excluded_by_select"] == everything["evaluated"]
    assert correct["settings"]["resolution"] == "model"


def test_otsu_records_each_images_threshold(tiny_project):
    report = run_annotate(_settings(tiny_project, threshold="otsu")).report
    assert report["threshold"]["mode"] == "otsu"
    assert all(0 < r["threshold"] <= 1 for r in report["records"])


def test_mask_area_is_the_outlines_area_unless_asked_for_boxes(tiny_project):
    """BTXRD-style files (a polygon and its rectangle per lesion): annotate-iou scores against the polygons by
    default, against the rectangles with --region box and their union with --region all."""
    from btxrd_cam.labelme import rasterize_annotation
    from btxrd_cam.scoring import scoring_size

    areas = {}
    for region in ("outline", "box", "all"):
        report = run_annotate(_settings(tiny_project, region=region, images=False)).report
        assert report["settings"]["region"] == region
        areas[region] = {r["image_id"]: r["mask_area"] for r in report["records"]}
        for record in report["records"][:3]:
            path = tiny_project / "data_raw/Annotations" / f"{record['image_id']}.json"
            data = json.loads(path.read_text())
            size = scoring_size((data["imageHeight"], data["imageWidth"]), 512, 64)
            shapes = [
                s
                for s in data["shapes"]
                if s["shape_type"] == {"outline": "polygon", "box": "rectangle"}.get(region, s["shape_type"])
            ]
            expected = rasterize_annotation(
                {"shapes": shapes}, data["imageHeight"], data["imageWidth"], draw_size=size, region="all"
            )
            assert record["mask_area"] == pytest.approx(expected.mask.mean(), abs=1e-6)
    for image_id, outline in areas["outline"].items():
        assert outline < areas["box"][image_id] <= areas["all"][image_id]
