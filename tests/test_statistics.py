import numpy as np
import pytest

from btxrd_cam.statistics import bootstrap_ci, bootstrap_indices, describe, mean_ci, paired_bootstrap


def test_describe_and_bootstrap():
    stats = describe([1.0, 2.0, 3.0, 4.0, None])
    assert stats == {
        "count": 4,
        "mean": 2.5,
        "median": 2.5,
        "std": pytest.approx(np.std([1, 2, 3, 4])),
        "iqr": 1.5,
        "min": 1.0,
        "max": 4.0,
    }
    assert describe([])["mean"] is None
    low, high = bootstrap_ci([0.0, 1.0] * 20)
    assert low < 0.5 < high and bootstrap_ci([0.0, 1.0] * 20) == [low, high]
    assert bootstrap_ci([]) is None and bootstrap_ci([0.3] * 5) == [0.3, 0.3]
    assert mean_ci([None, 0.2, 0.4]) == {"mean": pytest.approx(0.3), "ci95": bootstrap_ci([0.2, 0.4])}


def test_paired_bootstrap_recovers_a_known_difference():
    rng = np.random.default_rng(7)
    base = rng.uniform(0, 1, 200)  # large between-image spread ...
    shifted = base + 0.05 + rng.normal(0, 0.01, 200)  # ... and a small, consistent improvement
    paired = paired_bootstrap(shifted, base)
    assert paired["difference"] == pytest.approx(np.mean(shifted - base))
    low, high = paired["ci95"]
    assert low < 0.05 < high and high - low < 0.01 and paired["excludes_zero"]
    # unpaired intervals of the two means overlap widely: pairing is what makes the difference visible
    assert bootstrap_ci(shifted)[0] < bootstrap_ci(base)[1]
    # the same values twice: difference 0, not flagged
    same = paired_bootstrap(base, base)
    assert same == {"difference": 0.0, "ci95": [0.0, 0.0], "excludes_zero": False}
    # a difference within the reports' precision is not flagged either
    assert paired_bootstrap(base + 1e-9, base)["excludes_zero"] is False


def test_paired_bootstrap_resamples_the_same_images_for_both_and_skips_missing():
    a = [0.1, None, 0.5, 0.9]
    b = [0.0, 0.3, None, 0.7]
    paired = paired_bootstrap(a, b)  # only images 0 and 3 have both
    assert paired["difference"] == pytest.approx(0.15)
    indices = bootstrap_indices(2)
    expected = np.percentile(np.asarray([0.1, 0.2])[indices].mean(axis=1), [2.5, 97.5])
    assert paired["ci95"] == pytest.approx(list(expected))
    assert paired_bootstrap([None], [0.2]) == {"difference": None, "ci95": None, "excludes_zero": None}
