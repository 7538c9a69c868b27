"""Aggregation and tables of the aoppc stage: host-only, numpy in, dicts and text out.

The stage scores each (backbone, fold) with :func:`score_fold` into one
accumulator (:func:`new_scores`) and writes what :func:`summary` and
:func:`markdown` make of it. No function here calls torch: the device work is
the ``curves`` callable the stage passes in.

Degenerate maps (:func:`cxrbench.explain.metrics.perturbation.map_status`: ``constant``
or ``nonfinite``) are a status, not a score. Such a map is left out of every
per-map metric of its method (AOPPC threshold / pixels / region, MoRF / LeRF, lung
mass, the sanity Spearman), so each metric's ``n`` counts non-degenerate maps
and ``excluded_degenerate`` counts the others. In the model-randomisation
check a *constant* map of the randomised model passes (the map changed
completely): counted in ``randomised_constant_passed``, never a Spearman
value and never missing; a non-finite one is counted apart and not compared.

Two views of the same per-image values:

* per method (``by_method``, ``pooled``: the keys and values the stage always
  wrote; with no degenerate map they are bit-identical to the former
  aggregation: same arrays, same order, same :func:`~cxrbench.explain.metrics.perturbation.mean_std`);
* the **common set** (``common``): the (backbone, fold, image) triples where
  every method and the random control has a non-degenerate map, pooled and
  per backbone, so that methods are compared on the same images.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from cxrbench.explain.metrics import perturbation as EM
from cxrbench.explain.metrics import properties as MP

RANDOM = "random"
EDGE = "edge"                                    # the Sobel edge map of the input: a control of image contrast
LUNG_AREA = "lung_area"
SANITY = "sanity_spearman"
PIXEL_SCHEMES = ("threshold", "pixels")          # zero pixels (the paper's black), 10 levels


def specs(fills=EM.FILLS, region_orders=EM.ORDERS) -> list[dict]:
    """The perturbations the stage scores, each a dict ``metric``, ``scheme``, ``order``, ``fill``: threshold
    and pixel deletion (black, both orders), then region perturbation with each of ``fills`` in
    ``region_orders``. Metric names: ``aoppc_{scheme}_{order}``, ``aoppc_region_{fill}_{order}``."""
    out = [{"metric": f"aoppc_{s}_{o}", "scheme": s, "order": o, "fill": "black"}
           for s in PIXEL_SCHEMES for o in EM.ORDERS]
    for f in fills:
        if f not in EM.FILLS:
            raise ValueError(f"fill {f!r} is not one of {EM.FILLS}")
        out += [{"metric": f"aoppc_region_{f}_{o}", "scheme": "region", "order": o, "fill": f}
                for o in region_orders]
    return out


AOPPC_METRICS = tuple(sp["metric"] for sp in specs())
COMMON_METRICS = AOPPC_METRICS + ("lung_mass",) + MP.PROPERTIES
SANITY_COUNTS = ("images", "compared", "randomised_constant_passed", "randomised_nonfinite", "excluded_degenerate")

DEFINITIONS = {
    "maps": "per method: maps per status (ok; constant: one value everywhere; nonfinite: a NaN or infinity); "
            "excluded_degenerate = constant + nonfinite maps, left out of every metric of the method "
            "(each metric's n counts the ok maps)",
    "sanity": "model-randomisation check on the first explain.sanity_images images: compared = pairs with both "
              "maps ok (sanity_spearman's values); randomised_constant_passed = the randomised model's map is "
              "constant, i.e. changed completely: passes, no Spearman; randomised_nonfinite: not compared; "
              "excluded_degenerate: the trained model's map is degenerate",
    "gain": "per image: AOPPC of the method minus AOPPC of the random map on the same image (MoRF; 0 = no better "
            "than a random pixel ranking = chance), over the common set; mean and a percentile bootstrap CI "
            "resampling patients (stats.resamples, stats.seed, stats.confidence); n = (backbone, fold, image) "
            "triples",
    "agreement": "rank agreement of the methods (random excluded) across the region-perturbation fills, on the "
                 "common set: Kendall's W over the fills (1 = same ranking under every fill) and Kendall's tau per "
                 "pair of fills",
    "removed_share": "threshold scheme (eq. 12), MoRF: mean share of the image removed at each level x, per method",
    "common": "the (backbone, fold, image) set where every method of explain.methods and the random control has "
              "a non-degenerate map; pooled over it and per backbone (common set within the backbone); "
              "lung_mass over its images with a lung mask; sanity_spearman is not part of it (its own images)",
}


def fold_key(fold) -> str:
    return f"f{fold}"


def new_scores() -> dict:
    """The accumulator: ``blocks`` (per-image values in the order scored), ``status`` per (method, backbone,
    fold key), ``sanity`` counts per (method, backbone, fold key) and ``groups`` (the patient of each image
    per (backbone, fold key): the bootstrap's resampling unit)."""
    return {"blocks": [], "status": {}, "sanity": {}, "groups": {}}


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
               curves: Callable[[np.ndarray, np.ndarray, dict], dict], perturbations: list[dict] | None = None,
               groups=None) -> list[dict]:
    """Score every map of one (backbone, fold) into ``scores``; returns the rows of curves_all.csv.

    ``maps``: method -> float32 (N, H, W) maps (the random control included, named :data:`RANDOM`);
    ``masks``: (N, H, W) lung masks; ``randomised``: method -> the randomised model's maps of the first
    images; ``curves(rows, maps_of_rows, spec)`` -> :func:`~cxrbench.explain.metrics.perturbation.perturbation_curves`'s
    dict for those rows under one of ``perturbations`` (:func:`specs`; default all), the stage's device
    work; ``groups``: the patient of each image (default: each image its own). Degenerate maps are never
    passed to ``curves`` nor to any other metric.
    """
    perturbations = specs() if perturbations is None else perturbations
    has_mask = np.asarray(masks).reshape(len(masks), -1).any(1)
    groups = np.arange(len(masks)) if groups is None else np.asarray(groups)
    if len(groups) != len(masks):
        raise ValueError(f"{backbone} {fold_key(fold)}: {len(groups)} patient groups for {len(masks)} images")
    scores["groups"][(backbone, fold_key(fold))] = groups
    rows = []
    for m, a in maps.items():
        status = EM.map_status(a)
        if len(status) != len(masks):
            raise ValueError(f"{m} {backbone} {fold_key(fold)}: {len(status)} maps for {len(masks)} images")
        add_status(scores, m, backbone, fold, status)
        ok = status == "ok"
        keep = np.flatnonzero(ok)
        for sp in perturbations:
            values = np.zeros(0)
            if len(keep):
                r = curves(keep, a[keep], sp)
                values = r["aoppc"]
                for lvl in range(r["drop"].shape[1]):
                    x_lvl = EM.levels(sp["scheme"], r["drop"].shape[1])[lvl]
                    rows.append({"method": m, "backbone": backbone, "fold": fold, "scheme": sp["scheme"],
                                 "fill": sp["fill"], "order": sp["order"], "level": float(x_lvl),
                                 "p_drop": float(r["drop"][:, lvl].mean()),
                                 "removed": float(r["removed"][:, lvl].mean()), "images": int(len(keep))})
            add_values(scores, m, backbone, fold, sp["metric"], values, keep)
        if has_mask.any():
            sel = np.flatnonzero(has_mask & ok)
            values = EM.lung_mass_fraction(a[sel], masks[sel]) if len(sel) else np.zeros(0)
            add_values(scores, m, backbone, fold, "lung_mass", values, sel)
        for name, values in MP.properties(a[keep]).items():                  # Quantus: sparseness, complexity
            add_values(scores, m, backbone, fold, name, values, keep)
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


