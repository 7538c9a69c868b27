"""Bootstrap over patient groups: coverage on synthetic data with a known truth, pairing, undefined resamples."""

import numpy as np
import pytest

from cxrbench.bootstrap import group_ci, paired_ci


def _patients(rng, n_groups=40, size=4, between=1.0, within=0.2):
    """Values of ``size`` images per patient: a patient effect shared by its images, plus image noise. Truth: 0."""
    effect = rng.normal(0, between, n_groups)
    values = np.repeat(effect, size) + rng.normal(0, within, n_groups * size)
    return values, np.repeat(np.arange(n_groups), size)


def _coverage(by_groups: bool, trials=120, seed=0):
    rng = np.random.default_rng(seed)
    hits = 0
    for t in range(trials):
        v, g = _patients(rng)
        ci = group_ci(lambda i: v[i].mean(), g if by_groups else np.arange(len(v)), n_boot=200, seed=t)
        hits += ci["low"] <= 0.0 <= ci["high"]
    return hits / trials


def test_group_bootstrap_covers_the_truth_and_an_image_bootstrap_does_not():
    assert 0.86 <= _coverage(by_groups=True) <= 1.0
    assert _coverage(by_groups=False) < 0.75        # images of one patient are not independent


def test_paired_difference_cancels_the_shared_case_mix():
    rng = np.random.default_rng(1)
    v, g = _patients(rng, n_groups=60)
    a, b = v + 0.10, v + rng.normal(0, 0.01, len(v))           # a is b plus 0.1, on the same images
    paired = paired_ci(lambda i: a[i].mean(), lambda i: b[i].mean(), g, n_boot=300)
    alone = group_ci(lambda i: a[i].mean(), g, n_boot=300)
    assert paired["low"] > 0.09 and paired["high"] < 0.11
    assert (paired["high"] - paired["low"]) < 0.1 * (alone["high"] - alone["low"])


def test_undefined_resamples_are_counted_not_hidden():
    y = np.zeros(100, bool)
    y[:2] = True                                                 # 2 positives: many resamples have none
    ci = group_ci(lambda i: float(y[i].mean()) if y[i].any() else None, np.arange(100), n_boot=200)
    assert ci["undefined"] > 0 and ci["low"] <= ci["estimate"] <= ci["high"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 100"):
        group_ci(lambda i: 0.0, [0, 1], n_boot=10)
    with pytest.raises(ValueError, match="at least 2"):
        group_ci(lambda i: 0.0, [0, 0, 0])
