"""`btxrd-cam evidence`: known answers first — a model that reads a marker, one that reads the lesion, one that
cannot see the image — then the report, the figures, determinism and bad input."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from btxrd_cam.checkpoint import save_upstream_checkpoint
from btxrd_cam.cli import app
from btxrd_cam.commands.demo import _tensors, macro_auc, train_model
from btxrd_cam.commands.evidence import run_evidence
from btxrd_cam.data import DEFAULT_CLASS_NAMES
from btxrd_cam.settings import EvidenceSettings
from btxrd_cam.synthetic import EQUAL_MIX, write_dataset
from tests.conftest import TINY_ARCH, make_tiny_model, project_settings

SIZE = 64
REPORT_KEYS = {
    "schema_version", "command", "settings", "checkpoint", "fill", "target", "delta", "reference", "images_in_split",
    "annotated_images", "evaluated", "excluded_by_select", "summary", "configurations", "breakdowns", "verdict",
    "records", "failed",
}  # fmt: skip
RECORD_KEYS = {
    "image_id", "label", "pred", "confidence", "target", "subtype", "center", "view", "body_region", "megapixels",
    "lesion_area", "removed_pixels", "lesions", "region_used", "controls_placed", "p", "drop", "flip", "to_normal",
    "relies_on_lesion", "pointing_game", "warnings", "error",
}  # fmt: skip


KNOWN_ANSWER_ARCH = "test_resnet"  # learns these lesions at 64 px in seconds; test_efficientnet memorises instead


def _trained_project(root, cue: str):
    """A small BTXRD-layout project whose class is decided by `cue` (the lesion's look, or a marker in a corner
    with a lesion of random look on every image), and a tiny model trained on its train split here, in seconds.
    Returns (project, held-out macro AUC): the model must have learned the cue, not memorised the images."""
    membership = write_dataset(
        root, n_images=120, seed=11, long_side_range=(112, 144), cue=cue, mix=EQUAL_MIX, lesion_floor=0.05,
        distractors=False,
    )  # fmt: skip
    split = membership["stratified"]
    x, y = _tensors(root / "data_raw", split["train"], SIZE)
    model = train_model(x, y, KNOWN_ANSWER_ARCH, epochs=30, seed=0)
    held_out = _tensors(root / "data_raw", split["val"] + split["test"], SIZE)
    auc = macro_auc(model, *held_out)
    save_upstream_checkpoint(
        root / "checkpoints/best_stratified.pt", model, KNOWN_ANSWER_ARCH, list(DEFAULT_CLASS_NAMES), SIZE
    )
    return root, auc


@pytest.fixture(scope="session")
def marker_project(tmp_path_factory):
    return _trained_project(tmp_path_factory.mktemp("marker"), "marker")


@pytest.fixture(scope="session")
def lesion_project(tmp_path_factory):
    return _trained_project(tmp_path_factory.mktemp("lesion"), "lesion")


def _evidence(project, **extra):
    settings = project_settings(EvidenceSettings, project, **{"subset": "train", "no_cache": True, **extra})
    return run_evidence(settings)


def test_a_model_that_reads_a_marker_does_not_rely_on_the_lesion(marker_project):
    project, auc = marker_project
    assert auc > 0.9  # it learned the marker
    report = _evidence(project).report
    summary = report["summary"]
    assert report["evaluated"] >= 60
    difference = summary["lesion_vs_control"]
    assert difference["difference"] < report["delta"] and not difference["excludes_zero"]
    assert summary["relies_on_lesion"]["share"] < 0.3
    # removing the lesion costs what removing an equal area elsewhere costs
    assert abs(summary["lesion_removed"]["drop"]["mean"] - summary["control_removed"]["drop"]["mean"]) < 0.05


def test_a_model_that_reads_the_lesion_relies_on_it(lesion_project):
    project, auc = lesion_project
    assert auc > 0.9  # it learned the lesions
    report = _evidence(project).report
    summary = report["summary"]
    difference = summary["lesion_vs_control"]
    assert difference["excludes_zero"] and difference["difference"] > report["delta"]
    assert difference["ci95"][0] > report["delta"]
    assert summary["relies_on_lesion"]["share"] > 0.8
    assert summary["lesion_removed"]["flip_rate"] > summary["control_removed"]["flip_rate"]
    # removing the lesion mostly makes a tumour image look normal
    assert summary["lesion_removed"]["to_normal_rate"] > 0.5


def test_a_model_that_cannot_see_the_image_loses_nothing(tiny_project):
    """Constant logits, whatever the input: every drop is exactly 0 and nothing relies on the lesion."""
    model = make_tiny_model()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.1, 0.9, 0.2]))
    ckpt = tiny_project / "checkpoints/best_stratified.pt"
    save_upstream_checkpoint(ckpt, model, TINY_ARCH, list(DEFAULT_CLASS_NAMES), 64)
    report = _evidence(tiny_project, subset="test").report
    assert report["evaluated"] > 0
    for record in report["records"]:
        assert record["drop"]["lesion_removed"] == 0 and record["drop"]["control_removed"] == 0
        assert record["drop"]["lesion_only"] == 0 and set(record["drop"]["cam_removed"].values()) == {0}
        assert record["relies_on_lesion"] is False and record["flip"]["lesion_removed"] == 0
    assert report["summary"]["relies_on_lesion"]["share"] == 0


def test_the_report_holds_every_key_and_the_copies_their_areas(tiny_project):
    outcome = _evidence(tiny_project, subset="test", methods="gradcam,layercam", layers="auto", controls="3")
    report = json.loads(outcome.text)
    assert set(report) == REPORT_KEYS
    out = tiny_project / "out"
    assert (out / "evidence_report.json").read_text() == outcome.text
    assert (out / "evidence.png").stat().st_size > 0 and (out / "evidence_examples.png").stat().st_size > 0
    names = list(report["configurations"])
    assert report["settings"]["layers"] == "auto" and report["reference"] == "gradcam@bn2"
    assert names[0] == "gradcam@bn2" and len(names) == 8 and sum(n.startswith("layercam@") for n in names) == 4
    for record in report["records"]:
        assert set(record) == RECORD_KEYS and record["error"] is None
        assert set(record["p"]) == {"original", "lesion_removed", "control_removed", "lesion_only", "cam_removed"}
        assert set(record["p"]["cam_removed"]) == set(names) == set(record["pointing_game"])
        assert record["controls_placed"] == 3 and record["region_used"] == "outline"
        assert abs(record["drop"]["lesion_removed"] - (record["p"]["original"] - record["p"]["lesion_removed"])) < 2e-6
    for name in names:
        table = report["configurations"][name]["table"]
        assert set(table) == {"shown", "missed", "elsewhere", "misleading"}
        decided = report["summary"]["relies_on_lesion"]["decided"]
        assert sum(table.values()) == decided
    assert set(report["breakdowns"]) >= {"by_class", "by_centre", "by_view", "by_body_region", "by_lesion_size"}
    assert "NaN" not in outcome.text and "Infinity" not in outcome.text


def test_same_inputs_give_byte_identical_json(tiny_project):
    first = _evidence(tiny_project, subset="test").text
    shutil.rmtree(tiny_project / "out")
    assert _evidence(tiny_project, subset="test").text == first
    other = _evidence(tiny_project, subset="test", seed="5").text
    assert other != first  # the seed places the controls and draws the imputation noise


def test_a_lesion_too_large_for_a_control_is_recorded_not_an_error(tiny_project):
    annotations = sorted((tiny_project / "data_raw/Annotations").glob("*.json"))
    data = json.loads(annotations[0].read_text())
    h, w = data["imageHeight"], data["imageWidth"]
    data["shapes"] = [
        {"label": "osteosarcoma", "shape_type": "polygon", "points": [[0, 0], [w * 0.8, 0], [w * 0.8, h], [0, h]]}
    ]
    annotations[0].write_text(json.dumps(data))
    report = _evidence(tiny_project, split="stratified", subset="train").report
    report_all = [*report["records"], *report["failed"]]
    record = next(r for r in report_all if r["image_id"] == annotations[0].stem)
    assert record["error"] is None and record["controls_placed"] == 0 and record["relies_on_lesion"] is None
    assert any("no control region fits" in w for w in record["warnings"])


@pytest.mark.parametrize(
    ("option", "value"),
    [("--controls", "0"), ("--controls", "33"), ("--delta", "1"), ("--delta", "-0.1"), ("--fill", "zeros"),
     ("--margin", "-1")],
)  # fmt: skip
def test_bad_options_exit_2_with_one_line_each(tiny_project, option, value, monkeypatch):
    monkeypatch.chdir(tiny_project)
    result = CliRunner().invoke(app, ["evidence", option, value, "-q"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line]
    assert len(lines) == 1 and option in lines[0] and value in lines[0], result.stderr


def test_no_annotated_image_exits_1(tiny_project, monkeypatch):
    monkeypatch.chdir(tiny_project)
    shutil.rmtree(tiny_project / "data_raw/Annotations")
    result = CliRunner().invoke(app, ["evidence", "-q"])
    assert result.exit_code == 1 and "no annotated image" in result.stderr
    assert json.loads(result.stdout)["evaluated"] == 0
