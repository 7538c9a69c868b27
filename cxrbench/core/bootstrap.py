"""Confidence intervals over patient groups: a seeded (paired) bootstrap that resamples whole groups.

Images of one patient (or of one near-duplicate group) are not independent, so
an interval over images is too narrow; resampling groups with replacement keeps
each patient's images together. The resampled "data" are the group indices; the
statistic expands them to images (or takes per-item weights, :func:`fold_bootstrap`).
The interval (``stats.method``, :func:`interval`) is the one that a coverage
simulation showed to cover (benchmarks/bench_coverage.py, benchmarks/README.md):
a percentile interval over 9 patients covers about 90 % at a nominal 95 %.

* :func:`group_ci`: the CI of one statistic (e.g. test AUROC of a model).
* :func:`paired_ci`: the CI of a difference of two statistics on the same
  resamples (ensemble vs best single, full vs lungs removed): paired, so the
  shared case mix cancels.

A resample where the statistic is undefined (e.g. AUROC with one class) is
dropped and counted (``undefined``, ``valid_share``), never silently replaced;
below ``stats.min_valid_share`` of defined resamples there is no interval
(``status: no_ci`` with its ``reason``), never a number.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats


METHODS = ("percentile", "bca", "expanded_percentile", "expanded_bca")
DEFAULT_METHOD = "expanded_percentile"
DEFAULT_MIN_VALID = 0.9
DEFAULT_EQUIVALENCE = {"auroc": 0.05, "gain": 0.02}


def validate(params: dict) -> dict:
    from cxrbench.core.params import ParamError, check_choice, check_float, check_fraction, check_int, section

    p = section(params, "stats")
    check_int("stats.resamples", p.get("resamples"), minimum=100)
    check_int("stats.seed", p.get("seed"), minimum=0)
    c = p.get("confidence")
    if isinstance(c, bool) or not isinstance(c, float) or not 0.5 < c < 1:
        raise ParamError("stats.confidence", f"expected a level in (0.5, 1), e.g. 0.95, got {c!r}")
    check_choice("stats.method", p.get("method", DEFAULT_METHOD), METHODS)
    check_fraction("stats.min_valid_share", p.get("min_valid_share", DEFAULT_MIN_VALID), open_high=False)
    check_choice("stats.multiplicity", p.get("multiplicity", "holm"), ["holm", "bh"])
    eq = p.get("equivalence", DEFAULT_EQUIVALENCE)
    if not isinstance(eq, dict) or set(eq) != set(DEFAULT_EQUIVALENCE):
        raise ParamError("stats.equivalence", f"expected a mapping with the margins {sorted(DEFAULT_EQUIVALENCE)} "
                                              f"(e.g. {DEFAULT_EQUIVALENCE}), got {eq!r}")
    for k, v in eq.items():
        check_float(f"stats.equivalence.{k}", v, minimum=0, open_low=True, what="a margin around chance")
    return {"method": DEFAULT_METHOD, "min_valid_share": DEFAULT_MIN_VALID, "multiplicity": "holm",
            "equivalence": dict(DEFAULT_EQUIVALENCE), **p}


def options(stats_p: dict) -> dict:
    """The keyword arguments of :func:`group_ci` / :func:`paired_ci` / :func:`fold_bootstrap` that a validated
    ``stats`` section sets: ``n_boot``, ``seed``, ``confidence``, ``method``, ``min_valid_share``."""
    return {"n_boot": int(stats_p["resamples"]), "seed": int(stats_p["seed"]),
            "confidence": float(stats_p["confidence"]), "method": stats_p.get("method", DEFAULT_METHOD),
            "min_valid_share": float(stats_p.get("min_valid_share", DEFAULT_MIN_VALID))}


def method_name(method: str) -> str:
    """An interval ``method`` in words for a table's note (``expanded_percentile`` -> ``expanded percentile``,
    ``bca`` -> ``BCa``); also takes a CI's ``method`` field, which starts with the method's key."""
    key = str(method).split(",")[0].strip()
    return key.replace("_", " ").replace("bca", "BCa")


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
             confidence: float = 0.95, method: str = DEFAULT_METHOD,
             min_valid_share: float = DEFAULT_MIN_VALID, null: float | None = None,
             equivalence: tuple[float, float] | None = None) -> dict:
    """``statistic(idx)`` on all items and a CI over ``n_boot`` resamples of whole groups.

    ``statistic`` takes an index array into the items (with repeats) and returns a
    float, or None / NaN where it is undefined on that resample. ``method``: one of
    :data:`METHODS` (:func:`interval`). Fewer than ``min_valid_share`` of the
    resamples defined: ``status`` ``no_ci`` and no bounds. ``null``: also a two-sided ``p`` against it;
    ``equivalence`` ``(low, high)``: also a TOST (:func:`tests_of`), both inverting the same interval.
    """
    return _ci(statistic, groups, n_boot, seed, confidence, method, min_valid_share, null, equivalence)


def paired_ci(stat_a: Callable[[np.ndarray], float | None], stat_b: Callable[[np.ndarray], float | None], groups,
              n_boot: int = 1000, seed: int = 0, confidence: float = 0.95, method: str = DEFAULT_METHOD,
              min_valid_share: float = DEFAULT_MIN_VALID, null: float | None = None) -> dict:
    """CI of ``stat_a - stat_b`` with both computed on the same group resamples (``null``: also its p)."""
    def diff(idx):
        a, b = stat_a(idx), stat_b(idx)
        return None if a is None or b is None else a - b
    return _ci(diff, groups, n_boot, seed, confidence, method, min_valid_share, null)


def _value(v) -> float:
    return np.nan if v is None or not np.isfinite(v) else float(v)


def group_distribution(statistic: Callable[[np.ndarray], float | None], groups, n_boot: int, seed: int,
                       jackknife: bool = True) -> tuple[float, np.ndarray, np.ndarray | None, int]:
    """(estimate, ``n_boot`` resampled values (NaN: undefined), leave-one-group-out values or None, groups)."""
    members, n_groups = _members(groups)
    if n_groups < 2:
        raise ValueError(f"{n_groups} group(s): a bootstrap over groups needs at least 2")
    estimate = _value(statistic(np.arange(sum(len(m) for m in members))))
    draws = np.random.default_rng(seed).integers(0, n_groups, (n_boot, n_groups))
    dist = np.array([_value(statistic(np.concatenate([members[i] for i in row]))) for row in draws.tolist()])
    jack = None
    if jackknife:
        jack = np.array([_value(statistic(np.concatenate(members[:j] + members[j + 1:]))) for j in range(n_groups)])
    return estimate, dist, jack, n_groups


def interval(estimate: float, dist: np.ndarray, jack: np.ndarray | None, units: int, confidence: float = 0.95,
             method: str = DEFAULT_METHOD, min_valid_share: float = DEFAULT_MIN_VALID) -> dict:
    """The CI of a bootstrap distribution ``dist`` (NaN: an undefined resample) around ``estimate``.

    * ``percentile``: the quantiles of the defined resamples;
    * ``bca``: bias-corrected and accelerated (Efron 1987): the bias from the share of resamples below the
      estimate, the acceleration from ``jack`` (leave-one-unit-out values);
    * ``expanded_*``: the same with the normal quantile widened to ``sqrt(G / (G - 1)) t_{G-1}`` for ``G =
      units`` resampled units (Hesterberg 2015): a bootstrap's spread is the plug-in one, narrow by
      ``(G - 1) / G``, and with few patients the tails are t's, not normal.

    ``benchmarks/bench_coverage.py`` measures their coverage (benchmarks/README.md). Returns ``low``,
    ``high`` (None when there is no CI), ``status`` (``ok`` / ``no_ci``), ``reason``, ``undefined``,
    ``valid_share``, ``method``.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {METHODS}")
    dist = np.asarray(dist, dtype=float)
    ok = np.sort(dist[np.isfinite(dist)])
    share = len(ok) / len(dist) if len(dist) else 0.0
    out = {"low": None, "high": None, "status": "ok", "undefined": int(len(dist) - len(ok)),
           "valid_share": round(share, 4), "min_valid_share": min_valid_share, "method": method}
    if not np.isfinite(estimate):
        return {**out, "status": "no_ci", "reason": "the statistic is undefined on the full sample"}
    if share < min_valid_share or len(ok) < 2:
        return {**out, "status": "no_ci", "reason": f"{len(ok)} of {len(dist)} resamples defined "
                                                    f"({share:.1%} < stats.min_valid_share {min_valid_share:.0%})"}
    alpha = (1 - confidence) / 2
    if method.startswith("expanded"):
        if units < 3:
            return {**out, "status": "no_ci", "reason": f"{units} units: an expanded interval needs at least 3"}
        z = np.sqrt(units / (units - 1)) * stats.t.ppf(1 - alpha, units - 1) * np.array([-1.0, 1.0])
    else:
        z = stats.norm.ppf(1 - alpha) * np.array([-1.0, 1.0])
    if method.endswith("bca"):
        below = (np.sum(ok < estimate) + 0.5 * np.sum(ok == estimate)) / len(ok)
        below = min(max(below, 0.5 / len(ok)), 1 - 0.5 / len(ok))
        z0 = stats.norm.ppf(below)
        j = np.asarray(jack, dtype=float) if jack is not None else np.zeros(0)
        j = j[np.isfinite(j)]
        d = j.mean() - j if len(j) > 1 else np.zeros(1)
        denom = 6.0 * float((d ** 2).sum()) ** 1.5
        accel = float((d ** 3).sum()) / denom if denom > 0 else 0.0
        zz = z0 + z
        q = stats.norm.cdf(z0 + zz / (1 - accel * zz))
    else:
        q = stats.norm.cdf(z)
    low, high = (float(v) for v in np.quantile(ok, np.clip(q, 0, 1)))
    return {**out, "low": low, "high": high}


