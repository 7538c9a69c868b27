"""Aggregation and tables of the aoppc stage: host-only, numpy in, dicts and text out.

The stage scores each (backbone, fold) with :func:`score_fold` into one
accumulator (:func:`new_scores`) and writes what :func:`summary` and
:func:`markdown` make of it. No function here calls torch: the device work is
the ``curves`` callable the stage passes in.

Degenerate maps (:func:`cxrbench.explanation_metrics.map_status`: ``constant``
or ``nonfinite``) are a status, not a score. Such a map is left out of every
per-map metric of its method (AOPPC threshold / fraction, MoRF / LeRF, lung
mass, the sanity Spearman), so each metric's ``n`` counts non-degenerate maps
and ``excluded_degenerate`` counts the others. In the model-randomisation
check a *constant* map of the randomised model passes (the map changed
completely): counted in ``randomised_constant_passed``, never a Spearman
value and never missing; a non-finite one is counted apart and not compared.

Two views of the same per-image values:

* per method (``by_method``, ``pooled``: the keys and values the stage always
  wrote; with no degenerate map they are bit-identical to the former
  aggregation: same arrays, same order, same :func:`~cxrbench.explanation_metrics.mean_std`);
* the **common set** (``common``): the (backbone, fold, image) triples where
  every method and the random control has a non-degenerate map, pooled and
  per backbone, so that methods are compared on the same images.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import explanation_metrics as EM

RANDOM = "random"
LUNG_AREA = "lung_area"
SANITY = "sanity_spearman"
AOPPC_METRICS = tuple(f"aoppc_{s}_{o}" for s in EM.SCHEMES for o in EM.ORDERS)
COMMON_METRICS = AOPPC_METRICS + ("lung_mass",)
SANITY_COUNTS = ("images", "compared", "randomised_constant_passed", "randomised_nonfinite", "excluded_degenerate")

DEFINITIONS = {
    "maps": "per method: maps per status (ok; constant: one value everywhere; nonfinite: a NaN or infinity); "
            "excluded_degenerate = constant + nonfinite maps, left out of every metric of the method "
            "(each metric's n counts the ok maps)",
    "sanity": "model-randomisation check on the first explain.sanity_images images: compared = pairs with both "
              "maps ok (sanity_spearman's values); randomised_constant_passed = the randomised model's map is "
              "constant, i.e. changed completely: passes, no Spearman; randomised_nonfinite: not compared; "
              "excluded_degenerate: the trained model's map is degenerate",
    "common": "the (backbone, fold, image) set where every method of explain.methods and the random control has "
              "a non-degenerate map; pooled over it and per backbone (common set within the backbone); "
              "lung_mass over its images with a lung mask; sanity_spearman is not part of it (its own images)",
}


def fold_key(fold) -> str:
    return f"f{fold}"


def new_scores() -> dict:
    """The accumulator: ``blocks`` (per-image values in the order scored), ``status`` per (method, backbone,
    fold key) and ``sanity`` counts per (method, backbone, fold key)."""
    return {"blocks": [], "status": {}, "sanity": {}}


def add_status(scores: dict, method: str, backbone: str, fold, status) -> None:
    st = np.asarray(status, dtype=object)
    unknown = set(st.tolist()) - set(EM.MAP_STATUSES)
    if unknown:
        raise ValueError(f"status of {method} {backbone} {fold_key(fold)}: unknown {sorted(unknown)}, "
                         f"expected {list(EM.MAP_STATUSES)}")
    scores["status"][(method, backbone, fold_key(fold))] = st


def add_values(scores: dict, method: str, backbone: str, fold, metric: str, values, images) -> None:
    """Per-image values of one metric; ``images``: their rows in the fold's npz (same length)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    i = np.asarray(images, dtype=np.int64).reshape(-1)
    if len(v) != len(i):
        raise ValueError(f"{method} {backbone} {fold_key(fold)} {metric}: {len(v)} values for {len(i)} images")
    scores["blocks"].append((method, backbone, fold_key(fold), metric, v, i))


