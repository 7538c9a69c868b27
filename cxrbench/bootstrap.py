"""Confidence intervals over patient groups: a seeded (paired) bootstrap that resamples whole groups.

Images of one patient (or of one near-duplicate group) are not independent, so
an interval over images is too narrow; resampling groups with replacement keeps
each patient's images together. Built on :func:`scipy.stats.bootstrap`, whose
resampled "data" are the group indices; the statistic expands them to images.

* :func:`group_ci`: the CI of one statistic (e.g. test AUROC of a model).
* :func:`paired_ci`: the CI of a difference of two statistics on the same
  resamples (ensemble vs best single, full vs lungs removed): paired, so the
  shared case mix cancels.

A resample where the statistic is undefined (e.g. AUROC with one class) is
dropped and counted (``undefined``), never silently replaced.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
from scipy import stats


def validate(params: dict) -> dict:
    from .params import ParamError, check_int, section

    p = section(params, "stats")
    check_int("stats.resamples", p.get("resamples"), minimum=100)
    check_int("stats.seed", p.get("seed"), minimum=0)
    c = p.get("confidence")
    if isinstance(c, bool) or not isinstance(c, float) or not 0.5 < c < 1:
        raise ParamError("stats.confidence", f"expected a level in (0.5, 1), e.g. 0.95, got {c!r}")
    return p


def micro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Micro F1 of (N, L) 0/1 arrays: 2 TP / (positives + predicted); 0 when both are empty."""
    return weighted_micro_f1(y, pred, np.ones(len(y)))


def _members(groups) -> tuple[list[np.ndarray], int]:
    groups = np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds), int(inverse.max() + 1) if len(inverse) else 0


def group_ci(statistic: Callable[[np.ndarray], float | None], groups, n_boot: int = 1000, seed: int = 0,
             confidence: float = 0.95) -> dict:
    """``statistic(idx)`` on all items and a percentile CI over ``n_boot`` resamples of whole groups.

    ``statistic`` takes an index array into the items (with repeats) and returns a
    float, or None / NaN where it is undefined on that resample.
    """
    return _ci(statistic, groups, n_boot, seed, confidence)


