"""Do the explanation metrics agree? Ranks of the methods under every metric, Kendall's tau between metrics
with patient-bootstrap CIs, and a median-standardised aggregate rank with two control methods.

Input: per-image scores in long form (``method``, ``backbone``, ``fold``, ``image``, ``group``, ``metric``,
``value``), e.g. the aoppc stage's ``metrics/aoppc_per_image.csv`` joined with the robustness scores.
Everything is computed on the **common set**: the (backbone, fold, image) items where every method has a
value of every metric, so that each metric ranks the methods on the same images (:func:`matrix`).

* :func:`ranks`: per metric, the methods' mean score oriented by :data:`DIRECTION` (+1: higher is better,
  -1: lower is), ranked 1 = best (ties averaged).
* :func:`pairwise_tau`: per pair of metrics, Kendall's tau-b between the methods' oriented means, with a
  bootstrap CI resampling patients (:func:`cxrbench.core.bootstrap.group_ci`, the interval ``stats.method``);
  chance is 0.
* :func:`aggregate`: LATEC's robust aggregate (Klein et al. 2024): per metric, each method's oriented mean
  minus the median over methods, divided by the median absolute deviation over methods (a metric whose
  MAD is 0 does not separate the methods and is left out, counted); the mean over metrics, ranked. The
  controls (the random map, the Sobel edge map) are ranked with the methods: a method below a control
  is not explained by the model any better than chance (random) or image contrast (edge).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DIRECTION", "direction", "select", "matrix", "ranks", "pairwise_tau", "aggregate", "agreement", "markdown"]

# +1: higher is better; -1: lower is better. Keys are metric names, or prefixes ending in "*".
DIRECTION = {"aoppc_threshold_morf": 1, "aoppc_pixels_morf": 1, "aoppc_region_*_morf": 1,
             "aoppc_threshold_lerf": -1, "aoppc_pixels_lerf": -1, "aoppc_region_*_lerf": -1,
             "lung_mass": 1, "sensitivity_max": -1, "infidelity": -1}


def _finite(x) -> float | None:
    """An interval bound, or None where the bootstrap gave none (``no_ci``: None; an undefined bound: NaN)."""
    return float(x) if x is not None and np.isfinite(x) else None


def direction(metric: str) -> int:
    if metric in DIRECTION:
        return DIRECTION[metric]
    for key, d in DIRECTION.items():
        if "*" in key:
            head, tail = key.split("*")
            if metric.startswith(head) and metric.endswith(tail):
                return d
    raise ValueError(f"metric {metric!r} has no direction: add it to agreement.DIRECTION")


def select(frame, methods: list, metrics: list) -> tuple[list, dict]:
    """(metrics kept, metrics left out -> why): every method is kept and a metric some method has no score
    under is left out, so that the agreement ranks all the methods (leaving out a method instead would drop
    e.g. occlusion, the costliest to score for robustness, from every metric's ranking)."""
    has = set(zip(frame["method"].astype(str), frame["metric"].astype(str)))
    kept, left = [], {}
    for me in metrics:
        missing = [m for m in methods if (m, me) not in has]
        if not missing:
            kept.append(me)
        elif len(missing) == len(methods):
            left[me] = "not scored in this run"
        else:
            left[me] = "no score for " + ", ".join(missing)
    return kept, left


def matrix(frame, methods: list, metrics: list) -> tuple[np.ndarray, np.ndarray, int]:
    """(V, groups, scored): V[item, method, metric] over the common set of (backbone, fold, image) items,
    the patient group of each item, and how many items had any score (before the common set)."""
    f = frame[frame["method"].isin(methods) & frame["metric"].isin(metrics)]
    if not len(f):
        return np.zeros((0, len(methods), len(metrics))), np.zeros(0, dtype=object), 0
    f = f.assign(item=f["backbone"].astype(str) + "|" + f["fold"].astype(str) + "|" + f["image"].astype(str))
    wide = f.pivot_table(index="item", columns=["method", "metric"], values="value", aggfunc="first")
    cols = [(m, me) for m in methods for me in metrics]
    scored = int(len(wide))
    wide = wide.reindex(columns=_pd_index(cols)).dropna()
    groups = f.drop_duplicates("item").set_index("item")["group"].astype(str).reindex(wide.index).to_numpy()
    v = wide.to_numpy(np.float64).reshape(len(wide), len(methods), len(metrics))
    return v, groups, scored


def _pd_index(cols):
    import pandas as pd
    return pd.MultiIndex.from_tuples(cols, names=["method", "metric"])


def _oriented_means(v: np.ndarray, metrics: list) -> np.ndarray:
    return v.mean(0) * np.array([direction(m) for m in metrics])[None, :]


def ranks(v: np.ndarray, metrics: list) -> np.ndarray:
    """(methods, metrics) ranks, 1 = best under each metric (ties averaged)."""
    from scipy.stats import rankdata
    return np.column_stack([rankdata(-col) for col in _oriented_means(v, metrics).T]) if len(v) else \
        np.full(v.shape[1:], np.nan)


def _tau(means: np.ndarray, i: int, j: int) -> float | None:
    from scipy.stats import kendalltau
    t = kendalltau(means[:, i], means[:, j]).statistic
    return float(t) if np.isfinite(t) else None


def pairwise_tau(v: np.ndarray, groups, metrics: list, stats: dict) -> dict:
    """``"a vs b"`` -> Kendall's tau between the methods' oriented means under the two metrics, with a patient
    bootstrap CI (None bounds with fewer than 2 patients)."""
    from cxrbench.core.bootstrap import group_ci, options
    out = {}
    patients = len(set(np.asarray(groups).tolist()))
    for i, a in enumerate(metrics):
        for j, b in enumerate(metrics):
            if j <= i:
                continue
            est = _tau(_oriented_means(v, metrics), i, j) if len(v) else None
            entry = {"tau": est, "low": None, "high": None, "n": int(len(v)), "patients": patients}
            if patients >= 2 and est is not None:
                ci = group_ci(lambda idx, i=i, j=j: _tau(_oriented_means(v[idx], metrics), i, j), groups,
                              **options(stats))
                entry.update(low=_finite(ci["low"]), high=_finite(ci["high"]), undefined=ci["undefined"],
                             ci_status=ci.get("status", "ok"))
            out[f"{a} vs {b}"] = entry
    return out


def _aggregate_scores(v: np.ndarray, metrics: list) -> tuple[np.ndarray, list]:
    means = _oriented_means(v, metrics)
    med = np.median(means, 0)
    mad = np.median(np.abs(means - med), 0)
    used = [k for k in range(len(metrics)) if mad[k] > 0]
    if not used:
        return np.full(means.shape[0], np.nan), used
    return ((means[:, used] - med[used]) / mad[used]).mean(1), used


def aggregate(v: np.ndarray, groups, methods: list, metrics: list, stats: dict) -> dict:
    """The median-standardised aggregate per method with a patient-bootstrap CI, and its rank (1 = best)."""
    from scipy.stats import rankdata

    from cxrbench.core.bootstrap import group_ci, options
    if not len(v):
        return {"methods": {}, "metrics_used": [], "note": "no common image"}
    score, used = _aggregate_scores(v, metrics)
    if not used:
        return {"methods": {}, "metrics_used": [], "note": "no metric separates the methods (MAD 0)"}
    rank = rankdata(-score)
    out = {}
    patients = len(set(np.asarray(groups).tolist()))
    for k, m in enumerate(methods):
        e = {"score": float(score[k]), "rank": float(rank[k]), "low": None, "high": None}
        if patients >= 2:
            ci = group_ci(lambda idx, k=k: float(_aggregate_scores(v[idx], metrics)[0][k]), groups,
                          **options(stats))
            e.update(low=_finite(ci["low"]), high=_finite(ci["high"]), undefined=ci["undefined"])
        out[m] = e
    return {"methods": out, "metrics_used": [metrics[k] for k in used],
            "metrics_left_out": [m for k, m in enumerate(metrics) if k not in used]}


def _ci(e: dict, key: str) -> str:
    if e.get(key) is None:
        return "–"
    lo, hi = e.get("low"), e.get("high")
    return f"{e[key]:+.2f}" + (f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None and hi is not None else " (no CI)")


def markdown(result: dict) -> str:
    """The agreement tables: ranks (methods x metrics), the aggregate with its controls, tau between metrics."""
    methods, metrics = result["methods"], result["metrics"]
    level = f"{100 * result.get('confidence', 0.95):g} %"          # stats.confidence
    if not result["items"]:
        return "#### Agreement across metrics\n\nNo common image: every method needs every metric on one image.\n"
    lines = ["#### Agreement across metrics", "",
             f"Common set: {result['items']} (backbone, fold, image) items of {result['patients']} patients "
             f"(of {result['scored']} scored), where every method and control has every metric. Rank 1 = best; "
             f"controls: `random` (chance) and `edge` (Sobel magnitude: image contrast). Aggregate: per metric the "
             f"mean minus the median over methods, over the median absolute deviation (LATEC), averaged over "
             f"metrics; {level} CI resampling patients.", "",
             "| method | " + " | ".join(metrics) + " | aggregate | agg. rank |",
             "|---|" + "---|" * (len(metrics) + 2)]
    agg = result["aggregate"].get("methods", {})
    for k, m in enumerate(methods):
        a = agg.get(m, {})
        lines.append(f"| {m} | " + " | ".join(f"{r:g}" for r in result["ranks"][k]) + f" | {_ci(a, 'score')} | "
                     + (f"{a['rank']:g}" if a else "–") + " |")
    left = result["aggregate"].get("metrics_left_out") or []
    if left:
        lines += ["", "Left out of the aggregate (the same score for every method, MAD 0): "
                  + ", ".join(f"`{m}`" for m in left) + "."]
    lines += ["", f"Kendall's tau between metrics (methods' means; 0 = chance), {level} CI over patients; – where a "
                  "metric gives every method the same mean (tau undefined):", "",
              "| metrics | tau | n items | patients |", "|---|---|---|---|"]
    for pair, e in result["tau"].items():
        lines.append(f"| {pair} | {_ci(e, 'tau')} | {e['n']} | {e['patients']} |")
    return "\n".join(lines) + "\n"


def agreement(frame, methods: list, metrics: list, stats: dict) -> dict:
    """Everything above on ``frame`` (long per-image scores): JSON-ready."""
    v, groups, scored = matrix(frame, methods, metrics)
    r = ranks(v, metrics)
    return {"methods": list(methods), "metrics": list(metrics), "items": int(len(v)), "scored": scored,
            "patients": int(len(set(groups.tolist()))),
            "means": {m: {me: float(v[:, k, j].mean()) for j, me in enumerate(metrics)} for k, m in enumerate(methods)}
            if len(v) else {},
            "ranks": r.tolist(), "tau": pairwise_tau(v, groups, metrics, stats),
            "aggregate": aggregate(v, groups, methods, metrics, stats), "confidence": float(stats["confidence"])}


def over_covered_items(per_image, extra, methods: list, metrics: list, stats: dict) -> dict:
    """:func:`agreement` on ``per_image`` (the aoppc stage's rows) and the rows of ``extra`` (e.g. robustness
    scores) whose metric covers every (backbone, fold, image) item of ``per_image``. A metric scored on fewer
    items (robustness runs on ``reliability.images`` per model) is left out, with the count, rather than
    shrinking the common set to its items; ``metrics_not_scored`` names every metric left out and why."""
    import pandas as pd

    def items(f):
        return set(zip(f["backbone"].astype(str), f["fold"].astype(str), f["image"].astype(str)))

    every = items(per_image)
    parts, left = [per_image], {}
    for me in [m for m in metrics if m in set(extra["metric"].astype(str))] if len(extra) else []:
        rows = extra[extra["metric"].astype(str) == me]
        have = items(rows) & every
        if have == every:
            parts.append(rows)
        else:
            left[me] = f"scored on {len(have)} of the {len(every)} items; the common set would shrink to them"
    both = pd.concat(parts, ignore_index=True)
    kept, not_scored = select(both, methods, [m for m in metrics if m not in left])
    out = agreement(both, methods, kept, stats)
    out["metrics_not_scored"] = {**left, **not_scored}
    out["metrics_on_fewer_items"] = list(left)
    return out
