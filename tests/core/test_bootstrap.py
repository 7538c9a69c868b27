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
    ci = group_ci(lambda i: float(y[i].mean()) if y[i].any() else None, np.arange(100), n_boot=200,
                  min_valid_share=0.5)
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


def test_weighted_micro_auroc_equals_scikit_learn_with_ties_and_weights():
    """Scores rounded to 0.1 (many ties) and fractional weights: scikit-learn's trapezoid and our Mann-Whitney
    count sum the same terms in another order, so they agree to float64 rounding (terms <= 1, n <= 300)."""
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(11)
    for _ in range(20):
        y = rng.random((100, 3)) < 0.3
        prob = np.round(np.clip(y * 0.2 + rng.random((100, 3)) * 0.8, 0, 1), 1)
        w = rng.random(100) * (rng.random(100) < 0.8)
        ref = roc_auc_score(y[w > 0].ravel(), prob[w > 0].ravel(), sample_weight=np.repeat(w[w > 0], 3))
        assert weighted_micro_auroc(y, prob, w) == pytest.approx(ref, rel=0, abs=300 * np.finfo(float).eps)
    with pytest.raises(ValueError, match="finite"):
        weighted_micro_auroc(y, np.where(prob > 0.5, np.nan, prob), np.ones(100))


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


def test_fold_models_as_a_level_include_the_variance_between_models():
    """5 fold models on one shared test set whose scores differ by model (+-0.2): with the folds held fixed the
    interval of their mean is as narrow as the patients make it and misses the population mean 0; with the
    models resampled too it covers it. With identical models the two-level interval stays near the one-level."""
    rng = np.random.default_rng(7)
    hits_fixed, hits_models, trials = 0, 0, 40
    for t in range(trials):
        v, g = _fold(rng, n_groups=40, between=0.2, within=0.05)
        v = v - v.mean()
        shifts = rng.normal(0, 0.2, 5)
        folds = [[(g, lambda w, v=v + sh: float((w * v).sum() / w.sum()))] for sh in shifts]
        fixed = fold_mean_ci(folds, n_boot=300, seed=t, method="expanded_percentile")
        both = fold_mean_ci(folds, n_boot=300, seed=t, method="expanded_percentile", models=True)
        hits_fixed += fixed["low"] <= 0.0 <= fixed["high"]
        hits_models += both["low"] <= 0.0 <= both["high"]
    assert hits_fixed / trials < 0.6 and hits_models / trials >= 0.9
    assert "models (5)" in both["variance"] and "fixed" in fixed["variance"]
    v, g = _fold(rng, n_groups=40)
    stat = lambda w: float((w * v).sum() / w.sum())   # noqa: E731
    one = fold_mean_ci([[(g, stat)]] * 5, n_boot=400, method="percentile")
    two = fold_mean_ci([[(g, stat)]] * 5, n_boot=400, method="percentile", models=True)
    assert two["high"] - two["low"] == pytest.approx(one["high"] - one["low"], rel=0.2)   # nothing added
    with pytest.raises(ValueError, match="jackknife"):
        fold_mean_ci([[(g, stat)]] * 5, n_boot=200, method="bca", models=True)


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


# --- intervals that cover, undefined resamples, folds that share patients -----------------------

from cxrbench.core.bootstrap import interval, one_sided_p, patient_mean_ci  # noqa: E402


def test_the_default_interval_covers_better_than_the_percentile_with_9_skewed_patients():
    """9 patients, skewed effects (benchmarks/bench_coverage.py's model): the percentile interval undercovers."""
    from benchmarks.bench_coverage import coverage
    cov = coverage(9, sims=300, n_boot=300, seed=9, methods=("percentile", "expanded_percentile"))
    assert cov["patient_mean"]["cluster_bootstrap_t"] >= 0.90
    assert cov["patient_mean"]["cluster_bootstrap_t"] > cov["patient_mean"]["percentile"] + 0.03
    assert cov["image_mean"]["expanded_percentile"] > cov["image_mean"]["percentile"] + 0.02