PER_IMAGE_COLUMNS = ["method", "backbone", "fold", "image", "path", "group", "metric", "value"]


def per_image_rows(scores: dict, paths: dict | None = None) -> list[dict]:
    """Every per-image value of ``scores`` as long rows: method, backbone, fold, image (row in the fold's npz),
    path (``paths``: (backbone, fold key) -> image paths; else empty), group (patient), metric, value:
    metrics/aoppc_per_image.csv, what the agreement tables and the gate's paired comparison read."""
    rows = []
    for m, bb, fk, metric, values, images in scores["blocks"]:
        grp = scores["groups"].get((bb, fk))
        pth = (paths or {}).get((bb, fk))
        for v, i in zip(values.tolist(), images.tolist()):
            rows.append({"method": m, "backbone": bb, "fold": int(fk[1:]), "image": int(i),
                         "path": "" if pth is None else str(pth[i]), "group": "" if grp is None else str(grp[i]),
                         "metric": metric, "value": float(v)})
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


def _aligned(scores: dict, method: str, metric: str, sets: dict, backbone: str | None = None):
    """Per-image values of ``method`` minus the random map's (same image), over the common set ``sets``,
    with the patient of each image: (gains, patients)."""
    index = {(m, bb, fk, me): (v, i) for m, bb, fk, me, v, i in scores["blocks"] if me == metric}
    gains, patients = [], []
    for (bb, fk), rows in sets.items():
        if backbone is not None and bb != backbone:
            continue
        a, r = index.get((method, bb, fk, metric)), index.get((RANDOM, bb, fk, metric))
        if a is None or r is None or not len(rows):
            continue
        va, vr = dict(zip(a[1].tolist(), a[0])), dict(zip(r[1].tolist(), r[0]))
        grp = scores["groups"].get((bb, fk))
        for i in rows.tolist():
            gains.append(va[i] - vr[i])
            patients.append(str(grp[i]) if grp is not None else f"{bb}|{fk}|{i}")
    return np.asarray(gains, dtype=np.float64), np.asarray(patients, dtype=object)


