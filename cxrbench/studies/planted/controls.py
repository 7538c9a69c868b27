"""What makes the planted study's ranking worth reading: the tag is a strong cue (:func:`decision_change`), AOPPC
is scored on the same tagged images as the localisation (:func:`aoppc_per_image`, :func:`aoppc_gain_same`),
and every ranked model has a randomised control (:func:`ranked_models`).

* A mean drop of P(label) of 0.01 when the tag is removed says the model barely uses it: a ranking of the
  methods by how well they find the tag then ranks them on a cue the model does not use. The decision
  change counts the tagged target images called positive (at the model's validation cut) with the tag and
  not without it; the tag is a strong cue when that share's CI low is above ``confounder.strong_cue``.
* AOPPC averaged over other images than the localisation compares two measures on two samples.
* A model whose weight-randomised copy gives only degenerate maps (constant, non-finite) has no control:
  what its maps find cannot be told from what the image alone shows, so it leaves the ranking, with the reason.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from cxrbench.core.bootstrap import DEFAULT_METHOD, DEFAULT_MIN_VALID
from cxrbench.studies.planted.common import CONTROL, POOLED, _ci_or_status, _clean, _vector

SAME_IMAGES_RULE = ("the tagged test images the localisation scores, restricted to those where every ranked "
                    "method and the random map have a non-degenerate map")


def decision_change(p_as_is: Any, p_removed: Any, cut: float, *, target: Any, tagged: Any, groups: Any,
                    margin: float, n_boot: int, seed: int, confidence: float = 0.95, cut_rule: str = "ge",
                    method: str = DEFAULT_METHOD, min_valid_share: float = DEFAULT_MIN_VALID) -> dict:
    """Share of the tagged target images whose decision flips when the tag is removed: mean of
    ``positive(as_is) - positive(removed)`` at the validation ``cut`` (``ge``: p >= cut; ``gt``: p > cut), with
    a CI over patient groups (``n_boot`` to ``min_valid_share``: its settings, ``stats.*``). ``strong_cue``:
    the CI low is above ``margin``. Also the share called positive with the tag and without it
    (``positive_as_is``, ``positive_removed``)."""
    n = len(np.asarray(p_as_is).reshape(-1))
    a = _vector("p_as_is", p_as_is, n, "prob")
    r = _vector("p_removed", p_removed, n, "prob")
    sel = _vector("target", target, n, "bool") & _vector("tagged", tagged, n, "bool")
    g = _vector("groups", groups, n, "any")
    if not (0 <= margin < 1):
        raise ValueError(f"margin={margin!r}: expected a share in [0, 1) (confounder.strong_cue)")
    if cut_rule not in ("ge", "gt"):
        raise ValueError(f"cut_rule={cut_rule!r}: expected ge or gt (evaluate.cut)")
    pos = (lambda p: p >= cut) if cut_rule == "ge" else (lambda p: p > cut)
    da, dr = pos(a[sel]).astype(float), pos(r[sel]).astype(float)
    d = da - dr
    out = _ci_or_status(lambda idx: float(d[idx].mean()), g[sel], n_boot, seed, confidence, "no_tagged_targets",
                        method, min_valid_share)
    low = out.get("low")
    return _clean({**out, "cut": float(cut), "cut_rule": cut_rule, "margin": float(margin),
                   "positive_as_is": float(da.mean()) if len(da) else None,
                   "positive_removed": float(dr.mean()) if len(dr) else None,
                   "strong_cue": bool(out["status"] == "ok" and low is not None and low > margin),
                   "definition": "mean(decision as is - decision with the tag removed) over tagged target images"})


def aoppc_per_image(curves: Callable[[np.ndarray, np.ndarray], dict], maps: Mapping[str, np.ndarray], status: Mapping[str, Any],
                    ids: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (method, image): ``aoppc`` of the image's map (NaN where the map is degenerate) and the ids
    (``backbone``, ``fold``, ``path``, ``group``). ``curves(rows, maps)`` runs the perturbation on the images
    ``rows`` with their ``maps`` (:func:`cxrbench.explain.metrics.perturbation.perturbation_curves` bound to the
    model and inputs); degenerate maps are not scored."""
    rows = []
    for m, a in maps.items():
        ok = np.asarray(status[m]) == "ok"
        v = np.full(len(a), np.nan)
        if ok.any():
            rows_ok = np.flatnonzero(ok)
            v[ok] = np.asarray(curves(rows_ok, np.asarray(a)[rows_ok])["aoppc"], dtype=np.float64)
        rows.append(pd.DataFrame({"method": m, "backbone": str(ids["backbone"]), "fold": int(ids["fold"]),
                                  "path": list(ids["paths"]), "group": list(ids["groups"]), "aoppc": v}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["method", "backbone", "fold", "path", "group", "aoppc"])


def aoppc_gain_same(frame: pd.DataFrame, methods: list[str] | None = None) -> dict:
    """Per scope (each backbone, ``pooled``): each method's mean AOPPC minus the random map's on the same
    images (:data:`SAME_IMAGES_RULE`), patient-weighted (each patient group counts once); ``n`` and ``groups``
    under ``_n``. The input of :func:`cxrbench.studies.planted.ranking.ranking`."""
    if CONTROL not in set(frame["method"]):
        raise ValueError(f"frame: no '{CONTROL}' rows; the gain over random needs the control")
    methods = sorted(set(frame["method"]) - {CONTROL}) if methods is None else list(methods)
    wide = frame.pivot_table(index=["backbone", "fold", "path", "group"], columns="method", values="aoppc",
                             aggfunc="first", dropna=False)
    wide = wide.reindex(columns=methods + [CONTROL])
    unscored = [m for m in methods if not wide[m].notna().any()]       # every map degenerate: no AOPPC at all
    methods = [m for m in methods if m not in unscored]
    wide = wide[methods + [CONTROL]].dropna()
    out: dict = {}
    for scope in sorted(set(wide.index.get_level_values("backbone"))) + [POOLED]:
        sub = wide if scope == POOLED else wide.xs(scope, level="backbone", drop_level=False)
        if not len(sub):
            continue
        by_patient = sub.groupby(level="group").mean()          # one patient counts once
        out[scope] = {m: float((by_patient[m] - by_patient[CONTROL]).mean()) for m in methods}
        out[scope]["_n"] = {"images": int(len(sub)), "groups": int(len(by_patient)), "unscored": unscored}
    return out


def ranked_models(rand_frame: pd.DataFrame, models: list[tuple[str, int]]) -> tuple[list, dict]:
    """Which models the ranking may use: those whose weight-randomised copy gave at least one non-degenerate
    map for every method (the control exists). Returns (kept ``(backbone, fold)`` list, ``{name: reason}`` of
    the left out)."""
    kept, left = [], {}
    for bb, k in models:
        sub = rand_frame[(rand_frame["backbone"] == str(bb)) & (rand_frame["fold"] == int(k))
                         & (rand_frame["method"] != CONTROL)]
        if sub.empty:
            left[f"{bb}-f{k}"] = "no randomised-model map was computed (no tagged image attributed)"
            continue
        ok = sub.assign(ok=sub["status"] == "ok").groupby("method")["ok"].agg(["sum", "size"])
        none = ok[ok["sum"] == 0]
        if len(none):
            left[f"{bb}-f{k}"] = ("no randomised control: every map of its weight-randomised copy is degenerate "
                                  "for " + ", ".join(f"{m} ({int(r['size'])} maps)" for m, r in none.iterrows()))
        else:
            kept.append((bb, k))
    return kept, left
