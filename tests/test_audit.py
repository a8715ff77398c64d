"""`btxrd-cam audit`: counts, header-only sizes, annotation coverage and the cues that are not the lesion."""

import csv
import json

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from btxrd_cam.cli import app
from btxrd_cam.commands.audit import run_audit
from btxrd_cam.data import DATASET_COLUMNS, decode_image, image_size
from btxrd_cam.errors import InputError
from btxrd_cam.settings import AuditSettings, build_settings
from btxrd_cam.statistics import bootstrap_counts, bootstrap_indices, cue_auc, macro_auc_weighted

CLASSES = ("Normal", "Benign", "Malignant")


def _project(root, side_of, n=60, seed=0):
    """A tiny BTXRD-layout project of blank PNGs whose size `side_of(class index, rng)` chooses."""
    rng = np.random.default_rng(seed)
    images = root / "data_raw/images"
    images.mkdir(parents=True)
    rows, manifest = [], []
    for i in range(n):
        label = CLASSES[i % 3]
        height, width = side_of(i % 3, rng)
        cv2.imwrite(str(images / f"IMG{i:06d}.png"), np.zeros((height, width), np.uint8))
        row = dict.fromkeys(DATASET_COLUMNS, 0)
        row.update(image_id=f"IMG{i:06d}.png", center=1 + i % 2, frontal=1, femur=1, **{"lower limb": 1})
        row.update(tumor=int(label != "Normal"), benign=int(label == "Benign"), malignant=int(label == "Malignant"))
        rows.append(row)
        manifest.append({"image_id": f"IMG{i:06d}.png", "split": "train", "label": label})
    for path, header, data in (
        (root / "data_raw/dataset.csv", DATASET_COLUMNS, rows),
        (root / "data/splits/stratified_train.csv", ("image_id", "split", "label"), manifest),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(header))
            writer.writeheader()
            writer.writerows(data)
    return root


def _audit(root, **extra):
    values = dict(data_root=root / "data_raw", splits_dir=root / "data/splits", out=root / "out", quiet=True)
    return run_audit(build_settings(AuditSettings, **{**values, **extra}))


def test_the_rank_auc_is_scikit_learns():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    probs = rng.dirichlet([1, 1, 1], 200)
    probs[:40] = np.round(probs[:40], 1)  # ties
    probs /= probs.sum(axis=1, keepdims=True)
    mine = macro_auc_weighted(labels, probs, np.ones(200))[0]
    assert mine == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"), abs=1e-12)
    # a resample counted by weights is the resample itself
    index, counts = bootstrap_indices(200, 3, seed=4), bootstrap_counts(200, 3, seed=4)
    for row in range(3):
        drawn = labels[index[row]], probs[index[row]]
        expected = roc_auc_score(*drawn, multi_class="ovr", average="macro")
        assert macro_auc_weighted(labels, probs, counts[row])[0] == pytest.approx(expected, abs=1e-12)


def test_a_cue_that_decides_the_class_scores_one_and_noise_a_half():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 100)
    decisive = cue_auc((labels + rng.normal(0, 0.05, 300))[:, None], labels)
    noise = cue_auc(rng.normal(size=(300, 1)), labels)
    assert decisive["auc"] > 0.99 and decisive["ci95"][0] > 0.98 and decisive["folds"] == 5
    assert abs(noise["auc"] - 0.5) < 0.1 and noise["ci95"][0] < 0.5 < noise["ci95"][1]


def test_image_size_that_decides_the_class_is_flagged(tmp_path):
    root = _project(tmp_path, lambda c, rng: (60 + 40 * c + int(rng.integers(0, 8)), 50))
    report, text, failed = _audit(root)
    assert failed == 0 and json.loads(text) == json.loads((root / "out/audit_report.json").read_text())
    assert report["cues"]["image size"]["auc"] > 0.95
    assert any(w.startswith("image size alone predicts the class") for w in report["warnings"])
    assert report["counts"]["train"]["class"] == {"Benign": 20, "Malignant": 20, "Normal": 20}
    medians = {c: body["median"] for c, body in report["sizes"]["megapixels"]["by_class"].items()}
    assert medians["Normal"] < medians["Benign"] < medians["Malignant"]
    assert (root / "out/audit.png").stat().st_size > 0


def test_random_sizes_predict_nothing(tmp_path):
    root = _project(tmp_path, lambda c, rng: (int(rng.integers(60, 140)), int(rng.integers(60, 140))))
    report, _, _ = _audit(root)
    assert abs(report["cues"]["image size"]["auc"] - 0.5) < 0.15
    assert not any("image size alone" in w for w in report["warnings"])


def test_sizes_come_from_headers_without_decoding(tmp_path):
    """A JPEG cut after its header: decoding it fails, its size is still read — the audit never decodes."""
    pixels = np.random.default_rng(0).integers(0, 256, (300, 200), dtype=np.uint8)
    whole = tmp_path / "whole.jpeg"
    cv2.imwrite(str(whole), pixels)
    cut = tmp_path / "cut.jpeg"
    cut.write_bytes(whole.read_bytes()[:700])
    with pytest.raises(InputError):
        decode_image(cut)
    assert image_size(cut) == (300, 200) == image_size(whole)
    with pytest.raises(InputError, match="not an image"):
        image_size(tmp_path.joinpath("x.png").write_bytes(b"nothing") and tmp_path / "x.png")


def test_annotation_coverage_counts_what_is_unusual_and_never_fails_on_labels(tiny_project):
    notes = tiny_project / "data_raw/Annotations"
    files = sorted(notes.glob("*.json"))
    rectangle_only = json.loads(files[0].read_text())
    rectangle_only["shapes"] = [s for s in rectangle_only["shapes"] if s["shape_type"] == "rectangle"]
    files[0].write_text(json.dumps(rectangle_only))
    renamed = json.loads(files[1].read_text())
    for shape in renamed["shapes"]:
        shape["label"] = "Tumour?"  # not a subtype name: kept and counted
    files[1].write_text(json.dumps(renamed))
    normal = next(p for p in (tiny_project / "data_raw/images").iterdir() if p.stem not in {f.stem for f in files})
    (notes / f"{normal.stem}.json").write_text(files[2].read_text())
    files[3].unlink()
    report, _, failed = _audit(tiny_project, split="dataset")
    coverage = report["annotations"]
    assert failed == 0 and report["images"] == 36
    assert coverage["rectangle_only"] == 1 and coverage["examples"]["rectangle_only"] == [files[0].stem]
    assert coverage["label_not_subtype"] >= 1 and files[1].stem in coverage["examples"]["label_not_subtype"]
    assert coverage["labels"]["tumour?"] >= 1
    assert coverage["normal_with_file"] >= 1 and coverage["tumour_without_file"] == 1
    assert {"Benign", "Malignant", "Normal"} == set(report["lesion_area"]["by_class"])  # the normal image's file too


def test_the_cli_prints_the_report_and_refuses_an_unknown_split(tiny_project, monkeypatch):
    monkeypatch.chdir(tiny_project)
    result = CliRunner().invoke(app, ["audit", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["command"] == "audit" and set(report["counts"]) == {"train", "val", "test", "all"}
    assert set(report["cues"]) == {"image size", "aspect ratio", "centre", "view", "together"}
    bad = CliRunner().invoke(app, ["audit", "--split", "random"])
    assert bad.exit_code == 2 and "--split" in bad.stderr
