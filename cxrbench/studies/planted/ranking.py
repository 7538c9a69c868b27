"""Does the localisation ranking agree with AOPPC's? Kendall's tau and Spearman's rho between the methods'
gains over random by the two measures (:func:`aoppc_gain`, :func:`ranking`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy import stats

from cxrbench.studies.planted.common import CONTROL, IGNORED_AOPPC_METHODS, POOLED, _ci_text, _clean


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
