"""The statistics of external validation: AUROC, AP, sensitivity and specificity with bootstrap CIs over patients,
reliability and expected calibration error, the case-mix reweighting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from cxrbench.core import bootstrap as B

INTERNAL, SAME, EXTERNAL, MIX = "internal", "internal_same_source", "external", "external_at_internal_mix"
AUROC_CHANCE = 0.5
METRICS = ("auroc", "ap", "sensitivity", "specificity")


def rate_statistic(y, decision, positive: bool) -> Callable[[np.ndarray], float | None]:
    """``statistic(weights)``: sensitivity (``positive``) or specificity of 0/1 decisions (None without such cases)."""
    want = np.asarray(y).astype(bool).ravel() == positive
    hit = want & (np.asarray(decision).astype(bool).ravel() == positive)

    def statistic(w: np.ndarray) -> float | None:
        w = np.asarray(w, dtype=float)
        total = float((w * want).sum())
        return float((w * hit).sum()) / total if total > 0 else None

    return statistic


def reliability(y, prob, bins: int, weights=None) -> dict:
    """Reliability diagram (equal-width bins of the probability) and expected calibration error, each image
    counted ``weights`` times (default once)."""
    y = np.asarray(y, dtype=float)
    prob = np.asarray(prob, dtype=float)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    which = np.clip(np.digitize(prob, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    points = []
    ece = 0.0
    for b in range(bins):
        sel = (which == b) & (w > 0)
        if not sel.any():
            continue
        mean_p, freq = float(np.average(prob[sel], weights=w[sel])), float(np.average(y[sel], weights=w[sel]))
        ece += w[sel].sum() / w.sum() * abs(freq - mean_p)
        points.append({"bin": b, "n": int(sel.sum()), "mean_probability": mean_p, "observed_frequency": freq})
    return {"bins": bins, "ece": float(ece), "points": points}


def mix_weights(findings, target_findings) -> np.ndarray | None:
    """Per image, (share of its finding in ``target_findings``) / (its share in ``findings``): the set
    reweighted to the target's case mix. None when a finding of either side is missing on the other."""
    have = pd.Series(np.asarray(findings)).value_counts(normalize=True)
    want = pd.Series(np.asarray(target_findings)).value_counts(normalize=True)
    if set(have.index) != set(want.index):
        return None
    return pd.Series(np.asarray(findings)).map(want / have).to_numpy(float)


@dataclass
class Scored:
    """One model's scores on one set of images."""
    y: np.ndarray                     # (N, L) 0/1
    prob: np.ndarray                  # (N, L)
    pred: np.ndarray                  # (N, L) 0/1 at the validation thresholds
    groups: np.ndarray                # (N,) patient (group) of each image: the bootstrap resamples these
    weights: np.ndarray | None = None  # (N,) fixed image weights (a case-mix reweighting); None: 1


def not_scorable_reason(col: np.ndarray, weights=None) -> str | None:
    if weights is not None:
        col = col[np.asarray(weights) > 0]
    pos = int(col.sum())
    if pos == 0:
        return f"no positive image (0 of {len(col)})"
    if pos == len(col):
        return f"no negative image ({pos} of {len(col)} positive)"
    return None


def _weighted(statistic, fixed):
    return statistic if fixed is None else (lambda w: statistic(np.asarray(w, dtype=float) * fixed))


def score_label(sets: dict[str, Scored], j: int, stats: dict, bins: int,
                differences: list[tuple[str, str]], required: str | None = EXTERNAL) -> dict:
    """Label ``j`` on every set where both classes are present: AUROC, AP, sensitivity and specificity with
    bootstrap CIs (each set's groups resampled independently, all on one call so the differences of
    ``differences`` (a, b) -> a - b of AUROC are computed on the same draws), prevalence (AP's chance level),
    reliability and ECE; the other sets get the reason they cannot be scored. When the set ``required`` is
    not scorable, nothing is computed (only the reasons)."""
    out: dict = {"sets": {}, "not_scorable": {}}
    scorable = []
    for name, s in sets.items():
        reason = not_scorable_reason(s.y[:, j], s.weights)
        if reason:
            out["not_scorable"][name] = reason
        else:
            scorable.append(name)
    if not scorable or (required is not None and required not in scorable):
        return out
    folds = []
    for name in scorable:
        s = sets[name]
        y, p, d = s.y[:, j], s.prob[:, j], s.pred[:, j]
        stats_ = [B.auroc_statistic(y, p), B.ap_statistic(y, p), rate_statistic(y, d, True),
                  rate_statistic(y, d, False)]
        groups = np.array([f"{name}\0{g}" for g in s.groups])     # each set is its own draw
        folds.append([(groups, _weighted(st, s.weights)) for st in stats_])
    reducers = {f"{name}|{m}": (lambda v, i=i, k=k: v[i, k])
                for i, name in enumerate(scorable) for k, m in enumerate(METRICS)}
    diffs = [(a, b) for a, b in differences if a in scorable and b in scorable]
    for a, b in diffs:
        reducers[f"{a}-{b}"] = lambda v, ia=scorable.index(a), ib=scorable.index(b): v[ia, 0] - v[ib, 0]
    ci = B.fold_bootstrap(folds, reducers, stats["resamples"], stats["seed"], stats["confidence"],
                          stats.get("method", B.DEFAULT_METHOD), stats.get("min_valid_share", B.DEFAULT_MIN_VALID))
    keep = ("estimate", "low", "high", "undefined")
    for name in scorable:
        s = sets[name]
        col = s.y[:, j]
        prevalence = float(np.average(col, weights=s.weights))
        entry = {"n": int(len(col)), "positives": int(col.sum()), "groups": int(len(set(s.groups))),
                 "prevalence": prevalence, "auroc_chance": AUROC_CHANCE, "ap_chance": prevalence}
        for m in METRICS:
            entry[m] = {k: ci[f"{name}|{m}"][k] for k in keep}
        entry["calibration"] = reliability(col, s.prob[:, j], bins, s.weights)
        out["sets"][name] = entry
    out["auroc_differences"] = {f"{a}-{b}": {k: ci[f"{a}-{b}"][k] for k in keep} for a, b in diffs}
    return out


