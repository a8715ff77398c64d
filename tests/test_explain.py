import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from btxrd_cam.checkpoint import load_checkpoint
from btxrd_cam.commands.explain import run_explain
from btxrd_cam.data import load_image, preprocess
from btxrd_cam.reports import clean
from btxrd_cam.settings import ExplainSettings, build_settings
from tests.conftest import write_labelme


def _settings(ckpt, inputs, out, **extra):
    return build_settings(
        ExplainSettings, ckpt=ckpt, inputs=[str(i) for i in inputs], out=out, quiet=True, workers=0, **extra
    )


def test_overlay_at_original_size_and_heatmap_equal_to_grad_cam(tiny_ckpt, tmp_path, capsys):
    image = np.random.default_rng(0).integers(0, 255, (90, 140), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "wide.png"), image)
    (record,) = run_explain(_settings(tiny_ckpt, [tmp_path / "wide.png"], tmp_path / "out", save_heatmap=True)).records
    assert json.loads(capsys.readouterr().out) == clean(record)
    overlay = Image.open(record["overlay"])
    assert overlay.width == 140 and overlay.height > 90  # original size plus the caption band
    heatmap = np.load(record["heatmap"])
    ckpt = load_checkpoint(tiny_ckpt)
    x = torch.from_numpy(preprocess(load_image(tmp_path / "wide.png")[0], ckpt.image_size, ckpt.mean, ckpt.std))[None]
    pred = ckpt.model(x).argmax(1).item()
    with GradCAM(ckpt.model, [ckpt.target_layer]) as cam:
        expected = cam(x, [ClassifierOutputTarget(pred)])[0]
    assert heatmap.dtype == np.float32 and heatmap.shape == (64, 64)
    assert np.abs(heatmap - expected).max() <= 1e-4
    assert record["pred"] == ckpt.class_names[pred] and record["target"] == record["pred"]
    assert record["method"] == "gradcam" and record["error"] is None


def test_annotation_adds_metrics_and_target_class_name(tiny_ckpt, tmp_path):
    cv2.imwrite(str(tmp_path / "x.jpg"), np.full((80, 60), 120, np.uint8))
    annotation = write_labelme(
        tmp_path / "x.json", [{"shape_type": "rectangle", "points": [[10, 10], [30, 40]]}], 80, 60
    )
    (record,) = run_explain(
        _settings(
            tiny_ckpt,
            [tmp_path / "x.jpg"],
            tmp_path / "out",
            annotation=annotation,
            target="Malignant",
            threshold="0.25",
        )
    ).records
    assert record["target"] == "Malignant"
    assert set(record["metrics"]) >= {
        "iou",
        "dice",
        "pointing_game",
        "energy_pointing_game",
        "pxap",
        "threshold",
    }
    assert record["metrics"]["threshold"] == 0.25 and record["metrics"]["mask_area"] == pytest.approx(21 * 31 / 4800)


def test_bad_inputs_each_get_a_record_and_the_rest_finish(tiny_ckpt, tmp_path):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((30, 30), 90, np.uint8))
    (tmp_path / "notes.png").write_text("text")
    full = tmp_path / "full.jpg"
    cv2.imwrite(str(full), np.random.default_rng(1).integers(0, 255, (300, 300), dtype=np.uint8))
    (tmp_path / "cut.jpg").write_bytes(full.read_bytes()[:2000])
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "dot.png")
    Image.fromarray((np.arange(100 * 80).reshape(100, 80) * 8).astype(np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(np.zeros((40, 40, 4), np.uint8)).save(tmp_path / "alpha.png")
    (tmp_path / "empty").mkdir()
    inputs = [
        good,
        tmp_path / "notes.png",
        tmp_path / "cut.jpg",
        tmp_path / "dot.png",
        tmp_path / "deep.png",
        tmp_path / "alpha.png",
        tmp_path / "missing.png",
        tmp_path / "empty",
    ]
    outcome = run_explain(_settings(tiny_ckpt, inputs, tmp_path / "out"))
    errors = {r["image_id"]: r["error"] for r in outcome.records}
    assert errors["good"] is None and errors["deep"] is None and errors["alpha"] is None
    assert errors["notes"].startswith("not an image") and errors["cut"].startswith("unreadable image")
    assert errors["dot"].startswith("image too small")
    assert errors[str(tmp_path / "missing.png")] == "no such file or directory"
    assert errors[str(tmp_path / "empty")].startswith("directory contains no images")
    assert outcome.failed == 5
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "alpha_cam.png",
        "deep_cam.png",
        "good_cam.png",
    ]


def test_huge_image_is_decoded_without_exhausting_memory(tiny_ckpt, tmp_path):
    huge = tmp_path / "huge.jpg"
    big = np.zeros((9000, 12000), np.uint8)
    big[::64] = 200
    cv2.imwrite(str(huge), big, [cv2.IMWRITE_JPEG_QUALITY, 50])
    del big
    (record,) = run_explain(_settings(tiny_ckpt, [huge], tmp_path / "out")).records
    assert record["error"] is None and Image.open(record["overlay"]).width == 12000


def test_fast_decode_overlay_is_still_at_the_original_size(tiny_ckpt, tmp_path):
    cv2.imwrite(str(tmp_path / "big.jpg"), np.random.default_rng(2).integers(0, 255, (700, 900), dtype=np.uint8))
    (record,) = run_explain(_settings(tiny_ckpt, [tmp_path / "big.jpg"], tmp_path / "out", fast_decode=True)).records
    assert record["error"] is None and Image.open(record["overlay"]).width == 900


def test_every_record_has_the_same_keys(tiny_ckpt, tmp_path):
    cv2.imwrite(str(tmp_path / "ok.png"), np.full((30, 30), 90, np.uint8))
    records = run_explain(_settings(tiny_ckpt, [tmp_path / "ok.png", tmp_path / "missing.png"], tmp_path / "o")).records
    assert records[0].keys() == records[1].keys() and records[0]["error"] == "no such file or directory"


def test_same_stems_from_different_folders_do_not_overwrite_each_other(tiny_ckpt, tmp_path):
    for folder, value in (("a", 40), ("b/deeper", 200)):
        (tmp_path / "in" / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "in" / folder / "x.png"), np.full((40, 40), value, np.uint8))
    records = run_explain(_settings(tiny_ckpt, [tmp_path / "in"], tmp_path / "out")).records
    assert sorted(r["overlay"] for r in records) == [
        str(tmp_path / "out" / "a" / "x_cam.png"),
        str(tmp_path / "out" / "b" / "deeper" / "x_cam.png"),
    ]
    # one image, or images of one folder: straight into --out, as before
    (record,) = run_explain(_settings(tiny_ckpt, [tmp_path / "in/a/x.png"], tmp_path / "one")).records
    assert record["overlay"] == str(tmp_path / "one" / "x_cam.png")
