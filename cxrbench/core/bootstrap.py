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
    from cxrbench.core.params import ParamError, check_int, section

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
    for arms in folds:
        if len(arms) not in (1, 2):
            raise ValueError(f"a fold has {len(arms)} arms: expected 1 (a value) or 2 (a difference)")
    n_arms = {len(arms) for arms in folds}
    if len(n_arms) > 1:
        raise ValueError("every fold needs the same number of arms (1: a value, 2: a difference)")
    reduce = (lambda v: v[:, 0].mean()) if n_arms == {1} else (lambda v: (v[:, 0] - v[:, 1]).mean())
    out = fold_bootstrap(folds, {"value": reduce}, n_boot, seed, confidence)["value"]
    out["folds"] = len(folds)
    return out


def fold_bootstrap(folds: list[list[tuple]], reducers: dict[str, Callable[[np.ndarray], float]],
                   n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, dict]:
    """Several statistics of the same per-fold arms on the same group resamples (see :func:`fold_mean_ci`).

    ``folds``: per fold, the same number of arms ``(groups, statistic)``.
    ``reducers``: name -> ``f(values)``, ``values`` a (folds, arms) array of the
    arms' statistics (NaN where one is undefined), returning a float (NaN:
    undefined on this resample). Every reducer sees the same draws, so e.g. a
    control's difference and its ratio to the full image are paired. Returns
    name -> {estimate, low, high, confidence, n_boot, undefined, method}.
    """
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: at least 100 resamples are needed for a 95 % percentile interval")
    if not folds or len({len(arms) for arms in folds}) != 1 or not folds[0]:
        raise ValueError("fold_bootstrap needs at least one fold and the same number (>= 1) of arms in each")
    prepared = []
    for arms in folds:
        union, inverse = np.unique(np.concatenate([np.asarray(g).astype(str) for g, _ in arms]), return_inverse=True)
        if len(union) < 2:
            raise ValueError(f"{len(union)} group(s) in a fold: a bootstrap over groups needs at least 2")
        cuts = np.cumsum([0] + [len(g) for g, _ in arms])
        key = hashlib.sha1("\0".join(union).encode()).hexdigest()
        prepared.append((key, len(union), [(inverse[cuts[i]:cuts[i + 1]], stat) for i, (_, stat) in enumerate(arms)]))

    def values(weights_of) -> np.ndarray:
        draws, table = {}, np.empty((len(prepared), len(prepared[0][2])))
        for f, (key, n, arms) in enumerate(prepared):
            if key not in draws:                          # one draw per distinct test set
                draws[key] = weights_of(n)
            counts = draws[key]
            for a, (idx, stat) in enumerate(arms):
                v = stat(counts[idx].astype(float))
                table[f, a] = np.nan if v is None or not np.isfinite(v) else v
        return table

    def reduce_all(table: np.ndarray) -> list[float]:
        out = []
        for fn in reducers.values():
            v = fn(table)
            out.append(float("nan") if v is None or not np.isfinite(v) else float(v))
        return out

    estimates = reduce_all(values(lambda n: np.ones(n, dtype=np.int64)))
    rng = np.random.default_rng(seed)
    dist = np.array([reduce_all(values(lambda n: np.bincount(rng.integers(0, n, n), minlength=n)))
                     for _ in range(n_boot)]).reshape(n_boot, len(reducers))
    result = {}
    for j, name in enumerate(reducers):
        ok = dist[:, j][np.isfinite(dist[:, j])]
        if len(ok) < n_boot // 2:
            low = high = float("nan")
        else:
            low, high = (float(v) for v in np.quantile(ok, [(1 - confidence) / 2, (1 + confidence) / 2]))
        est = estimates[j]
        result[name] = {"estimate": est if np.isfinite(est) else None, "low": low, "high": high,
                        "confidence": confidence, "n_boot": n_boot, "undefined": int(np.sum(~np.isfinite(dist[:, j]))),
                        "method": "percentile, resampling patient groups within each fold's test set; "
                                  "mean over folds"}
    return result


def _tied_counts(y, score, descending: bool) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``counts(weights)``: the weighted positives and negatives at each distinct score, in score order
    (ascending or descending). The scores are sorted once, so each call is O(n) (bincount)."""
    y = np.asarray(y).astype(bool).ravel()
    score = np.asarray(score, dtype=float).ravel()
    if len(y) != len(score):
        raise ValueError(f"{len(y)} truths but {len(score)} scores")
    key = -score if descending else score
    order = np.argsort(key, kind="stable")
    _, tie_group = np.unique(key[order], return_inverse=True)
    n_ties = int(tie_group.max()) + 1 if len(tie_group) else 0
    pos_sorted = y[order]

    def counts(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = np.asarray(w, dtype=float)[order]
        return (np.bincount(tie_group, weights=w * pos_sorted, minlength=n_ties),
                np.bincount(tie_group, weights=w * ~pos_sorted, minlength=n_ties))

    return counts


def auroc_statistic(y, score) -> Callable[[np.ndarray], float | None]:
    """``statistic(weights)``: the weighted AUROC of one binary label, for the bootstrap (None with one class).

    Equals ``sklearn.metrics.roc_auc_score(y, score, sample_weight=w)`` (ties count
    one half); the scores are sorted once, so each resample costs O(n) instead of
    a sort: 11 us vs 1.5 ms for scikit-learn per call on 300 images (2-core AMD
    EPYC; ``python benchmarks/bench_bootstrap.py``), tested against it in
    tests/test_bootstrap.py.
    """
    weighted_counts = _tied_counts(y, score, descending=False)

    def statistic(w: np.ndarray) -> float | None:
        wp, wn = weighted_counts(w)
        total_p, total_n = wp.sum(), wn.sum()
        if total_p <= 0 or total_n <= 0:
            return None
        below = np.cumsum(wn) - wn                     # negatives with a strictly lower score
        return float((wp * (below + 0.5 * wn)).sum() / (total_p * total_n))

    return statistic


def ap_statistic(y, score) -> Callable[[np.ndarray], float | None]:
    """``statistic(weights)``: the weighted average precision of one label (None without a positive).

    Equals ``sklearn.metrics.average_precision_score(y, score, sample_weight=w)`` (a step at every distinct
    score), O(n) per resample like :func:`auroc_statistic` (tested against scikit-learn).
    """
    weighted_counts = _tied_counts(y, score, descending=True)

    def statistic(w: np.ndarray) -> float | None:
        wp, wn = weighted_counts(w)
        tp, called = np.cumsum(wp), np.cumsum(wp + wn)
        if tp[-1] <= 0:
            return None
        precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
        return float((wp * precision).sum() / tp[-1])

    return statistic


def format_ci(v: dict | None, key: str = "estimate", signed: bool = False) -> str:
    """``estimate [low, high]`` of a CI dict (``key`` names the point estimate); ``–`` when there is none and
    the estimate alone when the interval is undefined (too few resamples where the statistic exists)."""
    if not isinstance(v, dict) or v.get(key) is None:
        return "–"
    f = "{:+.3f}" if signed else "{:.3f}"
    low, high = v.get("low"), v.get("high")
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return f.format(v[key])
    return f"{f.format(v[key])} [{f.format(low)}, {f.format(high)}]"


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
