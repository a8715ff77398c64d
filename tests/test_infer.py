import csv
import io
import json

import numpy as np
import pytest
import torch

from btxrd_cam.checkpoint import load_checkpoint
from btxrd_cam.commands.infer import run_infer
from btxrd_cam.data import load_image, preprocess, read_manifest
from btxrd_cam.metrics import classification_metrics
from btxrd_cam.reports import clean
from btxrd_cam.settings import InferSettings
from tests.conftest import project_settings


def _settings(project, **extra):
    return project_settings(InferSettings, project, **extra)


def test_split_predictions_and_metrics_reproduce_a_direct_computation(tiny_project, capsys):
    outcome = run_infer(_settings(tiny_project, metrics=tiny_project / "m.json"))
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    assert records == clean(outcome.records)
    # the upstream way: load, preprocess each image, one plain forward
    ckpt = load_checkpoint(tiny_project / "checkpoints/best_stratified.pt")
    rows = read_manifest(tiny_project / "data/splits/stratified_test.csv")
    x = torch.from_numpy(
        np.stack(
            [
                preprocess(
                    load_image(next((tiny_project / "data_raw/images").glob(i.split(".")[0] + ".*")))[0],
                    ckpt.image_size,
                    ckpt.mean,
                    ckpt.std,
                )
                for i, _ in rows
            ]
        )
    )
    with torch.inference_mode():
        probs = torch.softmax(ckpt.model(x), 1).numpy()
    names = ckpt.class_names
    assert [r["pred"] for r in records] == [names[i] for i in probs.argmax(1)]
    np.testing.assert_allclose([r["confidence"] for r in records], probs.max(1), atol=1e-5)
    expected = classification_metrics(np.array([names.index(label) for _, label in rows]), probs, names)
    written = json.loads((tiny_project / "m.json").read_text())
    assert written["accuracy"] == pytest.approx(expected["accuracy"])
    assert written["macro_auc"] == pytest.approx(expected["macro_auc"], abs=1e-5)
    assert written["confusion_matrix"] == expected["confusion_matrix"] and written["failed_images"] == []


def test_image_arguments_csv_output_and_failures(tiny_project, tmp_path):
    images = sorted((tiny_project / "data_raw/images").iterdir())[:3]
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    out = tmp_path / "preds.csv"
    outcome = run_infer(
        _settings(
            tiny_project,
            inputs=[str(p) for p in images] + [str(bad), str(tmp_path / "x.jpg")],
            format="csv",
            output=out,
        )
    )
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["image_id"] for r in rows][0] == str(tmp_path / "x.jpg")  # inputs that name nothing come first
    assert {r["image_id"] for r in rows[1:]} == {p.stem for p in images} | {"bad"}
    assert outcome.failed == 2 and outcome.metrics is None
    good = [r for r in rows if not r["error"]]
    assert all(abs(sum(float(r[f"p_{c}"]) for c in ("Normal", "Benign", "Malignant")) - 1) < 1e-5 for r in good)
