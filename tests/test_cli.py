"""End-to-end behaviour through the command line (Typer's CliRunner), plus the installed script."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from btxrd_cam import __version__
from tests.conftest import invoke


def test_help_lists_every_command_with_a_description_and_version():
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in (
        "gallery",
        "annotate-iou",
        "explain-image",
        "infer",
        "compare",
        "sanity",
        "evidence",
        "audit",
        "report",
        "merge",
        "demo",
    ):
        assert command in result.output
    assert invoke(["--version"]).output.strip() == f"btxrd-cam {__version__}"


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1", "nan", "abc"])
def test_bad_threshold_exits_2_with_one_line_and_no_traceback(tiny_project, value):
    result = invoke(["annotate-iou", "--threshold", value, "-q"], cwd=tiny_project)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"btxrd-cam: error: --threshold: got {value}; must be a number strictly between 0 and 1, 'otsu' or 'tune'"
    ]
    assert "Traceback" not in result.output and result.stdout == ""


def test_no_flags_needed_inside_an_upstream_project(tiny_project):
    result = invoke(["gallery", "--k", "1"], cwd=tiny_project)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["settings"]["split"] == "stratified" and report["settings"]["subset"] == "test"
    assert sorted(p.name for p in (tiny_project / "results/gradcam").iterdir()) == [
        ".cache",  # the engine's memory: a re-run over these images skips the model
        "gallery.json",
        "gallery_Benign.png",
        "gallery_Malignant.png",
        "gallery_Normal.png",
    ]


def test_annotate_iou_stdout_is_the_report_for_jq(tiny_project):
    result = invoke(["annotate-iou", "--top", "2"], cwd=tiny_project)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads((tiny_project / "results/gradcam/annotation_report.json").read_text())
    assert 0 <= report["summary"]["iou"]["mean"] <= 1


def test_compare_end_to_end_names_the_winner_for_jq(tiny_project):
    result = invoke(["compare", "--methods", "gradcam,layercam", "--top", "2"], cwd=tiny_project)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads((tiny_project / "results/gradcam/comparison_report.json").read_text())
    assert report["ranking"][0] in report["summary"] and len(report["ranking"]) == 2 * 4 + 3
    assert {p.name for p in (tiny_project / "results/gradcam").iterdir()} >= {"comparison.png", "comparison_grid.png"}
    assert result.stderr == ""  # not a terminal: no table, no progress
    result = invoke(["compare", "--methods", "gradcam,nope", "--rank-by", "auc", "-q"], cwd=tiny_project)
    assert result.exit_code == 2 and result.stdout == "" and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("btxrd-cam: error: --methods: got gradcam,nope; unknown nope")
    assert lines[1].startswith("btxrd-cam: error: --rank-by: got auc; must be one of pxap, iou")


def test_sanity_end_to_end(tiny_project):
    result = invoke(
        ["sanity", "--images", "4", "--road-images", "1", "--methods", "gradcam,eigencam"], cwd=tiny_project
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads((tiny_project / "results/gradcam/sanity_report.json").read_text())
    assert set(report["methods"]) == {"gradcam", "eigencam"} and len(report["images"]) == 4
    result = invoke(["sanity", "--images", "0", "--order", "sideways", "-q"], cwd=tiny_project)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "btxrd-cam: error: --images: got 0; must be a whole number ≥ 1",
        "btxrd-cam: error: --order: got sideways; must be one of cascading, independent",
    ]


def test_infer_jsonl_parses_line_by_line_and_failures_exit_1(tiny_project):
    result = invoke(["infer"], cwd=tiny_project)
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records and all(r["error"] is None for r in records)
    image = next((tiny_project / "data_raw/images").iterdir())
    result = invoke(["infer", str(image), "does-not-exist.png", "--format", "json"], cwd=tiny_project)
    assert result.exit_code == 1 and [r["error"] is None for r in json.loads(result.stdout)] == [False, True]
    assert result.stderr == "btxrd-cam: 1 image(s) failed; each is listed with its reason in the output\n"


def test_no_annotated_image_exits_1_with_a_message_and_an_empty_report(tiny_project):
    path = tiny_project / "data/splits/stratified_test.csv"
    path.write_text("\n".join(r for r in path.read_text().splitlines() if not r.endswith(("Benign", "Malignant"))))
    result = invoke(["annotate-iou", "-q"], cwd=tiny_project)
    assert result.exit_code == 1 and "no annotated image" in result.stderr
    assert json.loads(result.stdout)["records"] == []


def test_compare_without_annotated_images_exits_1_with_an_empty_report(tiny_project):
    path = tiny_project / "data/splits/stratified_test.csv"
    path.write_text("\n".join(r for r in path.read_text().splitlines() if not r.endswith(("Benign", "Malignant"))))
    result = invoke(["compare", "-q", "--methods", "gradcam"], cwd=tiny_project)
    assert result.exit_code == 1 and "no annotated image" in result.stderr
    report = json.loads(result.stdout)
    assert report["records"] == [] and report["ranking"] and report["summary"]["gradcam@bn2"]["iou"]["mean"] is None


def test_missing_checkpoint_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.delenv("BTXRD_CAM_CKPT", raising=False)
    result = invoke(["explain-image", "x.png"], cwd=tmp_path)
    assert result.exit_code == 2 and "btxrd-cam demo" in result.stderr


def test_unknown_target_class_and_wrong_architecture_exit_2(tiny_project):
    image = str(next((tiny_project / "data_raw/images").iterdir()))
    result = invoke(["explain-image", image, "--target", "Osteoma"], cwd=tiny_project)
    assert result.exit_code == 2 and "--target: got Osteoma" in result.stderr
    result = invoke(["explain-image", image, "--arch", "resnet18"], cwd=tiny_project)
    assert result.exit_code == 2 and "weights do not fit resnet18" in result.stderr
    assert "Traceback" not in result.output


def test_cuda_where_there_is_none(tiny_project):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = invoke(["infer", "--device", "cuda"], cwd=tiny_project)
    assert result.exit_code == 2 and "--device: got cuda; CUDA is not available" in result.stderr


def test_installed_script_runs_as_a_subprocess(tiny_project):
    script = shutil.which("btxrd-cam", path=os.path.dirname(sys.executable))
    assert script, "the btxrd-cam console script is not installed beside this Python"
    done = subprocess.run(
        [script, "infer", "--format", "csv"], cwd=tiny_project, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("image_id,path,label,pred,confidence,p_Normal")
    assert done.stderr == ""  # stderr is not a terminal: no progress bars, no tables
    module = subprocess.run([sys.executable, "-m", "btxrd_cam", "--version"], capture_output=True, text=True)
    assert module.stdout.strip() == f"btxrd-cam {__version__}"
