import json

import numpy as np
import pytest

from btxrd_cam.commands.compare import PAIRED_METRICS, run_compare
from btxrd_cam.errors import UsageError
from btxrd_cam.settings import CompareSettings
from tests.conftest import project_settings

METRIC_KEYS = {"iou", "dice", "pointing_game", "energy_pointing_game", "pxap", "cam_area", "mask_area"}
AUTO = ["bn2", "blocks.4", "blocks.3", "blocks.2"]  # test_efficientnet's target layer and three earlier stages


def _settings(project, **extra):
    return project_settings(CompareSettings, project, **extra)


def _annotated_ids(project, subset="test"):
    lines = (project / f"data/splits/stratified_{subset}.csv").read_text().splitlines()[1:]
    ids = [line.split(",")[0].split(".")[0] for line in lines]
    return [i for i in ids if (project / "data_raw/Annotations" / f"{i}.json").is_file()]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, tiny_project_template):
    import shutil

    project = tmp_path_factory.mktemp("compare") / "project"
    shutil.copytree(tiny_project_template, project)
    return project, run_compare(_settings(project))


def test_every_method_at_every_auto_layer_plus_baselines(default_run):
    project, outcome = default_run
    report = outcome.report
    names = [c["name"] for c in report["configurations"]]
    methods = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "eigencam", "eigengradcam"]
    assert names == [f"{m}@{layer}" for m in methods for layer in AUTO] + ["uniform", "centre", "edges"]
    grids = {c["layer"]: c["grid"] for c in report["configurations"] if c["method"]}
    assert grids == {"bn2": [2, 2], "blocks.4": [2, 2], "blocks.3": [4, 4], "blocks.2": [8, 8]}
    assert report["reference"] == "gradcam@bn2" and sorted(report["ranking"]) == sorted(names)
    assert [r["image_id"] for r in report["records"]] == _annotated_ids(project)
    for record in report["records"]:
        assert set(record["metrics"]) == set(names) and record["error"] is None
        assert all(set(m) == METRIC_KEYS for m in record["metrics"].values())
    assert set(report["paired"]) == set(names) - {"gradcam@bn2"}
    assert all(set(p) == set(PAIRED_METRICS) for p in report["paired"].values())
    for name in ("comparison_report.json", "comparison.png", "comparison_grid.png"):
        assert (project / "out" / name).is_file()
    assert json.loads((project / "out/comparison_report.json").read_text()) == json.loads(outcome.text)


def test_numbers_hold_together(default_run):
    _, outcome = default_run
    report = outcome.report
    records = report["records"]
    for name in ("gradcam@blocks.2", "centre"):
        ious = [r["metrics"][name]["iou"] for r in records]
        cell = report["summary"][name]["iou"]
        assert cell["mean"] == pytest.approx(np.mean(ious), abs=1e-6)
        assert cell["ci95"][0] <= cell["mean"] + 1e-9 and cell["mean"] <= cell["ci95"][1] + 1e-9
    # the uniform map is chance: it never points inside, its energy share is the mask's area
    uniform = report["summary"]["uniform"]
    mask_area = report["summary"]["gradcam@bn2"]["mask_area"]["mean"]
    assert uniform["pointing_game"]["mean"] == 0
    assert uniform["energy_pointing_game"]["mean"] == pytest.approx(mask_area, abs=1e-6)
    assert uniform["energy_pointing_game"]["x_chance"] == pytest.approx(1.0, abs=1e-5)
    # the paired difference is the difference of the means over the same images
    paired = report["paired"]["centre"]["pxap"]
    expected = report["summary"]["centre"]["pxap"]["mean"] - report["summary"]["gradcam@bn2"]["pxap"]["mean"]
    assert paired["difference"] == pytest.approx(expected, abs=1e-6)
    means = [report["summary"][n]["pxap"]["mean"] for n in report["ranking"]]
    assert means == sorted(means, reverse=True)


def test_same_inputs_give_byte_identical_json(default_run):
    project, outcome = default_run
    again = run_compare(_settings(project, workers=2))  # decoded by threads this time, in another order
    assert again.text == outcome.text


