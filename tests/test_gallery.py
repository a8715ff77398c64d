import json

import numpy as np
import pytest
from PIL import Image

from btxrd_cam.commands.gallery import run_gallery, select_examples
from btxrd_cam.errors import UsageError
from btxrd_cam.settings import GallerySettings
from tests.conftest import project_settings


def test_selection_rules_with_ties_and_short_categories():
    labels = np.array([0, 0, 0, 1, 1, 2, 0])
    preds = np.array([0, 0, 1, 0, 0, 0, 0])
    probs = np.array(
        [
            [0.9, 0.1, 0],
            [0.9, 0.1, 0],
            [0.3, 0.7, 0],
            [0.6, 0.4, 0],
            [0.8, 0.2, 0],
            [0.5, 0.2, 0.3],
            [0.7, 0.3, 0],
        ]
    )
    ids = ["e", "d", "c", "b", "a", "f", "g"]
    chosen, counts = select_examples(labels, preds, probs, ids, 0, 2)
    assert counts == {"TP": 3, "FP": 3, "FN": 1}
    assert chosen["TP"] == [1, 0]  # tie at 0.9 broken by image_id: d before e
    assert chosen["FP"] == [4, 3]  # most confident mistakes first
    assert chosen["FN"] == [2]  # fewer than k exist
    chosen, counts = select_examples(labels, preds, probs, ids, 2, 3)
    assert chosen == {"TP": [], "FP": [], "FN": [5]} and counts == {"TP": 0, "FP": 0, "FN": 1}


def test_false_negatives_are_sorted_worst_first():
    labels = np.array([1, 1, 1])
    preds = np.array([0, 0, 2])
    probs = np.array([[0.6, 0.3, 0.1], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    chosen, _ = select_examples(labels, preds, probs, ["a", "b", "c"], 1, 3)
    assert chosen["FN"] == [1, 0, 2]


def _settings(project, **extra):
    return project_settings(GallerySettings, project, **extra)


def test_gallery_on_a_demo_split_draws_each_class_and_matches_its_selection(tiny_project):
    outcome = run_gallery(_settings(tiny_project, k=2, split="stratified", subset="train"))
    report = json.loads((tiny_project / "out" / "gallery.json").read_text())
    assert report == json.loads(outcome.text) and report["checkpoint"]["name"] == "best_stratified.pt"
    assert set(report["classes"]) == {"Normal", "Benign", "Malignant"}
    for name, info in report["classes"].items():
        image = Image.open(tiny_project / "out" / f"gallery_{name}.png")
        # 3 rows x 2 columns of 3.2 x 3.4 inch cells at 150 dpi (trimmed to the drawn content)
        assert abs(image.height / image.width - (3 * 3.4) / (2 * 3.2)) < 0.15 and image.height > 1200
        for category, entries in info["selected"].items():
            assert len(entries) == min(2, info["counts"][category])
            for entry in entries:
                assert (entry["label"] == name) == (category != "FP")
                assert (entry["pred"] == name) == (category != "FN")


def test_gallery_json_is_byte_identical_across_runs(tiny_project):
    first = run_gallery(_settings(tiny_project, k=1)).text
    second = run_gallery(_settings(tiny_project, k=1, workers=2, batch_size=3)).text
    assert first == second


def test_labels_the_checkpoint_does_not_know_are_named(tiny_project):
    manifest = tiny_project / "data/splits/stratified_test.csv"
    manifest.write_text(manifest.read_text().replace("Benign", "Osteoma"))
    with pytest.raises(UsageError, match="labels Osteoma are not classes of this checkpoint"):
        run_gallery(_settings(tiny_project))


def test_empty_split_is_a_clear_error(tiny_project):
    (tiny_project / "data/splits/stratified_test.csv").write_text("image_id,split,label\n")
    with pytest.raises(UsageError, match="has no images"):
        run_gallery(_settings(tiny_project))


def test_failing_images_are_listed_and_the_gallery_is_still_drawn(tiny_project):
    manifest = (tiny_project / "data/splits/stratified_test.csv").read_text().splitlines()
    broken = manifest[1].split(",")[0]
    (tiny_project / "data_raw/images" / broken).write_bytes(b"\xff\xd8\xff truncated")
    outcome = run_gallery(_settings(tiny_project))
    assert outcome.failed == 1 and outcome.report["failed"][0]["image_id"] == broken.split(".")[0]
    assert outcome.report["explained"] == len(manifest) - 2
    assert all((tiny_project / "out" / f"gallery_{c}.png").is_file() for c in ("Normal", "Benign", "Malignant"))


def test_absent_class_and_large_k_give_empty_cells_not_errors(tiny_project):
    path = tiny_project / "data/splits/stratified_test.csv"
    path.write_text("\n".join(line for line in path.read_text().splitlines() if "Malignant" not in line) + "\n")
    outcome = run_gallery(_settings(tiny_project, k=6, format="jpg"))
    malignant = outcome.report["classes"]["Malignant"]
    assert malignant["counts"]["TP"] == 0 and malignant["counts"]["FN"] == 0
    assert (tiny_project / "out" / "gallery_Malignant.jpg").is_file()


def test_gallery_selection_matches_one_recomputed_from_infer_output(tiny_project, capsys):
    from btxrd_cam.commands.infer import run_infer
    from btxrd_cam.settings import InferSettings

    report = run_gallery(_settings(tiny_project, k=2, subset="train")).report
    capsys.readouterr()
    records = run_infer(project_settings(InferSettings, tiny_project, subset="train")).records
    names = ["Normal", "Benign", "Malignant"]
    labels = np.array([names.index(r["label"]) for r in records])
    probs = np.array([[r["probs"][n] for n in names] for r in records])
    ids = [r["image_id"] for r in records]
    for c, name in enumerate(names):
        chosen, counts = select_examples(labels, probs.argmax(1), probs, ids, c, 2)
        assert report["classes"][name]["counts"] == counts
        for category, indices in chosen.items():
            assert [e["image_id"] for e in report["classes"][name]["selected"][category]] == [ids[i] for i in indices]