def sanity_split(original, randomised) -> dict:
    """Which of the first ``len(randomised)`` images the sanity Spearman compares, and the counts.

    ``original``: the trained model's map statuses (at least as many as ``randomised``); ``randomised``: the
    randomised model's. Returns ``compare`` (row indices, both ok) and :data:`SANITY_COUNTS`.
    """
    r = np.asarray(randomised, dtype=object)
    o = np.asarray(original, dtype=object)[:len(r)]
    if len(o) != len(r):
        raise ValueError(f"sanity_split: {len(r)} randomised maps but only {len(o)} maps of the trained model")
    mine = o == "ok"
    return {"compare": np.flatnonzero(mine & (r == "ok")), "images": int(len(r)),
            "compared": int((mine & (r == "ok")).sum()),
            "randomised_constant_passed": int((mine & (r == "constant")).sum()),
            "randomised_nonfinite": int((mine & (r == "nonfinite")).sum()),
            "excluded_degenerate": int((~mine).sum())}


def score_fold(scores: dict, backbone: str, fold: int, maps: dict, masks: np.ndarray, randomised: dict,
               curves: Callable[[np.ndarray, np.ndarray, str, str], dict]) -> list[dict]:
    """Score every map of one (backbone, fold) into ``scores``; returns the rows of curves_all.csv.

    ``maps``: method -> float32 (N, H, W) maps (the random control included, named :data:`RANDOM`);
    ``masks``: (N, H, W) lung masks; ``randomised``: method -> the randomised model's maps of the first
    images; ``curves(rows, maps_of_rows, scheme, order)`` -> :func:`~cxrbench.explanation_metrics.perturbation_curves`'s
    dict for those rows (the stage's device work). Degenerate maps are never passed to ``curves`` nor to any
    other metric.
    """
    has_mask = np.asarray(masks).reshape(len(masks), -1).any(1)
    rows = []
    for m, a in maps.items():
        status = EM.map_status(a)
        if len(status) != len(masks):
            raise ValueError(f"{m} {backbone} {fold_key(fold)}: {len(status)} maps for {len(masks)} images")
        add_status(scores, m, backbone, fold, status)
        ok = status == "ok"
        keep = np.flatnonzero(ok)
        for scheme in EM.SCHEMES:
            for order in EM.ORDERS:
                values = np.zeros(0)
                if len(keep):
                    r = curves(keep, a[keep], scheme, order)
                    values = r["aoppc"]
                    for lvl, x_lvl in enumerate(EM.levels(scheme)):
                        rows.append({"method": m, "backbone": backbone, "fold": fold, "scheme": scheme,
                                     "order": order, "level": float(x_lvl),
                                     "p_drop": float(r["drop"][:, lvl].mean()),
                                     "removed": float(r["removed"][:, lvl].mean())})
                add_values(scores, m, backbone, fold, f"aoppc_{scheme}_{order}", values, keep)
        if has_mask.any():
            sel = np.flatnonzero(has_mask & ok)
            values = EM.lung_mass_fraction(a[sel], masks[sel]) if len(sel) else np.zeros(0)
            add_values(scores, m, backbone, fold, "lung_mass", values, sel)
        if m in randomised:
            rnd = randomised[m]
            split = sanity_split(status, EM.map_status(rnd))
            c = split.pop("compare")
            values = EM.rank_correlation(a[c], rnd[c]) if len(c) else np.zeros(0)
            add_values(scores, m, backbone, fold, SANITY, values, c)
            scores["sanity"][(m, backbone, fold_key(fold))] = split
    if has_mask.any():
        sel = np.flatnonzero(has_mask)
        add_values(scores, LUNG_AREA, backbone, fold, "lung_mass", EM.area_fraction(masks[sel]), sel)
    return rows


def _counts(st: np.ndarray) -> dict:
    return {s: int((st == s).sum()) for s in EM.MAP_STATUSES}


def status_label(scores: dict, method: str, backbone: str, fold) -> str:
    """``ok`` when every map of the method in this fold is ok, else e.g. ``degenerate maps: 4/16 constant``."""
    st = scores["status"].get((method, backbone, fold_key(fold)))
    text = EM.degenerate_text(_counts(st)) if st is not None else ""
    return f"degenerate maps: {text}" if text else "ok"