def _cdf(ok: np.ndarray, x: float) -> float:
    n = len(ok)
    q = (np.searchsorted(ok, x, "left") + np.searchsorted(ok, x, "right")) / (2 * n)   # ties count one half
    return float(min(max(q, 0.5 / n), 1 - 0.5 / n))


def one_sided_p(estimate: float, dist: np.ndarray, jack: np.ndarray | None, units: int, bound: float,
                above: bool, method: str = DEFAULT_METHOD) -> float | None:
    """p of H0 "theta <= bound" (``above``) or "theta >= bound": the one-sided level at which the
    :func:`interval` of ``method`` just reaches ``bound`` (its exact inversion, so p < alpha exactly when
    the one-sided 1 - alpha bound excludes ``bound``). None when the distribution is undefined."""
    dist = np.asarray(dist, dtype=float)
    ok = np.sort(dist[np.isfinite(dist)])
    if len(ok) < 2 or not np.isfinite(estimate):
        return None
    u = stats.norm.ppf(_cdf(ok, bound))
    if method.endswith("bca"):
        z0 = stats.norm.ppf(_cdf(ok, estimate))
        j = np.asarray(jack, dtype=float) if jack is not None else np.zeros(0)
        j = j[np.isfinite(j)]
        d = j.mean() - j if len(j) > 1 else np.zeros(1)
        denom = 6.0 * float((d ** 2).sum()) ** 1.5
        accel = float((d ** 3).sum()) / denom if denom > 0 else 0.0
        w = (u - z0) / (1 + accel * (u - z0))
        z = w - z0
    else:
        z = u
    if method.startswith("expanded"):
        if units < 3:
            return None
        lower_tail = float(stats.t.cdf(z / np.sqrt(units / (units - 1)), units - 1))
    else:
        lower_tail = float(stats.norm.cdf(z))
    return lower_tail if above else 1.0 - lower_tail


