"""Analysis of the planted-shortcut study (docs/planted_shortcut.md): pure functions on arrays and frames.

Three questions, each answered with a percentile bootstrap over patient groups
(:mod:`cxrbench.core.bootstrap`):

1. **Does the model use the tag?** (:func:`reliance`) The classifier's
   probability of the tagged label on the test images as they are (the plan's
   tags), with every tag removed, and with the tag moved onto every non-target
   image (:func:`cxrbench.data.confounder.move`'s default). Reliance is shown when
   removing the tag lowers the target images' probability *and* adding it
   raises the other images' (both CIs above 0).
2. **Which attribution method finds the tag?** (:func:`localisation_frame`,
   :func:`random_frame`, :func:`localisation_table`) The metrics of
   :mod:`cxrbench.explain.metrics.localisation` per map, compared on one *common set* of maps
   (every method, the random control included, has status ``ok``), with the
   gain over the random-map control paired on the same images.
3. **Does the localisation ranking agree with AOPPC's?** (:func:`aoppc_gain`,
   :func:`ranking`) Kendall's tau and Spearman's rho between the methods' gains
   over random by the two measures.

Degenerate inputs (no tagged target, fewer than two patient groups, an empty
common set, fewer than three methods) give an explicit ``status`` and ``None``,
never a number that could be read as a result. Every returned dict is
JSON-able (no NaN: undefined values are ``None``).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from cxrbench.explain.metrics import localisation as L
from cxrbench.core.bootstrap import auroc_statistic, format_ci, group_ci, paired_ci

CONDITIONS = ("as_is", "removed", "moved")
CONTROL = "random"
POOLED = "pooled"
IGNORED_AOPPC_METHODS = ("lung_area",)        # a region baseline in metrics/aoppc.json, not an attribution method
KEY_COLUMNS = ("backbone", "fold", "path")
FRAME_COLUMNS = ("method", "backbone", "fold", "path", "group", *L.METRICS, "status",
                 *(f"chance_{m}" for m in L.METRICS))
CHANCE = {"auroc": 0.5, "shift": 0.0}


# --- helpers -------------------------------------------------------------------------------------------------

def _clean(v: Any) -> Any:
    """``v`` with every non-finite float replaced by None (JSON has no NaN), numpy scalars as Python ones."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


def _n_groups(groups: np.ndarray) -> int:
    return int(len(np.unique(groups))) if len(groups) else 0