def fold_status(attribute_methods: dict, scores: dict, backbone: str, fold) -> dict:
    """metrics/aoppc.json ``status[backbone][fold]``: the attribute stage's failure record of a method that did
    not run, else :func:`status_label`."""
    return {m: (st if not st["ok"] else status_label(scores, m, backbone, fold))
            for m, st in attribute_methods.items()}


def by_method(scores: dict) -> dict:
    """method -> backbone -> fold -> metric -> {mean, std, n}; per method with maps also ``maps`` (counts per
    status) and ``excluded_degenerate``; with a sanity check ``sanity`` (:data:`SANITY_COUNTS`)."""
    out: dict = {}
    for m, bb, fk, metric, v, _ in scores["blocks"]:
        out.setdefault(m, {}).setdefault(bb, {}).setdefault(fk, {})[metric] = EM.mean_std(v)
    for (m, bb, fk), st in scores["status"].items():
        cell = out.setdefault(m, {}).setdefault(bb, {}).setdefault(fk, {})
        c = _counts(st)
        cell["maps"] = c
        cell["excluded_degenerate"] = c["constant"] + c["nonfinite"]
    for (m, bb, fk), split in scores["sanity"].items():
        out[m][bb][fk]["sanity"] = dict(split)
    return out


def pooled(scores: dict, keep: Callable[[tuple], np.ndarray] | None = None) -> dict:
    """``method|metric`` -> {mean, std, n} over every block's values concatenated in scoring order.

    ``keep(block)`` -> bool mask of the block's values to use (the common set); ``None``: all.
    """
    per: dict = {}
    for block in scores["blocks"]:
        m, _, _, metric, v, _ = block
        per.setdefault((m, metric), []).append(v if keep is None else v[keep(block)])
    return {f"{m}|{metric}": EM.mean_std(np.concatenate(v)) for (m, metric), v in per.items()}


def map_totals(scores: dict) -> dict:
    """Per method, pooled over backbones and folds: maps per status and ``excluded_degenerate``."""
    out: dict = {}
    for (m, _, _), st in scores["status"].items():
        c = out.setdefault(m, {s: 0 for s in EM.MAP_STATUSES})
        for s, n in _counts(st).items():
            c[s] += n
    for c in out.values():
        c["excluded_degenerate"] = c["constant"] + c["nonfinite"]
    return out


def sanity_totals(scores: dict) -> dict:
    """Per method, pooled: :data:`SANITY_COUNTS` of the model-randomisation check."""
    out: dict = {}
    for (m, _, _), split in scores["sanity"].items():
        c = out.setdefault(m, {k: 0 for k in SANITY_COUNTS})
        for k in SANITY_COUNTS:
            c[k] += int(split[k])
    return out


def common_images(scores: dict, methods: list) -> tuple[dict, dict, list]:
    """(backbone, fold key) -> rows where every one of ``methods`` has an ok map; (backbone, fold key) -> images
    scored; and the (method, backbone, fold) triples with no maps at all (their fold contributes no image)."""
    folds: dict = {}
    for (_, bb, fk), st in scores["status"].items():
        folds.setdefault((bb, fk), len(st))
    out, missing = {}, []
    for (bb, fk), n in folds.items():
        ok = np.ones(n, dtype=bool)
        for m in methods:
            st = scores["status"].get((m, bb, fk))
            if st is None:
                missing.append({"method": m, "backbone": bb, "fold": fk})
                ok[:] = False
            else:
                ok &= st == "ok"
        out[(bb, fk)] = np.flatnonzero(ok)
    return out, folds, missing


