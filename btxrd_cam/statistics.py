"""Numbers across images: descriptive statistics, bootstrap confidence intervals and paired differences.

Every interval is a percentile bootstrap with a fixed seed, so reports are deterministic; with the same seed and
the same number of images, every configuration is resampled with the same image indices, which is what makes a
difference between two configurations paired. Not for: per-image metrics (metrics.py).
"""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
# Differences smaller than this are below the reports' precision (6 decimals): never flagged as excluding 0.
NEGLIGIBLE = 1e-6


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _floats(values) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None and not _isnan(v)], dtype=np.float64)


def describe(values) -> dict[str, float | int | None]:
    """count, mean, median, std (population), IQR, min, max of the non-missing values."""
    array = _floats(values)
    if array.size == 0:
        return {"count": 0, "mean": None, "median": None, "std": None, "iqr": None, "min": None, "max": None}
    q1, median, q3 = np.percentile(array, [25, 50, 75])
    return {
        "count": int(array.size),
        "mean": float(array.mean()),
        "median": float(median),
        "std": float(array.std()),
        "iqr": float(q3 - q1),
        "min": float(array.min()),
        "max": float(array.max()),
    }


def bootstrap_indices(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """int [resamples, n]: which images each bootstrap resample draws (with replacement)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentile_ci(means: np.ndarray) -> list[float]:
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]


def bootstrap_ci(values, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """Percentile 95% bootstrap confidence interval of the mean (fixed seed); None without values."""
    array = _floats(values)
    if array.size == 0:
        return None
    return _percentile_ci(array[bootstrap_indices(array.size, resamples, seed)].mean(axis=1))


def mean_ci(values, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """{mean, ci95} of the non-missing values (both None without values)."""
    array = _floats(values)
    return {"mean": float(array.mean()) if array.size else None, "ci95": bootstrap_ci(array, resamples, seed)}


def paired_bootstrap(a, b, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """Mean difference a − b over the images both have, and its paired bootstrap 95% CI: each resample draws the
    same images for both, so what the images have in common cancels. `excludes_zero`: the CI lies wholly above or
    below 0 by more than the reports' precision (1e-6). All None when no image has both values."""
    pairs = [(float(x), float(y)) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    pairs = [(x, y) for x, y in pairs if not (math.isnan(x) or math.isnan(y))]
    if not pairs:
        return {"difference": None, "ci95": None, "excludes_zero": None}
    differences = np.asarray([x - y for x, y in pairs], dtype=np.float64)
    ci = _percentile_ci(differences[bootstrap_indices(differences.size, resamples, seed)].mean(axis=1))
    return {
        "difference": float(differences.mean()),
        "ci95": ci,
        "excludes_zero": bool(ci[0] > NEGLIGIBLE or ci[1] < -NEGLIGIBLE),
    }


def tertile_edges(values) -> tuple[float, float] | None:
    """Tertile edges of the non-missing values (low ≤ first < middle ≤ second < high); None without values."""
    array = _floats(values)
    if array.size == 0:
        return None
    low, high = np.percentile(array, [100 / 3, 200 / 3])
    return float(low), float(high)


TERTILE_NAMES = ("small", "medium", "large")


def _tertile(value, edges) -> str:
    if value is None or edges is None:
        return "unknown"
    return TERTILE_NAMES[0] if value <= edges[0] else TERTILE_NAMES[1] if value <= edges[1] else TERTILE_NAMES[2]


def breakdowns(records: list[dict], summarise, lesion_area) -> dict:
    """`summarise(records)` per group of records: by true class, correct vs missed, subtype, lesion size tertile,
    centre, view, body region and image size tertile (megapixels). Records carry `label, pred, subtype, center,
    view, body_region, megapixels`; `lesion_area(record)` gives the lesion's area fraction. A record without the
    grouping's value goes to `unknown`."""

    def group(key):
        groups: dict[str, list[dict]] = {}
        for record in records:
            value = key(record)
            groups.setdefault("unknown" if value is None else str(value), []).append(record)
        return {name: summarise(rows) for name, rows in sorted(groups.items())}

    areas = tertile_edges(lesion_area(r) for r in records)
    sizes = tertile_edges(r.get("megapixels") for r in records)
    return {
        "by_class": group(lambda r: r["label"]),
        "by_outcome": group(lambda r: "correct" if r["pred"] == r["label"] else "missed"),
        "by_subtype": group(lambda r: r.get("subtype")),
        "by_lesion_size": {
            "tertile_edges_mask_area": list(areas) if areas else None,
            **(group(lambda r: _tertile(lesion_area(r), areas)) if areas else {}),
        },
        "by_centre": group(lambda r: r.get("center")),
        "by_view": group(lambda r: r.get("view")),
        "by_body_region": group(lambda r: r.get("body_region")),
        "by_image_size": {
            "tertile_edges_megapixels": list(sizes) if sizes else None,
            **(group(lambda r: _tertile(r.get("megapixels"), sizes)) if sizes else {}),
        },
    }


def macro_auc_weighted(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUC of images counted `weights` times — one AUC per row of weights (float [B, N]; a
    bootstrap resample is the count of each image's draws), NaN where a row lacks a class. labels: int [N] in
    0..C-1; probs: float [N, C]. The Mann–Whitney form with ties counted half, i.e. scikit-learn's AUC, computed
    from one sort per class: O(B·N), no per-resample sort."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    aucs = []
    for c in range(probs.shape[1]):
        order = np.argsort(probs[:, c], kind="stable")
        scores = probs[order, c]
        positive = labels[order] == c
        w = weights[:, order]
        w_pos, w_neg = w * positive, w * ~positive
        starts = np.r_[0, np.flatnonzero(np.diff(scores)) + 1]  # groups of tied scores
        group = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, scores.size]))
        neg_in_group = np.add.reduceat(w_neg, starts, axis=1)
        neg_before = np.cumsum(neg_in_group, axis=1) - neg_in_group
        below = neg_before[:, group] + 0.5 * neg_in_group[:, group]  # negatives scored below each image
        n_pos, n_neg = w_pos.sum(axis=1), w_neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs.append((w_pos * below).sum(axis=1) / (n_pos * n_neg))
    stacked = np.stack(aucs)
    return np.where(np.isfinite(stacked).all(axis=0), stacked.mean(axis=0), np.nan)


def bootstrap_counts(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """int [resamples, n]: how many times each image is drawn in each bootstrap resample (the resamples of
    `bootstrap_indices`, as counts)."""
    index = bootstrap_indices(n, resamples, seed)
    flat = (index + (np.arange(resamples) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n)


def cue_auc(features: np.ndarray, labels: np.ndarray, seed: int = BOOTSTRAP_SEED, folds: int = 5) -> dict:
    """How well `features` (float [N, F]) predict the class `labels` (int [N]): a logistic regression (standardised
    features) cross-validated in stratified folds (fixed seed), scored by the macro one-vs-rest AUC of its
    out-of-fold probabilities, with a 95 % bootstrap CI over images. {auc, ci95, folds}; all None when a class
    has fewer than two images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels, dtype=int)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        return {"auc": None, "ci95": None, "folds": None}
    folds = int(min(folds, counts.min()))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = cross_val_predict(model, np.asarray(features, float), labels, cv=splitter, method="predict_proba")
    remapped = np.searchsorted(classes, labels)
    if len(classes) == 2:
        auc = float(roc_auc_score(remapped, probs[:, 1]))
    else:
        auc = float(roc_auc_score(remapped, probs, multi_class="ovr", average="macro"))
    # (with two classes, both one-vs-rest halves are the binary AUC, so their mean is too)
    resampled = macro_auc_weighted(remapped, probs, bootstrap_counts(len(labels), seed=seed))
    low, high = np.nanpercentile(resampled, [2.5, 97.5])
    return {"auc": auc, "ci95": [float(low), float(high)], "folds": folds}
