"""Pure array per-image metrics: classification quality and CAM-vs-annotation agreement (numpy and
scikit-learn; torch only for its faster sort).

Every function takes arrays, never a model or a path. Maps are `cam: float32 [H, W] in [0, 1]` (min–max
normalised) and `mask: bool [H, W]` of the same shape. Not for: producing maps (engine.py, maps.py) or numbers
across images (statistics.py).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

SWEEP_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05, 0.10, …, 0.95


# ---- CAM vs mask ------------------------------------------------------------------------------------------


def binarize(cam: np.ndarray, threshold: float) -> np.ndarray:
    """bool [H, W]: pixels whose CAM value is ≥ threshold. An all-zero CAM never passes (threshold > 0)."""
    return cam >= threshold


def iou(cam: np.ndarray, mask: np.ndarray, threshold: float) -> float:
    """Jaccard index |B ∩ M| / |B ∪ M| of the binarised CAM B and the mask M; 0 when both are empty."""
    binary = binarize(cam, threshold)
    union = np.count_nonzero(binary | mask)
    return float(np.count_nonzero(binary & mask) / union) if union else 0.0


def dice(cam: np.ndarray, mask: np.ndarray, threshold: float) -> float:
    """Dice coefficient 2|B ∩ M| / (|B| + |M|); 0 when both are empty."""
    binary = binarize(cam, threshold)
    total = np.count_nonzero(binary) + np.count_nonzero(mask)
    return float(2 * np.count_nonzero(binary & mask) / total) if total else 0.0


def pointing_game(cam: np.ndarray, mask: np.ndarray) -> bool:
    """Pointing game (Zhang et al. 2018): is the CAM's maximum inside the mask?

    With ties, every pixel attaining the maximum must be inside; a CAM with no positive value never hits.
    """
    peak = float(cam.max(initial=0.0))
    if peak <= 0:
        return False
    return bool(mask[cam >= peak].all())


def energy_pointing_game(cam: np.ndarray, mask: np.ndarray) -> float:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM): share of the CAM's total mass inside the mask."""
    total = float(cam.sum(dtype=np.float64))
    return float(cam[mask].sum(dtype=np.float64) / total) if total > 0 else 0.0


def pxap(cam: np.ndarray, mask: np.ndarray) -> float | None:
    """Pixel average precision (Choe et al. 2020): threshold-free AP of CAM values against mask pixels.

    None when the mask has no pixel (undefined); 1.0 when every pixel is in the mask.
    """
    positives = int(np.count_nonzero(mask))
    if positives == 0:
        return None
    if positives == mask.size:
        return 1.0
    from sklearn.metrics import average_precision_score  # here: scikit-learn costs ~0.8 s to import

    return float(average_precision_score(mask.ravel(), cam.ravel()))


def area_fraction(binary: np.ndarray) -> float:
    return float(np.count_nonzero(binary) / binary.size) if binary.size else 0.0


def otsu_threshold(cam: np.ndarray) -> float:
    """Otsu's threshold of one CAM (OpenCV on 8-bit levels), mapped back to (0, 1)."""
    levels = np.clip(np.rint(cam * 255), 0, 255).astype(np.uint8)
    value, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(min(max((value + 1) / 255.0, 1 / 255.0), 1.0))


def sorted_nonnegative(values: np.ndarray) -> np.ndarray:
    """Non-negative float32 values, flattened and sorted ascending (exactly as `np.sort` sorts them). Their bit
    patterns, read as int32, order exactly as the values (-0.0 first, NaN last), and torch sorts int32 with a radix
    sort, 2.5x faster than numpy's sort of float32 on this CPU (`benchmarks/bench_resolution.py` times scoring)."""
    keys = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.int32))
    return torch.sort(keys).values.numpy().view(np.float32)