def tests_of(estimate: float, dist: np.ndarray, jack: np.ndarray | None, units: int, method: str,
             null: float | None = None, equivalence: tuple[float, float] | None = None,
             alpha: float = 0.05) -> dict:
    """``p`` (two-sided, H0: theta = ``null``) and ``equivalence`` (TOST: H0 theta outside ``(low, high)``;
    ``equivalent`` when both one-sided p are below ``alpha``) from one bootstrap distribution."""
    out = {}
    if null is not None:
        lo = one_sided_p(estimate, dist, jack, units, null, True, method)
        hi = one_sided_p(estimate, dist, jack, units, null, False, method)
        out["p"] = None if lo is None or hi is None else min(1.0, 2 * min(lo, hi))
        out["null"] = null
    if equivalence is not None:
        low, high = equivalence
        p_low = one_sided_p(estimate, dist, jack, units, low, True, method)
        p_high = one_sided_p(estimate, dist, jack, units, high, False, method)
        p = None if p_low is None or p_high is None else max(p_low, p_high)
        out["equivalence"] = {"bounds": [low, high], "p": p, "alpha": alpha,
                              "equivalent": p is not None and p < alpha}
    return out


def _ci(statistic, groups, n_boot: int, seed: int, confidence: float, method: str = DEFAULT_METHOD,
        min_valid_share: float = DEFAULT_MIN_VALID, null: float | None = None,
        equivalence: tuple[float, float] | None = None) -> dict:
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: at least 100 resamples are needed for a 95 % interval")
    estimate, dist, jack, n_groups = group_distribution(statistic, groups, n_boot, seed,
                                                        jackknife=method.endswith("bca"))
    ci = interval(estimate, dist, jack, n_groups, confidence, method, min_valid_share)
    out = {"estimate": float(estimate) if np.isfinite(estimate) else None, **ci, "confidence": confidence,
           "n_boot": n_boot, "groups": n_groups, "method": f"{method}, resampling patient groups"}
    if ci["status"] == "ok":
        out.update(tests_of(estimate, dist, jack, n_groups, method, null, equivalence, 1 - confidence))
    return out