def test_too_few_defined_resamples_is_no_ci_never_a_number():
    y = np.zeros(100, bool)
    y[:2] = True                                                 # 2 positives: most resamples have none
    ci = group_ci(lambda i: float(y[i].mean()) if y[i].any() else None, np.arange(100), n_boot=200)
    assert ci["valid_share"] < 0.9 and ci["status"] == "no_ci" and ci["low"] is None and ci["high"] is None
    assert "stats.min_valid_share" in ci["reason"] and ci["undefined"] == round((1 - ci["valid_share"]) * 200)
    lenient = group_ci(lambda i: float(y[i].mean()) if y[i].any() else None, np.arange(100), n_boot=200,
                       min_valid_share=0.5)
    assert lenient["status"] == "ok" and lenient["low"] <= lenient["estimate"] <= lenient["high"]


def test_percentile_bca_and_expanded_by_hand():
    rng = np.random.default_rng(0)
    dist = rng.normal(0, 1, 4000)
    pct = interval(0.0, dist, None, 10, 0.95, "percentile")
    assert pct["low"] == pytest.approx(np.quantile(dist, 0.025)) and pct["high"] == pytest.approx(np.quantile(dist, 0.975))
    from scipy import stats as S
    z = np.sqrt(10 / 9) * S.t.ppf(0.975, 9)
    exp = interval(0.0, dist, None, 10, 0.95, "expanded_percentile")
    assert exp["high"] == pytest.approx(np.quantile(dist, S.norm.cdf(z)))
    jack = np.linspace(-1, 1, 10)                               # symmetric: acceleration 0
    bca = interval(float(np.median(dist)), dist, jack, 10, 0.95, "bca")
    assert bca["low"] == pytest.approx(pct["low"], abs=0.02) and bca["high"] == pytest.approx(pct["high"], abs=0.02)
    # the one-sided p inverts the interval: at the lower bound, p = alpha / 2
    assert one_sided_p(0.0, dist, None, 10, exp["low"], True, "expanded_percentile") == pytest.approx(0.025, abs=2e-3)


def test_patient_mean_ci_tost_and_p():
    rng = np.random.default_rng(1)
    v = rng.normal(0.3, 0.1, 40)
    ci = patient_mean_ci(v, np.arange(40), n_boot=500, null=0.0, equivalence=(-0.05, 0.05))
    assert ci["low"] < 0.3 < ci["high"] and ci["p"] < 0.01 and not ci["equivalence"]["equivalent"]
    near = patient_mean_ci(rng.normal(0, 0.01, 40), np.arange(40), n_boot=500, equivalence=(-0.05, 0.05))
    assert near["equivalence"]["equivalent"]


def _overlapping_folds(rng, n_patients=60, folds=5, share=0.8):
    """``folds`` test sets drawn from one pool of patients, each holding ``share`` of them (so they overlap),
    one image per patient; values = a patient effect (truth 0)."""
    effect = rng.normal(0, 1, n_patients)
    out = []
    for _ in range(folds):
        keep = np.sort(rng.choice(n_patients, int(share * n_patients), replace=False))
        v = effect[keep] + rng.normal(0, 0.05, len(keep))
        out.append([(np.array([f"p{k}" for k in keep]), lambda w, v=v: float((w * v).sum() / w.sum()))])
    return out


def test_fold_mean_se_matches_a_simulation_when_folds_share_patients():
    """Folds that share 80 % of their patients: the fold mean varies almost as much as one fold. Resampling each
    fold on its own (the former code) made its interval about sqrt(5) too narrow; one draw of the patients shared
    by every fold gets the standard error the simulation gives."""
    rng = np.random.default_rng(7)
    sims = [np.mean([f[0][1](np.ones(48)) for f in _overlapping_folds(rng)]) for _ in range(400)]
    true_se = float(np.std(sims))
    widths = []
    for t in range(12):
        ci = fold_mean_ci(_overlapping_folds(rng), n_boot=300, seed=t, method="percentile")
        widths.append((ci["high"] - ci["low"]) / (2 * 1.96))
    assert np.mean(widths) == pytest.approx(true_se, rel=0.25)
