"""metrics/aoppc_table.md: the text of :func:`cxrbench.explain.metrics.tables.summary`'s dict.

The per-method AOPPC table, the gains over the random map (patient-weighted, with CIs, adjusted p and the
equivalence test), the rank agreement across fills with the paired intervals behind each ranking's leader,
the removed share per threshold level, the randomisation check and the common-set tables.
"""

from __future__ import annotations

from cxrbench.explain.metrics import properties as MP
from cxrbench.explain.metrics.across_models import SEED_TAG
from cxrbench.explain.metrics.tables import RANDOM, SANITY, LUNG_AREA


def _cell(table: dict, m: str, metric: str) -> str:
    v = table.get(f"{m}|{metric}")
    return f"{v['mean']:.3f} ± {v['std']:.3f} (n={v['n']})" if v and v["n"] else "-"


def _gain_cell(table: dict, m: str, metric: str) -> str:
    v = table.get(f"{m}|{metric}")
    if not v or not v["n"]:
        return "-"
    if v.get("mean") is None:
        return "-"
    if v.get("low") is None:
        return f"{v['mean']:+.3f} [no CI: {v.get('reason', 'undefined')}]"
    mark = "*" if v.get("significant") else ("≈0" if v.get("at_chance") else "")
    return f"{v['mean']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]{mark}"


def _model_gain_cell(table: dict, m: str, metric: str) -> str:
    """A gain with its two-level interval (models and patients) and the range of the models' own means; ``!``
    when a model's mean has the other sign."""
    v = table.get(f"{m}|{metric}")
    if not v or v.get("mean") is None:
        return "-"
    per = list((v.get("per_model") or {}).values())
    spread = f" (models {min(per):+.3f} to {max(per):+.3f}{'' if v.get('sign_agrees') else ' !'})" if per else ""
    if v.get("low") is None:
        return f"{v['mean']:+.3f} [no CI: {v.get('reason', 'undefined')}]{spread}"
    mark = "*" if v.get("significant") else ""
    return f"{v['mean']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]{mark}{spread}"


def _winner_text(w: dict | None) -> str:
    """What the paired intervals allow to say about the leader of one ranking: over patients, and where there
    are several models, over models and patients with the leader of each model."""
    if not w:
        return ""
    if w["clear"]:
        text = f" ({w['leader']} ahead of each of the {len(w['vs'])} others: paired CIs over patients, adjusted"
    else:
        text = (f" (no winner: {w['leader']} is not shown to be ahead of {len(w['tied_with'])} of the "
                f"{len(w['vs'])} others after adjustment: {', '.join(w['tied_with'])}")
    a = w.get("across_models")
    if a:
        leads = sum(v == w["leader"] for v in a["leader_by_model"].values())
        verdict = ("ahead of each other method" if a["clear"]
                   else f"not shown ahead of {', '.join(a['tied_with'])}")
        text += (f"; over the {a['models']} models and patients: {verdict}; first in {leads} of the "
                 f"{a['models']} models alone")
    return text + ")"