def youden_cut(y, prob) -> float | None:
    """The cut of ``prob`` with the largest Youden's J (sensitivity + specificity - 1) on ``y``, decided
    ``prob >= cut`` (ties: the highest such cut). None without both classes.

    The points of ``sklearn.metrics.roc_curve(y, prob, drop_intermediate=False)`` computed as scikit-learn
    computes them (the same float operations, so the same cut to the bit; a test compares them): its input
    checks cost 1.3 ms a call, and the bootstrap of :func:`own_cut` calls this 24,000 times in ``ci``."""
    y = np.asarray(y).astype(int).ravel()
    prob = np.asarray(prob, dtype=float).ravel()
    if y.min(initial=1) == y.max(initial=0):
        return None
    if not np.isfinite(prob).all():
        raise ValueError("youden_cut: a probability is not finite (NaN or inf): check the predictions")
    order = np.argsort(-prob, kind="stable")
    s = prob[order]
    at = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]              # the last image of each distinct score
    tps = np.cumsum((y[order] == 1).astype(np.float64))[at]
    fps = 1 + at.astype(np.float64) - tps
    tpr, fpr, thr = np.r_[0.0, tps] / tps[-1], np.r_[0.0, fps] / fps[-1], np.r_[np.inf, s[at]]
    j = tpr - fpr
    best = np.flatnonzero(j == j.max())
    return float(min(1.0, thr[best[0]]))           # roc_curve's first threshold is inf: capped at 1


def own_cut(y, prob, validation_cut: tuple[float, str] | None, groups, stats: dict) -> dict:
    """Sensitivity and specificity at this set's own Youden cut, beside the validation cut it replaces.

    The cut is re-chosen in every resample of the patient bootstrap, so that the CIs include the choice
    (a cut chosen and scored on the same images is optimistic). ``validation_cut``: (cut, what it is) from
    :func:`validation_cut`; ``shift``: own cut - validation cut."""
    y = np.asarray(y).astype(int).ravel()
    prob = np.asarray(prob, dtype=float).ravel()
    cut = youden_cut(y, prob)
    if cut is None:
        return {"status": "one class only", "cut": None}

    def rate(positive: bool):
        def statistic(idx):
            c = youden_cut(y[idx], prob[idx])
            want = y[idx] == int(positive)
            if c is None or not want.any():
                return None
            return float(((prob[idx] >= c) == positive)[want].mean())
        return statistic

    out = {"status": "ok", "cut": cut, "validation_cut": None if validation_cut is None else validation_cut[0],
           "validation_cut_is": None if validation_cut is None else validation_cut[1],
           "shift": None if validation_cut is None else cut - float(validation_cut[0]),
           "how": "Youden's J on this set, re-chosen in each bootstrap resample"}
    for name, positive in (("sensitivity", True), ("specificity", False)):
        ci = B.group_ci(rate(positive), groups, **B.options(stats))
        out[name] = {k: ci[k] for k in ("estimate", "low", "high", "undefined")}
    return out


def validation_cut(cuts: list[np.ndarray], j: int) -> tuple[float, str]:
    """The validation cut of label ``j`` of a model and what it is: its own cut (one member), or the mean of
    its members' cuts (an ensemble decides by the vote of its members' cuts, so the mean is a summary)."""
    if len(cuts) == 1:
        return float(cuts[0][j]), "the model's validation cut"
    return float(np.mean([c[j] for c in cuts])), f"mean of {len(cuts)} members' validation cuts (they vote)"