def common(scores: dict, methods: list) -> dict:
    """metrics/aoppc.json ``common``: the common-set tables (``pooled``, ``by_backbone``), their image counts,
    how many of the scored images each method's degenerate maps remove, and methods without maps."""
    methods = list(dict.fromkeys(list(methods) + [RANDOM]))
    sets, folds, missing = common_images(scores, methods)

    def keep(block, backbone=None):
        _, bb, fk, metric, _, images = block
        if metric == SANITY or (backbone is not None and bb != backbone):
            return np.zeros(len(images), dtype=bool)
        return np.isin(images, sets.get((bb, fk), np.zeros(0, np.int64)))

    backbones = list(dict.fromkeys(bb for bb, _ in sets))
    strip = lambda d: {k: v for k, v in d.items() if k.split("|")[1] in COMMON_METRICS}  # noqa: E731
    dropped = {m: sum(int((st != "ok").sum()) for (mm, _, _), st in scores["status"].items() if mm == m)
               for m in methods}
    return {
        "definition": DEFINITIONS["common"],
        "methods": methods,
        "images": {"scored": int(sum(folds.values())),
                   "pooled": int(sum(len(v) for v in sets.values())),
                   "by_backbone": {bb: int(sum(len(v) for (b, _), v in sets.items() if b == bb)) for bb in backbones},
                   "by_fold": {bb: {fk: int(len(v)) for (b, fk), v in sets.items() if b == bb} for bb in backbones}},
        "degenerate_by_method": dropped,
        "missing": missing,
        "pooled": strip(pooled(scores, keep)),
        "by_backbone": {bb: strip(pooled(scores, lambda b, bb=bb: keep(b, bb))) for bb in backbones},
    }


def summary(scores: dict, methods: list) -> dict:
    """The new and the per-method parts of metrics/aoppc.json: ``pooled``, ``by_method`` (their former keys
    and values), ``maps``, ``sanity`` and ``common``."""
    return {"pooled": pooled(scores), "by_method": by_method(scores),
            "maps": {"definition": DEFINITIONS["maps"], "by_method": map_totals(scores)},
            "sanity": {"definition": DEFINITIONS["sanity"], "by_method": sanity_totals(scores)},
            "common": common(scores, methods)}


def _cell(table: dict, m: str, metric: str) -> str:
    v = table.get(f"{m}|{metric}")
    return f"{v['mean']:.3f} ± {v['std']:.3f} (n={v['n']})" if v and v["n"] else "-"


def markdown(result: dict, methods: list, reference: dict) -> str:
    """metrics/aoppc_table.md from :func:`summary`'s dict: the per-method table (with its map counts), the
    randomisation check, the common-set table pooled and per backbone."""
    methods = list(methods) + [RANDOM]
    pooled_, maps = result["pooled"], result["maps"]["by_method"]
    lines = ["AOPPC pooled over backbones, folds and images (mean ± std over images; each method over its own "
             "non-degenerate maps). CXR-Net (seed 003) reports its own models on its own data: a reference, not a "
             "like-for-like comparison.", "",
             "| method | AOPPC threshold (eq. 12) | AOPPC fraction MoRF | LeRF fraction | CXR-Net reported "
             "| maps: ok / degenerate |",
             "|---|---|---|---|---|---|"]
    for m in methods:
        ref = reference.get(m)
        c = maps.get(m)
        counts = f"{c['ok']} / {c['excluded_degenerate']}" if c else "-"
        lines.append(f"| {m} | {_cell(pooled_, m, 'aoppc_threshold_morf')} | "
                     f"{_cell(pooled_, m, 'aoppc_fraction_morf')} | {_cell(pooled_, m, 'aoppc_fraction_lerf')} | "
                     f"{ref if ref is not None else '-'} | {counts} |")
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
    head = ["| method | AOPPC threshold (eq. 12) | AOPPC fraction MoRF | LeRF fraction | lung mass |",
            "|---|---|---|---|---|"]

    def table(t: dict) -> list[str]:
        rows = methods + ([LUNG_AREA] if f"{LUNG_AREA}|lung_mass" in t else [])
        return head + [f"| {m} | {_cell(t, m, 'aoppc_threshold_morf')} | {_cell(t, m, 'aoppc_fraction_morf')} | "
                       f"{_cell(t, m, 'aoppc_fraction_lerf')} | {_cell(t, m, 'lung_mass')} |" for m in rows]

    n = com["images"]
    lines += ["", f"Common set: {n['pooled']} of {n['scored']} (backbone, fold, image) where every method and the "
              f"random control has a non-degenerate map (all methods on the same images)."]
    if com["missing"]:
        lines.append("No maps (their folds add no image): "
                     + ", ".join(f"{e['method']} {e['backbone']} {e['fold']}" for e in com["missing"]) + ".")
    lines += [""] + table(com["pooled"])
    for bb, t in com["by_backbone"].items():
        lines += ["", f"Common set within {bb}: {n['by_backbone'][bb]} images.", ""] + table(t)
    return "\n".join(lines) + "\n"