def gain_ci(gains: np.ndarray, patients: np.ndarray, stats: dict) -> dict:
    """Mean gain over the random map with a percentile bootstrap CI over patients (``stats``: resamples,
    seed, confidence; cxrbench.core.bootstrap). Fewer than 2 patients: the estimate alone, ``ci: null``."""
    from cxrbench.core import bootstrap as B
    out = {"mean": round(float(gains.mean()), 4) if len(gains) else None, "n": int(len(gains)),
           "patients": int(len(set(patients.tolist())))}
    if out["patients"] < 2:
        return {**out, "low": None, "high": None, "ci": "fewer than 2 patients: no interval"}
    ci = B.group_ci(lambda idx: float(gains[idx].mean()), patients, n_boot=int(stats["resamples"]),
                    seed=int(stats["seed"]), confidence=float(stats["confidence"]))
    return {**out, "low": round(ci["low"], 4), "high": round(ci["high"], 4), "confidence": ci["confidence"]}


def kendall_w(ranks: np.ndarray) -> float | None:
    """Kendall's coefficient of concordance of (raters, items) ranks (1 = every rater ranks alike, 0 = no
    agreement); None with fewer than 2 raters or items."""
    m, n = ranks.shape
    if m < 2 or n < 2:
        return None
    r = ranks.sum(0)
    return float(12 * ((r - r.mean()) ** 2).sum() / (m ** 2 * (n ** 3 - n)))


def rank_agreement(table: dict, methods: list, metrics: list) -> dict:
    """Do the perturbations rank the methods alike? Ranks of the methods' mean AOPPC (over one image set:
    the common set, where ranking by AOPPC is ranking by gain over random) under each of ``metrics``:
    Kendall's W over them, and Kendall's tau per pair."""
    from scipy.stats import kendalltau, rankdata
    have = [m for m in methods if all((table.get(f"{m}|{me}") or {}).get("n") for me in metrics)]
    if len(have) < 2 or len(metrics) < 2:
        return {"methods": have, "metrics": list(metrics), "kendall_w": None, "pairs": {},
                "note": "fewer than 2 methods or perturbations with values"}
    means = np.array([[table[f"{m}|{me}"]["mean"] for m in have] for me in metrics], dtype=np.float64)
    ranks = np.vstack([rankdata(-row) for row in means])
    pairs = {f"{a} vs {b}": round(float(kendalltau(means[i], means[j]).statistic), 3)
             for i, a in enumerate(metrics) for j, b in enumerate(metrics) if i < j}
    return {"methods": have, "metrics": list(metrics),
            "ranking": {me: [have[k] for k in np.argsort(ranks[i], kind="stable")] for i, me in enumerate(metrics)},
            "kendall_w": round(kendall_w(ranks), 3), "pairs": pairs}


def gains(scores: dict, methods: list, metrics: list, stats: dict) -> dict:
    """metrics/aoppc.json ``gain``: per metric and method, AOPPC minus the random map's on the same image
    (0 = no better than a random ranking of the pixels), over the common set, pooled and per backbone, mean
    with a bootstrap CI over patients; and the rank agreement of the methods across the region fills."""
    everyone = list(dict.fromkeys(list(methods) + [RANDOM]))
    sets, _, _ = common_images(scores, everyone)
    backbones = list(dict.fromkeys(bb for bb, _ in sets))
    out = {"definition": DEFINITIONS["gain"], "chance": 0.0, "pooled": {}, "by_backbone": {bb: {} for bb in backbones}}
    for metric in metrics:
        for m in methods:
            out["pooled"][f"{m}|{metric}"] = gain_ci(*_aligned(scores, m, metric, sets), stats)
            for bb in backbones:
                out["by_backbone"][bb][f"{m}|{metric}"] = gain_ci(*_aligned(scores, m, metric, sets, bb), stats)
    return out


def removed_share(rows: list[dict]) -> dict:
    """Per method: the mean share of the image each threshold level removes (MoRF; over every scored image,
    weighted by images per fold): how much of eq. 12's score is the map's histogram."""
    acc: dict = {}
    for r in rows:
        if r["scheme"] == "threshold" and r["order"] == "morf":
            a = acc.setdefault(r["method"], {}).setdefault(r["level"], [0.0, 0])
            a[0] += r["removed"] * r["images"]
            a[1] += r["images"]
    return {m: {f"{lvl:.1f}": round(v / n, 4) for lvl, (v, n) in sorted(levels.items(), reverse=True) if n}
            for m, levels in acc.items()}


