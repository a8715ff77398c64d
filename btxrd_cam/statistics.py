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


def lesion_size_bins(mask_areas: list[float]) -> tuple[float, float] | None:
    """Tertile edges of the mask area fractions (small ≤ first < medium ≤ second < large)."""
    if not mask_areas:
        return None
    low, high = np.percentile(np.asarray(mask_areas, dtype=np.float64), [100 / 3, 200 / 3])
    return float(low), float(high)