def patient_means(values, groups) -> tuple[np.ndarray, np.ndarray]:
    """(labels, means): each patient group's mean of ``values`` (one number per patient)."""
    values = np.asarray(values, dtype=np.float64)
    labels, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return labels, np.bincount(inverse, weights=values) / np.bincount(inverse)


def patient_mean_ci(values, groups, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
                    min_valid_share: float = DEFAULT_MIN_VALID, null: float | None = None,
                    equivalence: tuple[float, float] | None = None, **_ignored) -> dict:
    """The patient-weighted mean of per-item ``values`` (each patient's mean, then their mean: a patient
    with 12 images counts once) with a cluster bootstrap-t interval: ``mean +- q se``, ``se`` the standard
    error over the patients' means and ``q`` the ``confidence`` quantile of ``|t*|`` over resamples of
    patients (symmetric studentized bootstrap, Hall 1988). Of the intervals that
    benchmarks/bench_coverage.py simulates for a mean over 9 to 100 skewed patients, it is the one that
    covers at >= 93 % (benchmarks/README.md). A resample with one distinct patient has no ``se``: undefined,
    counted. ``null``: also the bootstrap-t ``p`` against it; ``equivalence`` ``(low, high)``: a TOST."""
    _, m = patient_means(values, groups)
    g = len(m)
    out = {"estimate": float(m.mean()) if g else None, "low": None, "high": None, "status": "ok",
           "confidence": confidence, "n_boot": n_boot, "groups": g, "undefined": 0,
           "method": "cluster bootstrap-t (symmetric), patient-weighted mean"}
    if g < 3:
        return {**out, "status": "no_ci", "reason": f"{g} patient(s): a bootstrap-t interval needs at least 3"}
    se = float(m.std(ddof=1) / np.sqrt(g))
    if not se > 0:
        return {**out, "status": "no_ci", "reason": "every patient has the same mean: no spread to resample"}
    draws = m[np.random.default_rng(seed).integers(0, g, (n_boot, g))]
    se_b = draws.std(axis=1, ddof=1) / np.sqrt(g)
    ok = se_b > 0
    t = np.abs(draws.mean(axis=1)[ok] - m.mean()) / se_b[ok]
    share = len(t) / n_boot
    out.update(undefined=int(n_boot - len(t)), valid_share=round(share, 4), min_valid_share=min_valid_share)
    if share < min_valid_share:
        return {**out, "status": "no_ci", "reason": f"{len(t)} of {n_boot} resamples defined "
                                                    f"({share:.1%} < stats.min_valid_share {min_valid_share:.0%})"}
    q = float(np.quantile(t, confidence))
    out.update(low=float(m.mean() - q * se), high=float(m.mean() + q * se), se=se)

    def upper_tail(x: float) -> float:              # P(T* >= x) of the symmetrised |t*|
        share_beyond = (np.sum(t >= abs(x)) + 1) / (len(t) + 1)
        return share_beyond / 2 if x >= 0 else 1 - share_beyond / 2

    if null is not None:
        out.update(null=null, p=min(1.0, 2 * upper_tail(abs(m.mean() - null) / se)))
    if equivalence is not None:
        low, high = equivalence
        p = max(upper_tail((m.mean() - low) / se), upper_tail((high - m.mean()) / se))
        out["equivalence"] = {"bounds": [low, high], "p": float(p), "alpha": 1 - confidence,
                              "equivalent": p < 1 - confidence}
    return out


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
    """Micro AUROC (every (image, label) pair pooled) with image weights; None with one class.

    Equals ``sklearn.metrics.roc_auc_score(flat y, flat prob, sample_weight=...)`` through
    :func:`auroc_statistic` (a Mann-Whitney count, ties one half): 4.4 ms a call in scikit-learn (its input
    checks), which the Table 2 fold bootstrap calls 12,000 times in the ``ci`` profile."""
    keep = np.asarray(w) > 0
    y, prob, w = np.asarray(y)[keep], np.asarray(prob, float)[keep], np.asarray(w, float)[keep]
    flat = y.ravel().astype(bool)
    if flat.all() or not flat.any():
        return None
    return auroc_statistic(flat, prob.ravel())(np.repeat(w, y.shape[1]))


