"""Which attribution method finds the planted tag? Localisation per map, and tables on one common set.

The metrics of :mod:`cxrbench.explain.metrics.localisation` per map (:func:`localisation_frame`, with the
random-map control of :func:`random_frame`), compared on one *common set* of maps (every method, the random
control included, has status ``ok``), with the gain over the random-map control paired on the same images
(:func:`localisation_table`, :func:`localisation_markdown`).
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np
import pandas as pd

from cxrbench.explain.metrics import localisation as L
from cxrbench.core.bootstrap import DEFAULT_METHOD, DEFAULT_MIN_VALID, group_ci, paired_ci
from cxrbench.studies.planted.common import (CONTROL, FRAME_COLUMNS, KEY_COLUMNS, POOLED, _ci_text, _clean,
                                             _conf_text, _method_of, _n_groups)


def _ids(paths: Any, groups: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    paths = np.asarray(paths, dtype=object)
    groups = np.asarray(groups, dtype=object)
    if paths.shape != (n,) or groups.shape != (n,):
        raise ValueError(f"paths and groups: expected {n} of each (one per map), got shapes {paths.shape}, "
                         f"{groups.shape}")
    if len(set(paths.tolist())) != n:
        raise ValueError("paths: a path occurs twice; one map per image and method")
    return paths, groups


def _tagged_boxes(boxes: Any) -> np.ndarray:
    b = np.asarray(boxes)
    if b.ndim != 2 or b.shape[1] != 4 or not np.issubdtype(b.dtype, np.integer):
        raise ValueError(f"boxes: expected integers of shape (N, 4) (x0, y0, x1, y1), got dtype {b.dtype}, "
                         f"shape {b.shape}")
    untagged = (b == -1).all(1)
    if untagged.any():
        raise ValueError(f"boxes: {int(untagged.sum())} row(s) are -1 (untagged images, e.g. row "
                         f"{int(np.flatnonzero(untagged)[0])}): select the plan's tagged rows (and their maps) first")
    return b


def _frame(metrics: pd.DataFrame, boxes: np.ndarray, shape: tuple[int, int], *, method: str, backbone: str,
           fold: int, paths: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    out = pd.DataFrame({"method": method, "backbone": str(backbone), "fold": int(fold), "path": paths,
                        "group": groups})
    for m in L.METRICS:
        out[m] = metrics[m].to_numpy(np.float64)
    out["status"] = metrics["status"].to_numpy(object)
    ch = L.chance(boxes, shape)
    for m in L.METRICS:
        out[f"chance_{m}"] = ch[m].to_numpy(np.float64)
    return out[list(FRAME_COLUMNS)]


def localisation_frame(maps: Any, boxes: Any, *, method: str, backbone: str, fold: int, paths: Any, groups: Any,
                       rng: Any) -> pd.DataFrame:
    """:func:`cxrbench.explain.metrics.localisation.localise` of one method's maps (N, H, W) against the tag boxes (N, 4).

    Only tagged images: a box of -1 raises. Returns one row per map with
    columns ``method, backbone, fold, path, group, pointing, mass, rank, auroc,
    status`` and ``chance_<metric>`` (:func:`cxrbench.explain.metrics.localisation.chance` for
    that box: what a uniform random map scores in expectation). ``rng`` breaks
    pointing-game ties (a seed or Generator). The method name ``random`` is
    reserved for :func:`random_frame`.
    """
    if not isinstance(method, str) or not method or method == CONTROL:
        raise ValueError(f"method: expected an attribution method's name, got {method!r} ('{CONTROL}' is the "
                         f"control: use random_frame)")
    b = _tagged_boxes(boxes)
    a = np.asarray(maps)
    if a.ndim != 3 or len(a) != len(b):
        raise ValueError(f"maps: expected (N, H, W) with N = {len(b)} boxes, got shape {a.shape}")
    paths, groups = _ids(paths, groups, len(b))
    metrics = L.localise(a, b, rng=rng)
    return _frame(metrics, b, a.shape[1:], method=method, backbone=backbone, fold=fold, paths=paths, groups=groups)


def control_seed(seed: int, backbone: str, fold: int) -> int:
    """The random control's seed for one (backbone, fold): a hash of all three, so it does not depend on the
    order in which models are processed."""
    digest = hashlib.sha256(f"{int(seed)}|{backbone}|{int(fold)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def random_frame(boxes: Any, shape: tuple[int, int], *, backbone: str, fold: int, paths: Any, groups: Any,
                 seed: int, draws: int = 1) -> pd.DataFrame:
    """The random-map control for the same boxes: :func:`localisation_frame`'s columns with ``method='random'``.

    Uses :func:`cxrbench.explain.metrics.localisation.random_control` seeded by
    :func:`control_seed` ``(seed, backbone, fold)``; with ``draws > 1`` each
    metric is the mean over the draws (``status`` ``ok`` only if every draw is).
    """
    b = _tagged_boxes(boxes)
    if len(shape) != 2:
        raise ValueError(f"shape: expected the maps' (H, W), got {shape!r}")
    shape = (int(shape[0]), int(shape[1]))
    paths, groups = _ids(paths, groups, len(b))
    ctl = L.random_control(b, shape, seed=control_seed(seed, backbone, fold), draws=draws)
    by_image = ctl.groupby("image", sort=True)
    metrics = by_image[list(L.METRICS)].mean().reset_index(drop=True)
    metrics["status"] = by_image["status"].agg(
        lambda st: next((x for x in st if x != "ok"), "ok")).to_numpy(object)
    return _frame(metrics, b, shape, method=CONTROL, backbone=backbone, fold=fold, paths=paths, groups=groups)


def _check_frame(frame: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"frame: expected a DataFrame from localisation_frame / random_frame, got "
                         f"{type(frame).__name__}")
    missing = [c for c in FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"frame: missing column(s) {missing}; build it with localisation_frame and random_frame")
    unknown = [m for m in metrics if m not in L.METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics: expected a non-empty subset of {list(L.METRICS)}, got {list(metrics)}")
    if not (frame["method"] == CONTROL).any():
        raise ValueError(f"frame: no '{CONTROL}' rows; add random_frame(...) for the same boxes (the gain over "
                         f"random needs the control)")
    dup = frame.duplicated(["method", *KEY_COLUMNS])
    if dup.any():
        r = frame[dup].iloc[0]
        raise ValueError(f"frame: {r['method']} has two rows for {r['backbone']} fold {r['fold']} {r['path']}")
    models = frame[["backbone", "fold"]].drop_duplicates()
    with_control = frame.loc[frame["method"] == CONTROL, ["backbone", "fold"]].drop_duplicates()
    lacking = models.merge(with_control, how="left", indicator=True).query("_merge == 'left_only'")
    if len(lacking):
        r = lacking.iloc[0]
        raise ValueError(f"frame: {r['backbone']} fold {r['fold']} has no '{CONTROL}' rows; add random_frame(...) "
                         f"for its boxes")
    if (frame["backbone"].astype(str) == POOLED).any():
        raise ValueError(f"frame: a backbone is named '{POOLED}', which names the scope over all backbones")
    L.counts(frame["status"])                                       # unknown statuses raise
    groups = frame.groupby(list(KEY_COLUMNS))["group"].nunique()
    if (groups > 1).any():
        raise ValueError(f"frame: image {groups[groups > 1].index[0]} has different patient groups in different "
                         f"methods' rows")
    return frame


def _scope_table(sub: pd.DataFrame, metrics: tuple[str, ...], n_boot: int, seed: int, confidence: float,
                 method: str = DEFAULT_METHOD, min_valid_share: float = DEFAULT_MIN_VALID) -> dict:
    kw = {"n_boot": n_boot, "seed": seed, "confidence": confidence, "method": method,
          "min_valid_share": min_valid_share}
    methods = sorted(sub["method"].unique(), key=lambda m: (m == CONTROL, m))
    keys = list(KEY_COLUMNS)
    wide = sub.set_index([*keys, "method"])
    ok = (wide["status"] == "ok").unstack("method").reindex(columns=methods)
    common = ok.index[ok.eq(True).all(axis=1)]
    out: dict[str, Any] = {
        "methods": methods,
        "rows": {m: int((sub["method"] == m).sum()) for m in methods},
        "status": {m: L.counts(sub.loc[sub["method"] == m, "status"]) for m in methods},
        "images": int(len(ok)),
    }
    ref = sub[sub["method"] == CONTROL].set_index(keys).reindex(common)
    groups = ref["group"].to_numpy(object)
    n, g = len(common), _n_groups(groups)
    status = "ok" if n and g >= 2 else ("empty_common_set" if n == 0 else "too_few_groups")
    out["common"] = {"n": n, "groups": g, "status": status,
                     "rule": "images where every method, the random control included, has status ok"}
    by_metric = {}
    for metric in metrics:
        values = wide[metric].unstack("method").reindex(index=common, columns=methods)
        chance_v = ref[f"chance_{metric}"].to_numpy(np.float64)
        entry = {"chance": float(chance_v.mean()) if n else None, "methods": {}}
        stat = {m: (lambda v: (lambda idx: float(v[idx].mean())))(values[m].to_numpy(np.float64)) for m in methods}
        for m in methods:
            if status != "ok":
                mean = gain = {"status": status, "estimate": None, "low": None, "high": None, "n": n, "groups": g}
            else:
                mean = _clean({"status": "ok", **group_ci(stat[m], groups, **kw), "n": n})
                gain = None if m == CONTROL else _clean(
                    {"status": "ok", **paired_ci(stat[m], stat[CONTROL], groups, **kw), "n": n})
            entry["methods"][m] = {"mean": mean, "gain": None if m == CONTROL else gain}
        by_metric[metric] = entry
    out["metrics"] = by_metric
    return out


def localisation_table(frame: pd.DataFrame, *, n_boot: int, seed: int, confidence: float = 0.95,
                       metrics: tuple[str, ...] = L.METRICS, method: str = DEFAULT_METHOD,
                       min_valid_share: float = DEFAULT_MIN_VALID) -> dict:
    """Localisation per scope (each backbone and ``pooled`` over backbones) and method, on one common set.

    ``frame``: :func:`localisation_frame` and :func:`random_frame` rows
    concatenated. Per scope:

    * ``rows``, ``status``: each method's number of maps and their statuses (:func:`cxrbench.explain.metrics.localisation.counts`);
    * ``common``: the (backbone, fold, path) keys where *every* method of the scope, the random control
      included, has status ``ok`` (so no table mixes image sets; a method missing for some model removes
      that model's images), with its n and patient groups;
    * ``metrics[metric]``: ``chance`` (mean of the boxes' chance level), and per method ``mean`` (group_ci
      over patient groups on the common set) and ``gain`` (mean minus the random control's, paired_ci on
      the same resamples; None for the control itself).

    When the common set is empty or has one group, every ``mean`` and ``gain`` has that status and no number.
    ``n_boot``, ``seed``, ``confidence``, ``method``, ``min_valid_share``: the intervals' settings (``stats.*``).
    """
    metrics = tuple(metrics)
    frame = _check_frame(frame, metrics)
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: at least 100 resamples are needed for a bootstrap interval (stats.resamples)")
    frame = frame.assign(backbone=frame["backbone"].astype(str))
    scopes = {bb: frame[frame["backbone"] == bb] for bb in sorted(frame["backbone"].unique())}
    scopes[POOLED] = frame
    return {"metrics": list(metrics), "confidence": confidence, "n_boot": n_boot, "control": CONTROL,
            "scopes": {name: _scope_table(sub, metrics, n_boot, seed, confidence, method, min_valid_share)
                       for name, sub in scopes.items()}}


def _status_text(counts: Mapping[str, int]) -> str:
    parts = [f"{v} {k}" for k, v in counts.items() if v]
    return ", ".join(parts) if parts else "none"


METRIC_TITLES = {"rank": "Relevance rank accuracy (share of the top-|box| pixels inside the box)",
                 "mass": "Relevance mass accuracy (share of positive relevance inside the box)",
                 "pointing": "Pointing game (the maximum inside the box)",
                 "auroc": "AUROC of the map as a detector of the box's pixels"}


def localisation_markdown(table: dict, metric: str) -> str:
    """Markdown for one metric: per scope, methods sorted by their mean (best first), the random control, chance."""
    if metric not in table.get("metrics", []):
        raise ValueError(f"metric: {metric!r} is not in the table (it has {table.get('metrics')})")
    lines = [f"##### {METRIC_TITLES.get(metric, metric)}", ""]
    for scope, s in table["scopes"].items():
        c = s["common"]
        entry = s["metrics"][metric]
        lines += [f"**{scope}**: common set {c['n']} images, {c['groups']} patient groups"
                  + ("" if c["status"] == "ok" else f" ({c['status']})"), "",
                  f"| method | {metric} [CI] | gain over random [CI] | maps: status |", "|---|---|---|---|"]
        ms = [m for m in s["methods"] if m != CONTROL]
        ms.sort(key=lambda m: (entry["methods"][m]["mean"].get("estimate") is None,
                               -(entry["methods"][m]["mean"].get("estimate") or 0.0), m))
        for m in [*ms, CONTROL]:
            e = entry["methods"][m]
            lines.append(f"| {m} | {_ci_text(e['mean'])} | {'–' if e['gain'] is None else _ci_text(e['gain'], True)}"
                         f" | {_status_text(s['status'][m])} |")
        ch = entry["chance"]
        lines += [f"| chance | {'–' if ch is None else f'{ch:.3f}'} | | |", ""]
    how = _method_of([ci for s in table["scopes"].values() for e in s["metrics"][metric]["methods"].values()
                      for ci in (e["mean"], e["gain"])])
    lines.append(f"Common set: images where every method and the random control have status ok. CI: "
                 f"{_conf_text(table.get('confidence'), table.get('n_boot'), how)}; gain paired on the same "
                 f"resamples.")
    return "\n".join(lines)