def summary(scores: dict, methods: list, rows: list[dict] | None = None, stats: dict | None = None,
            fills: list | None = None) -> dict:
    """metrics/aoppc.json's aggregated parts: ``pooled``, ``by_method`` (per method over its own maps),
    ``maps``, ``sanity``, ``common`` (all methods on the same images), and with ``stats`` (bootstrap
    settings) ``gain`` (over the random map, CIs over patients) and ``agreement`` (rank agreement across
    ``fills``); with ``rows`` (the curves) ``removed_share``."""
    out = {"pooled": pooled(scores), "by_method": by_method(scores),
           "maps": {"definition": DEFINITIONS["maps"], "by_method": map_totals(scores)},
           "sanity": {"definition": DEFINITIONS["sanity"], "by_method": sanity_totals(scores)},
           "common": common(scores, methods)}
    if rows is not None:
        out["removed_share"] = {"definition": DEFINITIONS["removed_share"], "by_method": removed_share(rows)}
    if stats is not None:
        metrics = sorted({b[3] for b in scores["blocks"] if b[3].startswith("aoppc_") and b[3].endswith("_morf")},
                         key=list(AOPPC_METRICS).index)
        out["gain"] = gains(scores, methods, metrics, stats)
        region = [f"aoppc_region_{f}_morf" for f in (fills or [])]
        com = out["common"]
        out["agreement"] = {
            "definition": DEFINITIONS["agreement"],
            "pooled": rank_agreement(com["pooled"], methods, region),
            "by_backbone": {bb: rank_agreement(t, methods, region) for bb, t in com["by_backbone"].items()}}
    return out


def _cell(table: dict, m: str, metric: str) -> str:
    v = table.get(f"{m}|{metric}")
    return f"{v['mean']:.3f} ± {v['std']:.3f} (n={v['n']})" if v and v["n"] else "-"


def _gain_cell(table: dict, m: str, metric: str) -> str:
    v = table.get(f"{m}|{metric}")
    if not v or not v["n"]:
        return "-"
    ci = f" [{v['low']:+.3f}, {v['high']:+.3f}]" if v.get("low") is not None else ""
    return f"{v['mean']:+.3f}{ci}"


def _region_metrics(result: dict) -> list[str]:
    return [k.split("|", 1)[1] for k in result["pooled"] if k.startswith(f"{RANDOM}|aoppc_region_")
            and k.endswith("_morf")]


def markdown(result: dict, methods: list, reference: dict, region: str = "") -> str:
    """metrics/aoppc_table.md from :func:`summary`'s dict: the per-method table (with its map counts), the
    gains over the random map per perturbation with CIs and the rank agreement across fills, the removed
    share per threshold level, the randomisation check, the common-set tables pooled and per backbone.
    ``region``: a sentence stating the region perturbation's patch and steps."""
    methods = list(methods) + [RANDOM]
    pooled_, maps = result["pooled"], result["maps"]["by_method"]
    region_metrics = _region_metrics(result)
    fill = lambda me: me[len("aoppc_region_"):-len("_morf")]  # noqa: E731
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
        metrics = ["aoppc_threshold_morf", "aoppc_pixels_morf"] + region_metrics
        heads = ["threshold", "pixel deletion"] + [f"region, {fill(me)}" for me in region_metrics]
        n = result["common"]["images"]["pooled"]
        lines += ["", f"Gain over the random map (AOPPC minus the random map's on the same image; chance = 0), MoRF, "
                  f"on the common set ({n} images), mean [95 % CI, bootstrap over patients]. {region}", "",
                  "| method | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        for m in methods[:-1]:
            lines.append(f"| {m} | " + " | ".join(_gain_cell(g, m, me) for me in metrics) + " |")
        ag = result.get("agreement", {}).get("pooled")
        if ag and ag.get("kendall_w") is not None:
            lines += ["", f"Rank agreement of the {len(ag['methods'])} methods across the fills "
                      f"({', '.join(fill(me) for me in ag['metrics'])}): Kendall's W = {ag['kendall_w']:.3f} "
                      "(1 = the same ranking under every fill); Kendall's tau per pair: "
                      + ", ".join(f"{k.replace('aoppc_region_', '').replace('_morf', '')} {v:+.3f}"
                                  for k, v in ag["pairs"].items()) + "."]
            for me, order in ag["ranking"].items():
                lines.append(f"- {fill(me)}: " + " > ".join(order))
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
            + "".join(f"region {fill(me)} | " for me in region_metrics)
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