def fold_mean_ci(folds: list[list[tuple]], n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
                 method: str = DEFAULT_METHOD, min_valid_share: float = DEFAULT_MIN_VALID,
                 models: bool = False) -> dict:
    """CI of a mean over folds, each fold with its own test set, resampling patient groups (see
    :func:`fold_bootstrap`: one draw of the patients per resample, shared by every fold).

    ``folds``: per fold, one arm ``(groups, statistic)`` or two arms (the CI of
    arm 0 minus arm 1). ``statistic(weights)`` takes a weight per item of its arm
    (how often its group was drawn) and returns a float, or None where undefined.
    Arms on the same images are paired exactly; arms on partly different images
    (leaked images removed, another cohort) share the patients they share. The
    point estimate uses every item once. ``models``: also resample the folds (see :func:`fold_bootstrap`).
    """
    for arms in folds:
        if len(arms) not in (1, 2):
            raise ValueError(f"a fold has {len(arms)} arms: expected 1 (a value) or 2 (a difference)")
    n_arms = {len(arms) for arms in folds}
    if len(n_arms) > 1:
        raise ValueError("every fold needs the same number of arms (1: a value, 2: a difference)")
    reduce = (lambda v: v[:, 0].mean()) if n_arms == {1} else (lambda v: (v[:, 0] - v[:, 1]).mean())
    out = fold_bootstrap(folds, {"value": reduce}, n_boot, seed, confidence, method, min_valid_share,
                         models=models)["value"]
    out["folds"] = len(folds)
    return out


