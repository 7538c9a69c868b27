"""Inference on top of the patient bootstrap: multiplicity, training seeds as a source of variance.

* :func:`resamples_for`: enough resamples for a bootstrap p to survive the adjustment of its family;
* :func:`holm` / :func:`adjust`: Holm (family-wise) or Benjamini-Hochberg (false discovery rate,
  :func:`scipy.stats.false_discovery_control`) adjusted p-values over one table's comparisons
  (``stats.multiplicity``), written into each entry as ``p_adjusted`` with the family's size.
* :func:`two_level_ci`: a mean over training seeds and patients with an interval that resamples both
  (seeds, then patients within the seeds' shared test set), so training variance is inside it.
* :func:`variance_note`: the sentence a table states about which variance its intervals include.
"""

from __future__ import annotations

import numpy as np

MULTIPLICITY = ("holm", "bh")


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979): the k-th smallest times (m - k + 1), made monotone,
    capped at 1. A comparison is significant at family-wise level alpha when its adjusted p < alpha."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def adjust(entries: list[dict], method: str = "holm", alpha: float = 0.05) -> int:
    """Write ``p_adjusted``, ``significant`` and ``family`` (size, method) into each entry with a ``p``
    (entries without one, e.g. ``no_ci``, are not part of the family); returns the family size."""
    if method not in MULTIPLICITY:
        raise ValueError(f"multiplicity {method!r}: expected one of {MULTIPLICITY}")
    family = [e for e in entries if e.get("p") is not None]
    if not family:
        return 0
    p = np.array([e["p"] for e in family], dtype=np.float64)
    if method == "holm":
        adj = holm(p)
    else:
        from scipy.stats import false_discovery_control
        adj = false_discovery_control(p, method="bh")
    for e, a in zip(family, adj):
        e["p_adjusted"] = round(float(a), 4)
        e["significant"] = bool(a < alpha)
        e["family"] = {"size": len(family), "method": method, "alpha": alpha}
    return len(family)


def resamples_for(family: int, stats: dict) -> int:
    """Bootstrap resamples for p values that are adjusted across ``family`` comparisons. A bootstrap p is at
    least 1 / (B + 1), and Holm's first step needs p < alpha / m: with B = ``stats.resamples`` (1000) no
    comparison of a 65-cell table could ever be significant. B >= 10 m / alpha leaves ten resamples beyond
    that threshold; never fewer than ``stats.resamples``."""
    import math
    alpha = 1 - float(stats["confidence"])
    return max(int(stats["resamples"]), math.ceil(10 * max(int(family), 1) / alpha))


def two_level_ci(values, seeds, groups, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
                 unit: str = "training seeds") -> dict:
    """The mean of ``values`` over training seeds and patients with a two-level bootstrap interval.

    ``values``: one number per (training seed, item), ``seeds``: its training seed, ``groups``: its
    patient. Each resample draws the seeds with replacement, then the patients with replacement (one
    draw shared by every seed: the seeds' models are scored on the same test patients), and takes the
    mean over the drawn seeds of each seed's patient-weighted mean. Its spread includes both the
    variance between training runs and the test sampling; with one seed it is the patient bootstrap
    alone, and says so (``variance``). Percentile interval, expanded as in
    :func:`cxrbench.core.bootstrap.interval` by the smaller of the two sample sizes (seeds)
    when there are at least 3 seeds. ``p``: two-sided bootstrap p against 0 (for Holm / BH). ``unit``: what
    the upper level is, in words (``training seeds``, or ``models`` when the runs also differ in their data,
    as a pipeline's fold models do).
    """
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    seed_labels, s_idx = np.unique(np.asarray(seeds).astype(str), return_inverse=True)
    group_labels, g_idx = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_s, n_g = len(seed_labels), len(group_labels)
    if not (len(values) == len(s_idx) == len(g_idx)):
        raise ValueError(f"{len(values)} values, {len(s_idx)} seeds and {len(g_idx)} patients: one of each per item")
    if n_g < 2:
        raise ValueError(f"{n_g} patient(s): a bootstrap over patients needs at least 2")
    sums = np.zeros((n_s, n_g))
    counts = np.zeros((n_s, n_g))
    np.add.at(sums, (s_idx, g_idx), values)
    np.add.at(counts, (s_idx, g_idx), 1)
    present = counts > 0
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=present)

    def stat(seed_w: np.ndarray, patient_w: np.ndarray) -> float:
        w = patient_w[None, :] * present                                 # (seeds, patients)
        per_seed = (w * means).sum(1) / np.where(w.sum(1) > 0, w.sum(1), np.nan)
        ok = np.isfinite(per_seed) & (seed_w > 0)
        return float((seed_w[ok] * per_seed[ok]).sum() / seed_w[ok].sum()) if ok.any() else float("nan")

    estimate = stat(np.ones(n_s), np.ones(n_g))
    rng = np.random.default_rng(seed)
    dist = np.array([stat(np.bincount(rng.integers(0, n_s, n_s), minlength=n_s).astype(float),
                          np.bincount(rng.integers(0, n_g, n_g), minlength=n_g).astype(float))
                     for _ in range(n_boot)])
    ok = dist[np.isfinite(dist)]
    if not len(ok):
        raise ValueError("two-level bootstrap: no resample gave a finite mean (are the values finite?)")
    alpha = (1 - confidence) / 2
    if n_s >= 3:
        z = np.sqrt(n_s / (n_s - 1)) * stats.t.ppf(1 - alpha, n_s - 1)
        q = stats.norm.cdf([-z, z])
    else:
        q = np.array([alpha, 1 - alpha])
    low, high = (float(v) for v in np.quantile(ok, q))
    # two-sided p against 0, the inverse of the interval: the level at which the (expanded) interval's bound
    # reaches 0; 0 when no resampled mean reaches 0 (below the resolution of n_boot resamples)
    tail = min(float((ok <= 0).mean()), float((ok >= 0).mean()))
    if tail == 0:
        p = 0.0
    elif n_s >= 3:
        p = float(2 * stats.t.sf(-stats.norm.ppf(tail) / np.sqrt(n_s / (n_s - 1)), n_s - 1))
    else:
        p = 2 * tail
    p = min(1.0, p)
    return {"estimate": estimate, "low": low, "high": high, "p": p, "status": "ok", "confidence": confidence,
            "n_boot": n_boot, "undefined": int(n_boot - len(ok)), "seeds": n_s, "groups": n_g,
            "variance": variance_note(n_s, unit),
            "method": f"two-level bootstrap: {unit}, then patients (one draw shared by the {unit})"}


def variance_note(seeds: int, unit: str = "training seeds") -> str:
    """Which variance an interval includes, for the table that shows it."""
    if seeds >= 2:
        return f"{unit} ({seeds}) and test patients"
    return "test patients only (one training seed: training variance is not in the interval)"