def test_a_constant_map_never_gives_nan(tiny_project):
    outcome = run_compare(_settings(tiny_project, methods="gradcam", layers="bn2", baselines="uniform"))
    text = outcome.text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert "NaN" not in text and "Infinity" not in text


def test_tune_picks_each_configurations_threshold_on_val_only(tiny_project):
    settings = _settings(tiny_project, methods="gradcam,eigencam", layers="bn2,blocks.2", threshold="tune")
    first = run_compare(settings).report
    names = ["gradcam@bn2", "gradcam@blocks.2", "eigencam@bn2", "eigencam@blocks.2", "uniform", "centre", "edges"]
    assert list(first["thresholds"]) == names
    tuning = first["threshold"]["tuning"]
    assert tuning["tuned_on"] == "stratified/val" and tuning["images"] == len(_annotated_ids(tiny_project, "val"))
    # move every test-subset lesion outline: the test metrics change, the thresholds (from val) do not
    for image_id in _annotated_ids(tiny_project, "test"):
        path = tiny_project / "data_raw/Annotations" / f"{image_id}.json"
        data = json.loads(path.read_text())
        data["shapes"] = [{"shape_type": "rectangle", "points": [[0, 0], [60, 60]], "label": "x"}]
        path.write_text(json.dumps(data))
    second = run_compare(settings).report
    assert second["thresholds"] == first["thresholds"]
    assert second["summary"]["centre"]["iou"] != first["summary"]["centre"]["iou"]
    # and the val outlines do move them
    for image_id in _annotated_ids(tiny_project, "val"):
        path = tiny_project / "data_raw/Annotations" / f"{image_id}.json"
        data = json.loads(path.read_text())
        data["shapes"] = [{"shape_type": "rectangle", "points": [[0, 0], [20, 20]], "label": "x"}]
        path.write_text(json.dumps(data))
    assert run_compare(settings).report["threshold"]["tuning"] != tuning


def test_select_correct_and_other_resolutions(tiny_project):
    base = dict(methods="gradcam", layers="bn2", baselines="centre")
    everything = run_compare(_settings(tiny_project, **base, resolution="original")).report
    correct = run_compare(_settings(tiny_project, **base, select="correct", resolution="model")).report
    assert all(r["pred"] == r["label"] for r in correct["records"])
    assert correct["evaluated"] + correct["excluded_by_select"] == everything["evaluated"]
    assert correct["settings"]["resolution"] == "model" and everything["settings"]["resolution"] == "original"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"methods": "gradcam,saliency"}, "--methods: got gradcam,saliency; unknown saliency; must be"),
        ({"layers": "bn2,head"}, "--layers: 'head' is not a layer of this model (at 'head'; top-level layers:"),
        ({"layers": "classifier"}, "--layers: 'classifier' outputs [1, 3], not a feature map"),
        ({"reference": "gradcam@blocks.0"}, "--reference: got gradcam@blocks.0; must be one of the configurations"),
        ({"rank_by": "auc"}, "--rank-by: got auc; must be one of pxap, iou, dice, pointing_game"),
        ({"baselines": "noise"}, "--baselines: got noise; unknown noise;"),
    ],
)
def test_bad_options_say_which_and_why(tiny_project, options, message):
    with pytest.raises(UsageError) as caught:
        run_compare(_settings(tiny_project, **options))
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_repeated_configurations_are_dropped_and_the_reference_may_be_spelled_differently(tiny_project):
    settings = _settings(tiny_project, methods="gradcam,gradcam", layers="bn2,blocks[-1],bn2", reference="gradcam@bn2")
    report = run_compare(settings).report
    assert [c["name"] for c in report["configurations"] if c["method"]] == ["gradcam@bn2", "gradcam@blocks.4"]
    settings = _settings(tiny_project, methods="gradcam", layers="blocks.4", reference="GradCAM@blocks[-1]")
    assert run_compare(settings).report["reference"] == "gradcam@blocks.4"