def fold_bootstrap(folds: list[list[tuple]], reducers: dict[str, Callable[[np.ndarray], float]],
                   n_boot: int = 1000, seed: int = 0, confidence: float = 0.95, method: str = DEFAULT_METHOD,
                   min_valid_share: float = DEFAULT_MIN_VALID, tests: dict | None = None,
                   models: bool = False) -> dict[str, dict]:
    """Several statistics of per-fold arms on the same patient resamples (see :func:`fold_mean_ci`).

    ``folds``: per fold, the same number of arms ``(groups, statistic)``.
    ``reducers``: name -> ``f(values)``, ``values`` a (folds, arms) array of the
    arms' statistics (NaN where one is undefined), returning a float (NaN:
    undefined on this resample). Every reducer sees the same draws, so e.g. a
    control's difference and its ratio to the full image are paired.

    Each resample draws ONE weight per patient group, over the union of every
    fold's groups, and applies it to every fold: the folds' test sets share
    patients (the authors' five test sets overlap by a third or more), so a
    patient drawn twice counts twice in every fold it is in. Resampling each
    fold on its own would treat shared patients as independent and make the
    fold mean's interval too narrow. ``tests``: name -> {null, equivalence} (see
    :func:`tests_of`) for the reducers that need a p or a TOST. Returns name -> {estimate, low, high,
    status, confidence, n_boot, undefined, valid_share, groups, method}.

    ``models``: each fold's arms come from another trained model (the fold's), and the statistic is meant
    over training runs too: each resample also draws the folds with replacement (a reducer sees the drawn
    folds' rows, a fold drawn twice twice), a two-level bootstrap (models, then patients) whose interval is
    expanded by the number of folds (the smaller sample; :func:`cxrbench.core.inference.two_level_ci`). Its
    coverage: benchmarks/README.md, "Intervals over models and patients". BCa is refused with it.
    """
    if models and method.endswith("bca"):
        raise ValueError(f"method {method!r} with models=True: the two-level bootstrap has no jackknife; use "
                         "percentile or expanded_percentile")
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: at least 100 resamples are needed for a 95 % interval")
    if not folds or len({len(arms) for arms in folds}) != 1 or not folds[0]:
        raise ValueError("fold_bootstrap needs at least one fold and the same number (>= 1) of arms in each")
    names = [np.asarray(g).astype(str) for arms in folds for g, _ in arms]
    union, inverse = np.unique(np.concatenate(names), return_inverse=True)
    if len(union) < 2:
        raise ValueError(f"{len(union)} group(s): a bootstrap over groups needs at least 2")
    cuts = np.cumsum([0] + [len(g) for g in names])
    prepared, k = [], 0
    for arms in folds:
        prepared.append([])
        for _, stat in arms:
            prepared[-1].append((inverse[cuts[k]:cuts[k + 1]], stat))
            k += 1

    def values(counts: np.ndarray) -> np.ndarray:
        table = np.empty((len(prepared), len(prepared[0])))
        for f, arms in enumerate(prepared):
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

    n = len(union)
    estimates = reduce_all(values(np.ones(n, dtype=np.int64)))
    rng = np.random.default_rng(seed)
    n_folds = len(prepared)

    def resample() -> list[float]:
        table = values(np.bincount(rng.integers(0, n, n), minlength=n))
        if models:
            table = table[rng.integers(0, n_folds, n_folds)]
        return reduce_all(table)
    dist = np.array([resample() for _ in range(n_boot)]).reshape(n_boot, len(reducers))
    jack = None
    if method.endswith("bca"):
        def left_out(j):
            w = np.ones(n, dtype=np.int64)
            w[j] = 0
            return reduce_all(values(w))
        jack = np.array([left_out(j) for j in range(n)]).reshape(n, len(reducers))
    result = {}
    for j, name in enumerate(reducers):
        est = estimates[j]
        units = min(n, n_folds) if models else n
        ci = interval(est, dist[:, j], None if jack is None else jack[:, j], units, confidence, method,
                      min_valid_share)
        how = (f"{method}, two-level: the {n_folds} fold models drawn with replacement, then one draw of the "
               "patient groups shared by every fold; mean over the drawn folds" if models else
               f"{method}, one draw of the patient groups per resample shared by every fold; mean over folds")
        result[name] = {"estimate": est if np.isfinite(est) else None, **ci, "confidence": confidence,
                        "n_boot": n_boot, "groups": n, "method": how,
                        "variance": (f"models ({n_folds}) and test patients" if models else
                                     "test patients only (the fold models held fixed)")}
        if ci["status"] == "ok" and tests and name in tests:
            result[name].update(tests_of(est, dist[:, j], None if jack is None else jack[:, j], units, method,
                                         alpha=1 - confidence, **tests[name]))
    return result


def _tied_counts(y, score, descending: bool) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``counts(weights)``: the weighted positives and negatives at each distinct score, in score order
    (ascending or descending). The scores are sorted once, so each call is O(n) (bincount)."""
    y = np.asarray(y).astype(bool).ravel()
    score = np.asarray(score, dtype=float).ravel()
    if len(y) != len(score):
        raise ValueError(f"{len(y)} truths but {len(score)} scores")
    if not np.isfinite(score).all():
        raise ValueError("a score (probability) is not finite (NaN or inf): check the predictions")
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
    if v.get("status") == "no_ci":
        return ("{:+.3f}" if signed else "{:.3f}").format(v[key]) + " [no CI]"
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