class SortedScores:
    """All CAM values and those inside the mask, each sorted once, so that every metric — at any number of
    thresholds, and PxAP — is a binary search instead of another pass over millions of pixels. Counts outside the
    mask are all-minus-inside, which spares extracting the (large) outside.

    Gives exactly what the one-line reference functions above give (the tests hold them equal).
    """

    def __init__(self, cam: np.ndarray, mask: np.ndarray) -> None:
        cam = np.asarray(cam, dtype=np.float32)
        if cam.size and cam.min() < 0:
            raise ValueError("cam must be non-negative (a min-max normalised map)")
        self.everything = sorted_nonnegative(cam)
        self.inside = sorted_nonnegative(cam[mask])
        self.size = cam.size

    @staticmethod
    def _at_least(values: np.ndarray, thresholds) -> np.ndarray | int:
        """How many sorted float32 values are ≥ each threshold, as `cam >= threshold` counts them (in float32)."""
        return values.size - np.searchsorted(values, np.asarray(thresholds, dtype=np.float32), side="left")

    def _counts(self, threshold: float) -> tuple[int, int]:
        """(pixels ≥ threshold inside the mask, pixels ≥ threshold anywhere)."""
        return int(self._at_least(self.inside, threshold)), int(self._at_least(self.everything, threshold))

    def iou(self, threshold: float) -> float:
        inside, anywhere = self._counts(threshold)
        union = self.inside.size + anywhere - inside
        return float(inside / union) if union else 0.0

    def dice(self, threshold: float) -> float:
        inside, anywhere = self._counts(threshold)
        total = anywhere + self.inside.size
        return float(2 * inside / total) if total else 0.0

    def cam_area(self, threshold: float) -> float:
        return self._counts(threshold)[1] / self.size

    def pointing_game(self) -> bool:
        if self.inside.size == 0:
            return False
        peak = self.everything[-1]
        inside, anywhere = self._counts(peak)
        return bool(peak > 0 and inside == anywhere)  # every maximal pixel is inside

    def energy_pointing_game(self) -> float:
        total = float(self.everything.sum(dtype=np.float64))
        return float(self.inside.sum(dtype=np.float64)) / total if total > 0 else 0.0

    def pxap(self) -> float | None:
        """Average precision Σ (R_k − R_{k−1}) P_k over the distinct CAM values, as scikit-learn computes it."""
        positives = self.inside.size
        if positives == 0:
            return None
        if positives == self.size:
            return 1.0
        descending = self.inside[::-1]
        run_ends = np.append(np.flatnonzero(np.diff(descending)), positives - 1)
        true_positives = run_ends + 1
        predicted = self._at_least(self.everything, descending[run_ends])  # pixels ≥ each distinct value
        precision = true_positives / predicted
        recall_steps = np.diff(true_positives, prepend=0) / positives
        return float(np.sum(recall_steps * precision))


def localization_metrics(
    cam: np.ndarray, mask: np.ndarray, threshold: float, sweep: tuple[float, ...] = ()
) -> dict[str, float | bool | None]:
    """Every per-image agreement metric of one CAM against one mask at one threshold (+ IoU, Dice and CAM area at
    each `sweep` threshold)."""
    scores = SortedScores(cam, mask)
    metrics = {
        "iou": scores.iou(threshold),
        "dice": scores.dice(threshold),
        "pointing_game": scores.pointing_game(),
        "energy_pointing_game": scores.energy_pointing_game(),
        "pxap": scores.pxap(),
        "cam_area": scores.cam_area(threshold),
        "mask_area": scores.inside.size / scores.size if scores.size else 0.0,
    }
    if sweep:  # IoU, Dice and CAM area at each sweep threshold: a threshold tuned later is a lookup, not a re-score
        metrics["sweep"] = [scores.iou(t) for t in sweep]
        metrics["sweep_dice"] = [scores.dice(t) for t in sweep]
        metrics["sweep_cam_area"] = [scores.cam_area(t) for t in sweep]
    return metrics


# ---- classification ---------------------------------------------------------------------------------------


def classification_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, per-class sensitivity/specificity/precision/F1/AUC, macro AUC, confusion.

    labels: int [N] true class indices; probs: float [N, C] softmax probabilities. AUCs are one-vs-rest
    (scikit-learn) and None for a class with no positive or no negative example.
    """
    from sklearn.metrics import roc_auc_score  # here: scikit-learn costs ~0.8 s to import

    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(labels), len(class_names))
    preds = probs.argmax(axis=1) if len(labels) else np.zeros(0, dtype=int)
    n_classes = len(class_names)
    confusion = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(confusion, (labels, preds), 1)
    per_class, sensitivities, aucs = {}, [], []
    for c, name in enumerate(class_names):
        tp = int(confusion[c, c])
        fn = int(confusion[c].sum() - tp)
        fp = int(confusion[:, c].sum() - tp)
        tn = int(confusion.sum() - tp - fn - fp)
        sensitivity = tp / (tp + fn) if tp + fn else None
        precision = tp / (tp + fp) if tp + fp else None
        positives = labels == c
        auc = float(roc_auc_score(positives, probs[:, c])) if 0 < positives.sum() < len(labels) else None
        f1 = (
            2 * precision * sensitivity / (precision + sensitivity)
            if precision is not None and sensitivity is not None and precision + sensitivity > 0
            else (0.0 if precision is not None or sensitivity is not None else None)
        )
        per_class[name] = {
            "support": int(positives.sum()),
            "sensitivity": sensitivity,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "precision": precision,
            "f1": f1,
            "auc": auc,
        }
        if sensitivity is not None:
            sensitivities.append(sensitivity)
        if auc is not None:
            aucs.append(auc)
    return {
        "count": int(len(labels)),
        "accuracy": float((preds == labels).mean()) if len(labels) else None,
        "balanced_accuracy": float(np.mean(sensitivities)) if sensitivities else None,
        "macro_auc": float(np.mean(aucs)) if aucs and len(aucs) == n_classes else None,
        "per_class": per_class,
        "confusion_matrix": {"labels": list(class_names), "rows_true_cols_pred": confusion.tolist()},
    }