def paired_ci(stat_a: Callable[[np.ndarray], float | None], stat_b: Callable[[np.ndarray], float | None], groups,
              n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """CI of ``stat_a - stat_b`` with both computed on the same group resamples."""
    def diff(idx):
        a, b = stat_a(idx), stat_b(idx)
        return None if a is None or b is None else a - b
    return _ci(diff, groups, n_boot, seed, confidence)


def _ci(statistic, groups, n_boot: int, seed: int, confidence: float) -> dict:
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: at least 100 resamples are needed for a 95 % percentile interval")
    members, n_groups = _members(groups)
    if n_groups < 2:
        raise ValueError(f"{n_groups} group(s): a bootstrap over groups needs at least 2")

    def on_groups(g):
        idx = np.concatenate([members[int(i)] for i in g])
        v = statistic(idx)
        return np.nan if v is None or not np.isfinite(v) else float(v)

    estimate = statistic(np.arange(sum(len(m) for m in members)))
    res = stats.bootstrap((np.arange(n_groups),), on_groups, n_resamples=n_boot, vectorized=False,
                          confidence_level=confidence, method="percentile", random_state=seed)
    dist = np.asarray(res.bootstrap_distribution, dtype=float)
    ok = dist[np.isfinite(dist)]
    if len(ok) < n_boot // 2:
        low = high = float("nan")
    else:       # percentile interval over the defined resamples (scipy's own is NaN when any is undefined)
        low, high = (float(v) for v in np.quantile(ok, [(1 - confidence) / 2, (1 + confidence) / 2]))
    return {"estimate": None if estimate is None else float(estimate), "low": low, "high": high,
            "confidence": confidence, "n_boot": n_boot, "undefined": int(np.sum(~np.isfinite(dist))),
            "groups": n_groups, "method": "percentile, resampling patient groups"}


# --- several folds, each with its own test set --------------------------------------------------

def _weighted_counts(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """(true positives, predicted, positives) of (N, L) 0/1 arrays, each image counted ``w`` times."""
    y, pred = np.asarray(y, bool), np.asarray(pred, bool)
    w = np.asarray(w, float)
    return float((w * (y & pred).sum(1)).sum()), float((w * pred.sum(1)).sum()), float((w * y.sum(1)).sum())


def weighted_micro_f1(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> float:
    """Micro F1 of (N, L) 0/1 arrays with an image weight ``w`` (a bootstrap multiplicity)."""
    tp, npred, npos = _weighted_counts(y, pred, w)
    return 2 * tp / (npred + npos) if npred + npos else 0.0


def weighted_micro_precision_recall(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Micro precision and recall with image weights (0 where nothing is predicted / positive)."""
    tp, npred, npos = _weighted_counts(y, pred, w)
    return tp / npred if npred else 0.0, tp / npos if npos else 0.0


def weighted_micro_auroc(y: np.ndarray, prob: np.ndarray, w: np.ndarray) -> float | None:
    """Micro AUROC (every (image, label) pair pooled) with image weights; None with one class."""
    from sklearn.metrics import roc_auc_score

    keep = np.asarray(w) > 0
    y, prob, w = np.asarray(y)[keep], np.asarray(prob, float)[keep], np.asarray(w, float)[keep]
    flat = y.ravel().astype(bool)
    if flat.all() or not flat.any():
        return None
    return float(roc_auc_score(flat, prob.ravel(), sample_weight=np.repeat(w, y.shape[1])))


def fold_mean_ci(folds: list[list[tuple]], n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """CI of a mean over folds, each fold with its own test set, resampling patient groups within each fold.

    ``folds``: per fold, one arm ``(groups, statistic)`` or two arms (the CI of
    arm 0 minus arm 1). ``statistic(weights)`` takes a weight per item of its arm
    (how often its group was drawn) and returns a float, or None where undefined.
    Each resample draws the union of a fold's arms' groups with replacement:
    arms on the same test set are paired exactly; arms on partly or wholly
    different images (leaked images removed, another cohort) share what they
    share. Folds with different test sets are drawn independently; folds that
    share one test set (the rebuilt cohort) share one draw per resample, since
    their test sampling is one and the same. The point estimate uses every item
    once. Resamples where a statistic is undefined are dropped and counted.
    """
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: at least 100 resamples are needed for a 95 % percentile interval")
    prepared = []
    for arms in folds:
        if len(arms) not in (1, 2):
            raise ValueError(f"a fold has {len(arms)} arms: expected 1 (a value) or 2 (a difference)")
        union, inverse = np.unique(np.concatenate([np.asarray(g).astype(str) for g, _ in arms]), return_inverse=True)
        if len(union) < 2:
            raise ValueError(f"{len(union)} group(s) in a fold: a bootstrap over groups needs at least 2")
        cuts = np.cumsum([0] + [len(g) for g, _ in arms])
        key = hashlib.sha1("\0".join(union).encode()).hexdigest()
        prepared.append((key, len(union), [(inverse[cuts[i]:cuts[i + 1]], stat) for i, (_, stat) in enumerate(arms)]))

    def value(weights_of) -> float:
        per_fold, draws = [], {}
        for key, n, arms in prepared:
            if key not in draws:                          # one draw per distinct test set
                draws[key] = weights_of(n)
            counts = draws[key]
            vals = [stat(counts[idx].astype(float)) for idx, stat in arms]
            if any(v is None or not np.isfinite(v) for v in vals):
                return float("nan")
            per_fold.append(vals[0] - vals[1] if len(vals) == 2 else vals[0])
        return float(np.mean(per_fold))

    estimate = value(lambda n: np.ones(n, dtype=np.int64))
    rng = np.random.default_rng(seed)
    dist = np.array([value(lambda n: np.bincount(rng.integers(0, n, n), minlength=n)) for _ in range(n_boot)])
    ok = dist[np.isfinite(dist)]
    if len(ok) < n_boot // 2:
        low = high = float("nan")
    else:
        low, high = (float(v) for v in np.quantile(ok, [(1 - confidence) / 2, (1 + confidence) / 2]))
    return {"estimate": estimate, "low": low, "high": high, "confidence": confidence, "n_boot": n_boot,
            "undefined": int(np.sum(~np.isfinite(dist))), "folds": len(folds),
            "method": "percentile, resampling patient groups within each fold's test set; mean over folds"}


def corrected_resampled_t(differences, test_train_ratio: float, confidence: float = 0.95) -> dict:
    """Nadeau & Bengio (2003) corrected resampled t interval for a mean difference over J folds.

    The folds' training sets overlap, so their differences are correlated and
    the plain t interval is too narrow; the variance is inflated by
    ``(1 / J + n_test / n_train)``. Accounts for training variation as well as
    test sampling, but with J = 5 it has 4 degrees of freedom: wide.
    """
    d = np.asarray([v for v in differences if v is not None and np.isfinite(v)], dtype=float)
    j = len(d)
    if j < 2:
        return {"estimate": float(d.mean()) if j else None, "low": None, "high": None, "folds": j,
                "method": "corrected resampled t (Nadeau & Bengio 2003): needs at least 2 folds"}
    se = float(np.sqrt((1 / j + test_train_ratio) * d.var(ddof=1)))
    half = float(stats.t.ppf((1 + confidence) / 2, j - 1)) * se
    return {"estimate": float(d.mean()), "low": float(d.mean() - half), "high": float(d.mean() + half),
            "confidence": confidence, "folds": j, "test_train_ratio": float(test_train_ratio),
            "method": "corrected resampled t (Nadeau & Bengio 2003)"}
