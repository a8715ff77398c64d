import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score, confusion_matrix, roc_auc_score

from btxrd_cam.metrics import (
    classification_metrics,
    dice,
    energy_pointing_game,
    iou,
    localization_metrics,
    otsu_threshold,
    pointing_game,
    pxap,
)


def _square(size=10, rows=slice(0, 10), cols=slice(0, 10)):
    mask = np.zeros((size, size), bool)
    mask[rows, cols] = True
    return mask


def test_identical_maps_agree_perfectly():
    mask = _square(10, slice(2, 6), slice(2, 6))
    cam = mask.astype(np.float32)
    assert iou(cam, mask, 0.5) == 1.0 and dice(cam, mask, 0.5) == 1.0
    assert pointing_game(cam, mask) is True  # the maximum is tied over the square, all of it inside
    assert energy_pointing_game(cam, mask) == 1.0 and pxap(cam, mask) == 1.0


def test_identical_maps_with_a_unique_peak_hit():
    mask = _square(10, slice(2, 6), slice(2, 6))
    cam = mask.astype(np.float32) * 0.8
    cam[3, 3] = 1.0
    assert pointing_game(cam, mask) is True
    assert energy_pointing_game(cam, mask) == pytest.approx(1.0)
    assert pxap(cam, mask) == pytest.approx(1.0)


def test_disjoint_maps_score_zero():
    mask = _square(10, slice(0, 5), slice(0, 10))
    cam = (~mask).astype(np.float32)
    assert iou(cam, mask, 0.5) == 0.0 and dice(cam, mask, 0.5) == 0.0
    assert not pointing_game(cam, mask) and energy_pointing_game(cam, mask) == 0.0
    assert pxap(cam, mask) == pytest.approx(0.5)  # all scores tie: AP is the positive rate


def test_half_overlap_has_known_iou_and_dice():
    mask = _square(10, slice(0, 10), slice(0, 4))  # columns 0-3
    cam = _square(10, slice(0, 10), slice(2, 6)).astype(np.float32)  # columns 2-5
    assert iou(cam, mask, 0.5) == pytest.approx(20 / 60)
    assert dice(cam, mask, 0.5) == pytest.approx(2 * 20 / 80)
    assert energy_pointing_game(cam, mask) == pytest.approx(0.5)


def test_empty_cam_scores_zero_without_dividing_by_zero():
    mask = _square(10, slice(2, 6), slice(2, 6))
    cam = np.zeros((10, 10), np.float32)
    metrics = localization_metrics(cam, mask, 0.5)
    assert metrics["iou"] == 0.0 and metrics["dice"] == 0.0 and metrics["pointing_game"] is False
    assert metrics["energy_pointing_game"] == 0.0 and metrics["cam_area"] == 0.0
    assert metrics["mask_area"] == pytest.approx(0.16)


def test_empty_mask_has_no_pxap():
    assert pxap(np.ones((4, 4), np.float32), np.zeros((4, 4), bool)) is None


def test_constant_cam_everywhere():
    mask = _square(10, slice(0, 5), slice(0, 2))
    cam = np.full((10, 10), 0.7, np.float32)
    assert iou(cam, mask, 0.5) == pytest.approx(0.1)  # everything passes: IoU is the mask fraction
    assert iou(cam, mask, 0.8) == 0.0
    assert pointing_game(cam, mask) is False  # a flat map points nowhere
    assert energy_pointing_game(cam, mask) == pytest.approx(0.1)
    assert pxap(cam, mask) == pytest.approx(0.1)


@pytest.mark.parametrize("seed", range(6))
def test_sorted_metrics_equal_the_reference_functions_and_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    cam = rng.random((40, 30)).astype(np.float32)
    if seed % 2:
        cam = np.round(cam * 20) / 20  # many ties, values exactly on the thresholds
    cam[5, 5] = np.float32(0.05)  # exactly on a threshold
    mask = rng.random((40, 30)) > 0.7
    thresholds = tuple(round(0.05 * i, 2) for i in range(1, 20))
    got = localization_metrics(cam, mask, 0.5, sweep=thresholds)
    assert got["sweep"] == [iou(cam, mask, t) for t in thresholds]
    assert got["iou"] == iou(cam, mask, 0.5) and got["dice"] == dice(cam, mask, 0.5)
    assert got["pointing_game"] == pointing_game(cam, mask)
    assert got["energy_pointing_game"] == pytest.approx(energy_pointing_game(cam, mask), abs=1e-12)
    assert got["pxap"] == pytest.approx(average_precision_score(mask.ravel(), cam.ravel()), abs=1e-12)
    assert got["pxap"] == pytest.approx(pxap(cam, mask), abs=1e-12)
    assert got["cam_area"] == np.mean(cam >= 0.5) and got["mask_area"] == np.mean(mask)


def test_otsu_separates_two_levels():
    cam = np.zeros((10, 10), np.float32)
    cam[:, 5:] = 0.8
    t = otsu_threshold(cam)
    assert 0 < t <= 0.8 and iou(cam, cam > 0.5, t) == 1.0


def test_classification_metrics_match_scikit_learn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 60)
    probs = rng.dirichlet([1, 1, 1], 60)
    probs[np.arange(60), labels] += 0.3
    probs /= probs.sum(1, keepdims=True)
    got = classification_metrics(labels, probs, ["Normal", "Benign", "Malignant"])
    preds = probs.argmax(1)
    assert got["accuracy"] == pytest.approx((preds == labels).mean())
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds))
    assert got["macro_auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert got["confusion_matrix"]["rows_true_cols_pred"] == confusion_matrix(labels, preds).tolist()
    benign = got["per_class"]["Benign"]
    tp = ((preds == 1) & (labels == 1)).sum()
    assert benign["sensitivity"] == pytest.approx(tp / (labels == 1).sum())
    assert benign["precision"] == pytest.approx(tp / (preds == 1).sum())
    assert benign["specificity"] == pytest.approx(((preds != 1) & (labels != 1)).sum() / (labels != 1).sum())


def test_absent_class_has_no_auc():
    got = classification_metrics(
        np.array([0, 0, 1]), np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]), ["A", "B", "C"]
    )
    assert got["per_class"]["C"]["auc"] is None and got["per_class"]["C"]["sensitivity"] is None
    assert got["macro_auc"] is None and got["per_class"]["A"]["auc"] == 1.0
