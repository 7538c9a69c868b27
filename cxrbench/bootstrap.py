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
    y, pred = np.asarray(y, bool), np.asarray(pred, bool)
    denom = int(y.sum() + pred.sum())
    return 2.0 * int((y & pred).sum()) / denom if denom else 0.0


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