def _table(heads: list[str], rows: list[str], cell, metrics: list[str]) -> list[str]:
    """A Markdown table: one row per method of ``rows``, one column per metric, ``cell(method, metric)``."""
    return (["| method | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
            + [f"| {m} | " + " | ".join(cell(m, me) for me in metrics) + " |" for m in rows])


def _region_metrics(result: dict) -> list[str]:
    return [k.split("|", 1)[1] for k in result["pooled"] if k.startswith(f"{RANDOM}|aoppc_region_")
            and k.endswith("_morf")]


def _fill(metric: str) -> str:
    """The fill of a region metric: ``aoppc_region_blur_morf`` -> ``blur``."""
    return metric[len("aoppc_region_"):-len("_morf")]


def gain_columns(result: dict) -> dict[str, str]:
    """The gain tables' columns: metric name -> heading (threshold, pixel deletion, then each region fill)."""
    return {"aoppc_threshold_morf": "threshold", "aoppc_pixels_morf": "pixel deletion",
            **{me: f"region, {_fill(me)}" for me in _region_metrics(result)}}


def markdown(result: dict, methods: list, reference: dict, region: str = "") -> str:
    """metrics/aoppc_table.md from :func:`summary`'s dict: the per-method table (with its map counts), the
    gains over the random map per perturbation with CIs and the rank agreement across fills, the removed
    share per threshold level, the randomisation check, the common-set tables pooled and per backbone.
    ``region``: a sentence stating the region perturbation's patch and steps."""
    methods = list(methods) + [RANDOM]
    pooled_, maps = result["pooled"], result["maps"]["by_method"]
    region_metrics = _region_metrics(result)
    lines = ["AOPPC pooled over backbones, folds and images (mean ± std over images; each method over its own "
             "non-degenerate maps). Threshold = CXR-Net eq. 12 (black); pixel deletion = the top 10 %, 20 %, ..., "
             "100 % of pixels zeroed (black; the last level blanks the image for every map). CXR-Net (seed 003) "
             "reports its own models on its own data: a reference, not a like-for-like comparison.", "",
             "| method | AOPPC threshold (eq. 12) | pixel deletion MoRF | pixel deletion LeRF | CXR-Net reported "
             "| maps: ok / degenerate |",
             "|---|---|---|---|---|---|"]
    for m in methods:
        ref = reference.get(m)
        c = maps.get(m)
        counts = f"{c['ok']} / {c['excluded_degenerate']}" if c else "-"
        lines.append(f"| {m} | {_cell(pooled_, m, 'aoppc_threshold_morf')} | "
                     f"{_cell(pooled_, m, 'aoppc_pixels_morf')} | {_cell(pooled_, m, 'aoppc_pixels_lerf')} | "
                     f"{ref if ref is not None else '-'} | {counts} |")
    gain = result.get("gain")
    if gain:
        g = gain["pooled"]
        columns = gain_columns(result)
        metrics, heads = list(columns), list(columns.values())
        n = result["common"]["images"]["pooled"]
        fam = next((v.get("family") for v in g.values() if v.get("family")), None)
        adj = (f" * = differs from 0 (two-sided; above 0 where the gain is positive, below where negative) after "
               f"{fam['method'].upper() if fam['method'] == 'bh' else 'Holm'} adjustment across "
               f"the table's {fam['size']} comparisons (alpha {fam['alpha']:g});") if fam else ""
        margin = next((v["equivalence"]["margin"] for v in g.values() if v.get("equivalence")), None)
        eq = (f" ≈0 = at chance: an equivalence test (TOST) puts the gain within ±{margin:g};" if margin is not None
              else "")
        patients = max((v.get("patients", 0) for v in g.values()), default=0)
        lines += ["", f"Gain over the random map (AOPPC minus the random map's on the same image; chance = 0), MoRF, "
                  f"on the common set ({n} images of {patients} patients), patient-weighted mean [95 % CI, cluster "
                  f"bootstrap-t over patients; variance: test patients only, the trained models held fixed].{adj}{eq} "
                  f"neither: not shown to differ from chance, nor shown to be at chance. {region}", ""]
        lines += _table(heads, methods[:-1], lambda m, me: _gain_cell(g, m, me), metrics)
        gm = gain.get("across_models", {}).get("pooled")
        if gm:
            first = next(iter(gm.values()))
            seeds = any(SEED_TAG in k for k in first.get("per_model", {}))
            unit = ("backbone x fold x training seed; each is another training run" if seeds else
                    "backbone x fold; each fold's model is another training run on other data")
            lines += ["", f"The same gains with the trained models as a source of variance: {first['models']} models "
                      f"({unit}) and "
                      f"{first['patients']} patients, two-level bootstrap (models, then patients) [95 % CI]; * = "
                      f"differs from 0 (two-sided) after adjustment across the table; in brackets the range of the "
                      f"models' own means, ! = a model's mean has the other sign.", ""]
            lines += _table(heads, methods[:-1], lambda m, me: _model_gain_cell(gm, m, me), metrics)
        ag = result.get("agreement", {}).get("pooled")
        if ag and ag.get("kendall_w") is not None:
            wci = ag.get("kendall_w_ci") or {}
            wtext = (f" [{wci['low']:.3f}, {wci['high']:.3f}]" if wci.get("low") is not None
                     else f" [no CI: {wci.get('reason', 'too few patients')}]")
            lines += ["", f"Rank agreement of the {len(ag['methods'])} methods across the fills "
                      f"({', '.join(_fill(me) for me in ag['metrics'])}): Kendall's W = {ag['kendall_w']:.3f}{wtext} "
                      "(1 = the same ranking under every fill; 95 % CI, bootstrap over patients); Kendall's tau "
                      "per pair: "
                      + ", ".join(f"{k.replace('aoppc_region_', '').replace('_morf', '')} {v:+.3f}"
                                  for k, v in ag["pairs"].items()) + "."]
            wins = result.get("winners", {}).get("by_metric", {})
            for me, order in ag["ranking"].items():
                lines.append(f"- {_fill(me)}: " + " > ".join(order) + _winner_text(wins.get(me)))
            for bb, a in result["agreement"]["by_backbone"].items():
                if a.get("kendall_w") is not None:
                    lines.append(f"- within {bb}: W = {a['kendall_w']:.3f}")
    share = result.get("removed_share", {}).get("by_method")
    if share:
        lv = ["0.9", "0.5", "0.1"]
        lines += ["", "Share of the image each threshold level removes (eq. 12, MoRF; mean over images): the "
                  "threshold score depends on how much a map's histogram lets each level remove.", "",
                  "| method | " + " | ".join(f"x = {x}" for x in lv) + " |", "|---" * (len(lv) + 1) + "|"]
        for m in methods:
            if m in share:
                lines.append(f"| {m} | " + " | ".join(f"{share[m].get(x, float('nan')):.3f}" for x in lv) + " |")
    sanity = result["sanity"]["by_method"]
    if sanity:
        lines += ["", "Model randomisation (Spearman of |map| vs. the weight-randomised model's; low = passes). "
                  "A constant randomised map changed completely: it passes and has no Spearman.", "",
                  "| method | Spearman | randomised map constant (passes) | randomised map non-finite "
                  "| trained map degenerate (excluded) | images |", "|---|---|---|---|---|---|"]
        for m in methods:
            s = sanity.get(m)
            if s:
                lines.append(f"| {m} | {_cell(pooled_, m, SANITY)} | {s['randomised_constant_passed']} | "
                             f"{s['randomised_nonfinite']} | {s['excluded_degenerate']} | {s['images']} |")
    com = result["common"]
    cols = (["aoppc_threshold_morf", "aoppc_pixels_morf", "aoppc_pixels_lerf"] + region_metrics + ["lung_mass"]
            + list(MP.PROPERTIES))
    head = ["| method | AOPPC threshold (eq. 12) | pixel deletion MoRF | pixel deletion LeRF | "
            + "".join(f"region {_fill(me)} | " for me in region_metrics)
            + "lung mass | sparseness (Quantus) | complexity (Quantus) |",
            "|---" * (len(cols) + 1) + "|"]

    def table(t: dict) -> list[str]:
        rows = methods + ([LUNG_AREA] if f"{LUNG_AREA}|lung_mass" in t else [])
        return head + [f"| {m} | " + " | ".join(_cell(t, m, c) for c in cols) + " |" for m in rows]

    n = com["images"]
    lines += ["", f"Common set: {n['pooled']} of {n['scored']} (backbone, fold, image) where every method and the "
              f"random control has a non-degenerate map (all methods on the same images). Sparseness: Gini index "
              f"of |map| (Chalasani et al. 2020; 0 = flat, the random map about 1/3); complexity: entropy of the "
              f"pixels' shares of |map| (Bhatt et al. 2020; a flat map ln(pixels)); both by Quantus 0.6.0."]
    if com["missing"]:
        lines.append("No maps (their folds add no image): "
                     + ", ".join(f"{e['method']} {e['backbone']} {e['fold']}" for e in com["missing"]) + ".")
    lines += [""] + table(com["pooled"])
    for bb, t in com["by_backbone"].items():
        lines += ["", f"Common set within {bb}: {n['by_backbone'][bb]} images.", ""] + table(t)
    return "\n".join(lines) + "\n"