def _ci_or_status(statistic: Callable, groups: np.ndarray, n_boot: int, seed: int, confidence: float,
                  empty: str) -> dict:
    """group_ci with an explicit status where it cannot be computed (``empty`` when there is no item)."""
    n, g = len(groups), _n_groups(groups)
    if n == 0:
        return {"status": empty, "estimate": None, "low": None, "high": None, "n": 0, "groups": 0}
    if g < 2:
        return {"status": "too_few_groups", "estimate": None, "low": None, "high": None, "n": n, "groups": g}
    out = group_ci(statistic, groups, n_boot=n_boot, seed=seed, confidence=confidence)
    return _clean({"status": "ok", **out, "n": n})


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` items is drawn in a resample ``idx`` (an index array with repeats)."""
    return np.bincount(idx, minlength=n).astype(np.float64)


def _ci_low_above_zero(ci: dict) -> bool:
    low = ci.get("low")
    return ci.get("status") == "ok" and low is not None and low > 0


def _vector(name: str, v: Any, n: int | None, kind: str) -> np.ndarray:
    a = np.asarray(v)
    if a.ndim != 1 or (n is not None and len(a) != n):
        raise ValueError(f"{name}: expected a 1-d array of {n if n is not None else 'N'} values (one per test "
                         f"image, in the same order as the probabilities), got shape {a.shape}")
    if kind == "bool":
        if a.dtype != bool and not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name}: expected booleans (or 0/1), got dtype {a.dtype}")
        return a.astype(bool)
    if kind == "prob":
        a = a.astype(np.float64)
        bad = ~np.isfinite(a) | (a < 0) | (a > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name}: image {i} has {a[i]!r}, not a probability in [0, 1]")
        return a
    return a


# --- 1. reliance -----------------------------------------------------------------------------------------------

def reliance(probs: Mapping[str, Any], *, target: Any, tagged: Any, moved: Any, groups: Any, n_boot: int,
             seed: int, confidence: float = 0.95) -> dict:
    """Whether a classifier uses the planted tag: its probability with the tag as planned, removed and moved.

    ``probs``: ``{"as_is", "removed", "moved"}`` -> (N,) P(tagged label), one
    per test image in one order; ``target`` (N,) the image has the tagged
    label; ``tagged`` (N,) it carries the tag in the plan; ``moved`` (N,) it
    carries it in the moved plan; ``groups`` (N,) patient ids.

    Returns a JSON-able dict:

    * ``target_drop``: mean ``p_as_is - p_removed`` over tagged target images, CI over groups;
    * ``other_rise``: mean ``p_moved - p_as_is`` over non-target images untagged in the plan and tagged in
      the moved plan;
    * ``auroc``: per condition the AUROC of ``p`` for ``target`` over all images; ``auroc_change``: removed
      and moved minus as-is, paired on the same resamples;
    * ``chance``: 0.5 for AUROC, 0 for a shift; ``reliance_shown``: both shifts' CI lows above 0;
    * ``status``: ``ok``, or the parts' problems (``no_tagged_targets``, ``no_moved_others``,
      ``too_few_groups``, ``one_class``) joined by ``, ``; each part has its own ``status``.
    """
    if not isinstance(probs, Mapping) or set(probs) != set(CONDITIONS):
        got = sorted(probs) if isinstance(probs, Mapping) else type(probs).__name__
        raise ValueError(f"probs: expected a dict with exactly the keys {list(CONDITIONS)}, got {got}")
    n = len(np.asarray(probs["as_is"]).reshape(-1))
    p = {c: _vector(f"probs[{c!r}]", probs[c], n, "prob") for c in CONDITIONS}
    target = _vector("target", target, n, "bool")
    tagged = _vector("tagged", tagged, n, "bool")
    moved = _vector("moved", moved, n, "bool")
    groups = _vector("groups", groups, n, "any")
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: at least 100 resamples are needed for a percentile interval")

    def shift(mask: np.ndarray, a: str, b: str, empty: str) -> dict:
        d = (p[a] - p[b])[mask]
        out = _ci_or_status(lambda idx: float(d[idx].mean()), groups[mask], n_boot, seed, confidence, empty)
        out["definition"] = f"mean(p_{a} - p_{b})"
        return out

    drop = shift(target & tagged, "as_is", "removed", "no_tagged_targets")
    rise = shift(~target & ~tagged & moved, "moved", "as_is", "no_moved_others")

    auc, change = {}, {}
    if target.all() or not target.any():
        for c in CONDITIONS:
            auc[c] = {"status": "one_class", "estimate": None, "low": None, "high": None, "n": n,
                      "groups": _n_groups(groups)}
        for c in CONDITIONS[1:]:
            change[c] = dict(auc[c])
    else:
        stat = {c: (lambda s: (lambda idx: s(_weights(idx, n))))(auroc_statistic(target, p[c])) for c in CONDITIONS}
        for c in CONDITIONS:
            auc[c] = _ci_or_status(stat[c], groups, n_boot, seed, confidence, "no_images")
        for c in CONDITIONS[1:]:
            if auc[c]["status"] != "ok":
                change[c] = dict(auc[c])
            else:
                ci = paired_ci(stat[c], stat["as_is"], groups, n_boot=n_boot, seed=seed, confidence=confidence)
                change[c] = _clean({"status": "ok", **ci, "n": n, "definition": f"AUROC {c} - AUROC as_is"})

    problems = []
    for part in (drop, rise, *auc.values()):
        if part["status"] != "ok" and part["status"] not in problems:
            problems.append(part["status"])
    return _clean({"target_drop": drop, "other_rise": rise, "auroc": auc, "auroc_change": change,
                   "chance": dict(CHANCE), "reliance_shown": _ci_low_above_zero(drop) and _ci_low_above_zero(rise),
                   "status": ", ".join(problems) if problems else "ok", "n_images": n,
                   "n_groups": _n_groups(groups), "confidence": confidence, "n_boot": n_boot})


def _n_text(ci: dict) -> str:
    return f"{ci.get('n', 0)} / {ci.get('groups', 0)}"


def _ci_text(ci: dict | None, signed: bool = False) -> str:
    if not isinstance(ci, dict):
        return "–"
    if ci.get("status", "ok") != "ok":
        return f"– ({ci['status']})"
    return format_ci(ci, signed=signed)


def reliance_table(results: Mapping[str, dict]) -> str:
    """Markdown: one row per model (``resnet18``, ``resnet18-f0``, ...) of :func:`reliance` results."""
    if not results:
        raise ValueError("results: no model to tabulate (expected {model name: reliance(...) dict})")
    head = ("| model | target drop [CI] | n / groups | other rise [CI] | n / groups | AUROC as is | "
            "AUROC removed | AUROC moved | Δ removed | Δ moved | reliance shown |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    conf, n_boot = None, None
    for name, r in results.items():
        conf, n_boot = r.get("confidence", conf), r.get("n_boot", n_boot)
        shown = "yes" if r["reliance_shown"] else "no"
        if r.get("status", "ok") != "ok":
            shown += f" ({r['status']})"
        lines.append(" | ".join([
            f"| {name}", _ci_text(r["target_drop"], True), _n_text(r["target_drop"]),
            _ci_text(r["other_rise"], True), _n_text(r["other_rise"]),
            *(_ci_text(r["auroc"][c]) for c in CONDITIONS),
            *(_ci_text(r["auroc_change"][c], True) for c in CONDITIONS[1:]), shown]) + " |")
    lines += ["", f"Target drop: mean P(label) as is minus tag removed, over tagged target images; other rise: "
                  f"tag moved minus as is, over untagged non-target images that get the tag when moved. n / groups: "
                  f"images / patient groups. Chance: shift {CHANCE['shift']:g}, AUROC {CHANCE['auroc']:g}. "
                  f"Reliance shown: both shifts' CI lows above 0. CI: {_conf_text(conf, n_boot)}."]
    return "\n".join(lines)


def _conf_text(conf: float | None, n_boot: int | None) -> str:
    level = f"{100 * conf:g} %" if conf else "?"
    return f"{level} percentile bootstrap over patient groups ({n_boot} resamples)"


# --- 2. localisation per map -----------------------------------------------------------------------------------

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


# --- 3. localisation table --------------------------------------------------------------------------------------

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


def _scope_table(sub: pd.DataFrame, metrics: tuple[str, ...], n_boot: int, seed: int, confidence: float) -> dict:
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
                mean = _clean({"status": "ok", **group_ci(stat[m], groups, n_boot=n_boot, seed=seed,
                                                          confidence=confidence), "n": n})
                gain = None if m == CONTROL else _clean(
                    {"status": "ok", **paired_ci(stat[m], stat[CONTROL], groups, n_boot=n_boot, seed=seed,
                                                 confidence=confidence), "n": n})
            entry["methods"][m] = {"mean": mean, "gain": None if m == CONTROL else gain}
        by_metric[metric] = entry
    out["metrics"] = by_metric
    return out


def localisation_table(frame: pd.DataFrame, *, n_boot: int, seed: int, confidence: float = 0.95,
                       metrics: tuple[str, ...] = L.METRICS) -> dict:
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
    """
    metrics = tuple(metrics)
    frame = _check_frame(frame, metrics)
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: at least 100 resamples are needed for a percentile interval")
    frame = frame.assign(backbone=frame["backbone"].astype(str))
    scopes = {bb: frame[frame["backbone"] == bb] for bb in sorted(frame["backbone"].unique())}
    scopes[POOLED] = frame
    return {"metrics": list(metrics), "confidence": confidence, "n_boot": n_boot, "control": CONTROL,
            "scopes": {name: _scope_table(sub, metrics, n_boot, seed, confidence) for name, sub in scopes.items()}}


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
    lines.append(f"Common set: images where every method and the random control have status ok. CI: "
                 f"{_conf_text(table.get('confidence'), table.get('n_boot'))}; gain paired on the same resamples.")
    return "\n".join(lines)


# --- 4. ranking against AOPPC ----------------------------------------------------------------------------------

def _weighted_mean(entries: list[dict]) -> tuple[float | None, int]:
    n = sum(e["n"] for e in entries)
    if n == 0:
        return None, 0
    return sum(e["mean"] * e["n"] for e in entries) / n, n


def aoppc_gain(aoppc_json: Mapping, key: str = "aoppc_pixels_morf") -> dict[str, dict[str, float]]:
    """Per scope (each backbone, ``pooled``) and method: AOPPC gain over the random control from metrics/aoppc.json.

    Reads ``by_method[method][backbone]["f{fold}"][key] = {mean, std, n}``.
    Per backbone: the n-weighted mean over folds minus the random control's on
    the same folds; ``pooled``: the same over every (backbone, fold) the method
    has. ``lung_area`` and entries without ``key`` (or with no mean, or n = 0)
    are ignored. ``key`` must be higher-is-better (a MoRF curve).
    """
    if not isinstance(aoppc_json, Mapping) or not isinstance(aoppc_json.get("by_method"), Mapping):
        raise ValueError("aoppc_json: expected metrics/aoppc.json's content, with a 'by_method' dict")
    if key.endswith("_lerf"):
        raise ValueError(f"key={key!r}: a LeRF score is lower-is-better; rank by a MoRF key "
                         f"(e.g. aoppc_pixels_morf)")
    by_method = aoppc_json["by_method"]
    if CONTROL not in by_method:
        raise ValueError(f"aoppc_json: no '{CONTROL}' method; the gain over random needs the control")

    def cells(method: str) -> dict[tuple[str, str], dict]:
        out = {}
        for bb, folds in (by_method.get(method) or {}).items():
            for fold, scores in (folds or {}).items():
                e = (scores or {}).get(key)
                if isinstance(e, Mapping) and e.get("mean") is not None and e.get("n"):
                    if not math.isfinite(float(e["mean"])) or int(e["n"]) < 0:
                        raise ValueError(f"aoppc_json: {method} {bb} {fold} {key} has mean {e['mean']!r}, "
                                         f"n {e['n']!r}")
                    out[(str(bb), str(fold))] = {"mean": float(e["mean"]), "n": int(e["n"])}
        return out

    control = cells(CONTROL)
    result: dict[str, dict[str, float]] = {}
    for method in by_method:
        if method in (CONTROL, *IGNORED_AOPPC_METHODS):
            continue
        mine = cells(method)
        shared = sorted(set(mine) & set(control))
        for scope in sorted({bb for bb, _ in shared}) + [POOLED]:
            ks = [k for k in shared if scope == POOLED or k[0] == scope]
            a, _ = _weighted_mean([mine[k] for k in ks])
            b, _ = _weighted_mean([control[k] for k in ks])
            if a is not None and b is not None:
                result.setdefault(scope, {})[method] = a - b
    return result


def _desc_ranks(v: np.ndarray) -> np.ndarray:
    """Rank 1 = largest; ties share their average rank."""
    return stats.rankdata(-v, method="average")


def ranking(loc_table: dict, aoppc_scores: Mapping[str, Mapping[str, float]], metric: str = "rank") -> dict:
    """Per scope: the methods ranked by localisation gain over random and by AOPPC gain, and their agreement.

    ``aoppc_scores``: :func:`aoppc_gain`'s output (scope -> method -> gain).
    Methods are those with both a defined localisation gain (``metric``) and an
    AOPPC gain; the control is excluded. Ranks descend (1 = largest gain), ties
    averaged. Kendall's tau-b and Spearman's rho with their p-values; status
    ``too_few_methods`` (fewer than 3) or ``constant`` (a ranking with a single
    value) gives None. ``top_*``: the method(s) with rank 1 (a list: ties).
    """
    if metric not in loc_table.get("metrics", []):
        raise ValueError(f"metric: {metric!r} is not in the localisation table (it has {loc_table.get('metrics')})")
    out = {"metric": metric, "scopes": {}}
    for scope, s in loc_table["scopes"].items():
        aop = aoppc_scores.get(scope, {}) or {}
        entry = s["metrics"][metric]["methods"]
        gains = {m: e["gain"] for m, e in entry.items()
                 if m != CONTROL and e["gain"] is not None and e["gain"].get("estimate") is not None}
        methods = sorted(m for m in gains if aop.get(m) is not None and math.isfinite(aop[m]))
        r: dict[str, Any] = {
            "n": len(methods),
            "missing_aoppc": sorted(set(gains) - set(methods)),
            "missing_localisation": sorted(m for m in aop if m != CONTROL and m not in gains),
        }
        loc = np.array([gains[m]["estimate"] for m in methods], dtype=np.float64)
        aoc = np.array([float(aop[m]) for m in methods], dtype=np.float64)
        loc_rank, aoc_rank = _desc_ranks(loc), _desc_ranks(aoc)
        r["methods"] = [{"method": m, "localisation": gains[m], "loc_rank": float(loc_rank[i]),
                         "aoppc_gain": float(aoc[i]), "aoppc_rank": float(aoc_rank[i])} for i, m in enumerate(methods)]
        r["methods"].sort(key=lambda row: (row["loc_rank"], row["method"]))
        r["top_localisation"] = [m for i, m in enumerate(methods) if loc_rank[i] == loc_rank.min()] if methods else []
        r["top_aoppc"] = [m for i, m in enumerate(methods) if aoc_rank[i] == aoc_rank.min()] if methods else []
        if len(methods) < 3:
            r.update(status="too_few_methods", kendall_tau=None, kendall_p=None, spearman_rho=None, spearman_p=None)
        elif np.ptp(loc) == 0 or np.ptp(aoc) == 0:
            r.update(status="constant", kendall_tau=None, kendall_p=None, spearman_rho=None, spearman_p=None)
        else:
            tau = stats.kendalltau(loc, aoc)
            rho = stats.spearmanr(loc, aoc)
            r.update(status="ok", kendall_tau=float(tau.statistic), kendall_p=float(tau.pvalue),
                     spearman_rho=float(rho.statistic), spearman_p=float(rho.pvalue))
        out["scopes"][scope] = _clean(r)
    return out


def _num(v: float | None, signed: bool = False) -> str:
    return "–" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")


def ranking_markdown(r: dict) -> str:
    """Markdown: per scope, the methods with their localisation and AOPPC gains and ranks, then tau and rho."""
    lines = []
    for scope, s in r["scopes"].items():
        lines += [f"**{scope}** ({r['metric']} gain vs AOPPC gain, both over random; rank 1 = largest)", "",
                  "| method | localisation gain [CI] | loc rank | AOPPC gain | AOPPC rank |", "|---|---|---|---|---|"]
        for row in s["methods"]:
            lines.append(f"| {row['method']} | {_ci_text(row['localisation'], True)} | {row['loc_rank']:g} | "
                         f"{_num(row['aoppc_gain'], True)} | {row['aoppc_rank']:g} |")
        if s["status"] == "ok":
            lines.append(f"\nKendall tau = {s['kendall_tau']:.3f} (p = {s['kendall_p']:.3g}), Spearman rho = "
                         f"{s['spearman_rho']:.3f} (p = {s['spearman_p']:.3g}), n = {s['n']} methods; top by "
                         f"localisation: {', '.join(s['top_localisation'])}; by AOPPC: {', '.join(s['top_aoppc'])}.")
        else:
            lines.append(f"\nNo rank correlation: {s['status']} (n = {s['n']} methods).")
        missing = s["missing_aoppc"] + s["missing_localisation"]
        if missing:
            lines.append(f"Left out (a gain missing on one side): {', '.join(missing)}.")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def ranking_plot(r: dict, path: str | Path) -> None:
    """Per scope, localisation gain (with its CI) against AOPPC gain, one labelled point per method; written
    atomically (:func:`cxrbench.core.plotting.save`)."""
    from cxrbench.core.plotting import plt, save

    scopes = list(r["scopes"])
    if not scopes:
        raise ValueError("r: no scope to plot")
    fig, axes = plt.subplots(1, len(scopes), figsize=(4.2 * len(scopes), 3.8), squeeze=False)
    for ax, scope in zip(axes[0], scopes):
        s = r["scopes"][scope]
        for row in s["methods"]:
            ci = row["localisation"]
            x, y = ci["estimate"], row["aoppc_gain"]
            lo, hi = ci.get("low"), ci.get("high")
            xerr = None if lo is None or hi is None else [[x - lo], [hi - x]]
            ax.errorbar([x], [y], xerr=xerr, fmt="o", ms=4, capsize=2, color="tab:blue")
            ax.annotate(row["method"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axvline(0, color="grey", lw=0.6, ls="--")
        ax.axhline(0, color="grey", lw=0.6, ls="--")
        tau = s.get("kendall_tau")
        ax.set_title(f"{scope}: tau = {tau:.2f}" if tau is not None else f"{scope}: {s['status']}", fontsize=8)
        ax.set_xlabel(f"{r['metric']} gain over random (localisation)", fontsize=7)
        ax.set_ylabel("AOPPC gain over random", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle("Planted tag: localisation vs AOPPC (gains over the random-map control)", fontsize=8)
    save(fig, path)
