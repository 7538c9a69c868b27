"""Bootstrap over patient groups: coverage on synthetic data with a known truth, pairing, undefined resamples."""

import numpy as np
import pytest

from cxrbench.core.bootstrap import group_ci, micro_f1, paired_ci


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


# --- several folds with their own test sets ----------------------------------------------------

from cxrbench.core.bootstrap import corrected_resampled_t, fold_mean_ci, weighted_micro_auroc, weighted_micro_f1  # noqa: E402


def _fold(rng, n_groups=30, size=3, between=1.0, within=0.2):
    v, g = _patients(rng, n_groups, size, between, within)
    return v, np.array([f"p{x}" for x in g])


def test_fold_mean_ci_covers_the_truth():
    """5 folds, each its own test set of 30 patients: the CI of the mean over folds covers 0 about 95 % of the time."""
    rng = np.random.default_rng(3)
    hits, trials = 0, 80
    for t in range(trials):
        folds = []
        for _ in range(5):
            v, g = _fold(rng)
            folds.append([(g, lambda w, v=v: float((w * v).sum() / w.sum()))])
        ci = fold_mean_ci(folds, n_boot=200, seed=t)
        hits += ci["low"] <= 0.0 <= ci["high"]
    assert 0.86 <= hits / trials <= 1.0


def test_fold_mean_ci_pairs_arms_on_the_same_images_and_shares_a_subset():
    rng = np.random.default_rng(4)
    folds, subset = [], []
    for _ in range(3):
        v, g = _fold(rng, n_groups=50)
        a, b = v + 0.1, v + rng.normal(0, 0.01, len(v))
        folds.append([(g, lambda w, a=a: float((w * a).sum() / w.sum())),
                      (g, lambda w, b=b: float((w * b).sum() / w.sum()))])
        keep = g != g[0]                                  # arm 0 lost one patient's images (a leak removed)
        subset.append([(g[keep], lambda w, a=a[keep]: float((w * a).sum() / w.sum())),
                       (g, lambda w, b=b: float((w * b).sum() / w.sum()))])
    paired = fold_mean_ci(folds, n_boot=300)
    assert 0.09 < paired["low"] and paired["high"] < 0.11
    shared = fold_mean_ci(subset, n_boot=300)
    assert shared["high"] - shared["low"] < 0.2          # still paired on the shared patients


def test_weighted_scores_equal_the_repeated_images():
    rng = np.random.default_rng(5)
    y = rng.random((20, 3)) < 0.4
    prob = np.clip(y * 0.3 + rng.random((20, 3)) * 0.7, 0, 1)
    w = rng.integers(0, 3, 20)
    rep = np.repeat(np.arange(20), w)
    assert weighted_micro_f1(y, prob > 0.5, w) == pytest.approx(micro_f1(y[rep], prob[rep] > 0.5))
    from sklearn.metrics import roc_auc_score
    assert weighted_micro_auroc(y, prob, w) == pytest.approx(roc_auc_score(y[rep].ravel(), prob[rep].ravel()))
    assert weighted_micro_auroc(np.zeros((4, 2)), np.ones((4, 2)), np.ones(4)) is None


def test_corrected_resampled_t_by_hand():
    d = [0.10, 0.05, 0.12, 0.08, 0.00]
    out = corrected_resampled_t(d, test_train_ratio=0.4 / 0.6)
    from scipy import stats as S
    se = np.sqrt((1 / 5 + 0.4 / 0.6) * np.var(d, ddof=1))
    half = S.t.ppf(0.975, 4) * se
    assert out["low"] == pytest.approx(np.mean(d) - half) and out["high"] == pytest.approx(np.mean(d) + half)
    plain = S.t.ppf(0.975, 4) * np.std(d, ddof=1) / np.sqrt(5)
    assert out["high"] - out["low"] > 2 * plain         # wider than the naive t interval: folds overlap
    assert corrected_resampled_t([0.1], 0.5)["low"] is None


def test_folds_on_one_shared_test_set_share_their_draw():
    """5 folds scored on the same test images: the CI of their mean is as wide as one fold's, not sqrt(5) narrower."""
    rng = np.random.default_rng(6)
    v, g = _fold(rng, n_groups=40)
    stat = lambda w: float((w * v).sum() / w.sum())   # noqa: E731
    one = fold_mean_ci([[(g, stat)]], n_boot=400)
    five = fold_mean_ci([[(g, stat)]] * 5, n_boot=400)
    assert five["high"] - five["low"] == pytest.approx(one["high"] - one["low"])


# --- several statistics on one set of draws; the fast AUROC --------------------------------------

from cxrbench.core.bootstrap import auroc_statistic, fold_bootstrap  # noqa: E402


def test_fast_auroc_equals_scikit_learn_with_weights_and_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    y = rng.random(200) < 0.3
    score = np.round(rng.random(200) + 0.4 * y, 1)                     # many ties
    stat = auroc_statistic(y, score)
    for _ in range(20):
        w = np.bincount(rng.integers(0, 200, 200), minlength=200).astype(float)
        assert stat(w) == pytest.approx(roc_auc_score(y, score, sample_weight=w), abs=1e-12)
    assert stat(np.where(y, 0.0, 1.0)) is None                          # no positive drawn: undefined


def test_fold_bootstrap_reducers_share_the_draws_of_fold_mean_ci():
    rng = np.random.default_rng(5)
    folds = []
    for _ in range(2):
        y = rng.random(90) < 0.4
        groups = np.array([f"g{i // 3}" for i in range(90)])
        a, b = auroc_statistic(y, y + rng.random(90)), auroc_statistic(y, rng.random(90))
        folds.append([(groups, a), (groups, b)])
    both = fold_bootstrap(folds, {"diff": lambda v: (v[:, 0] - v[:, 1]).mean(), "a": lambda v: v[:, 0].mean()},
                          n_boot=200, seed=3)
    alone = fold_mean_ci(folds, n_boot=200, seed=3)
    assert both["diff"]["low"] == alone["low"] and both["diff"]["high"] == alone["high"]
    first = fold_mean_ci([f[:1] for f in folds], n_boot=200, seed=3)
    assert both["a"]["estimate"] == pytest.approx(first["estimate"]) and both["a"]["low"] == first["low"]
