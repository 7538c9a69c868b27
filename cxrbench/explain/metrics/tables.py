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
from cxrbench.explain.metrics.across_models import interval as across_models_ci
from cxrbench.explain.metrics.across_models import lead as _lead_across_models
from cxrbench.explain.metrics.across_models import patient_weights as _patient_weights

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
            "than a random pixel ranking = chance), over the common set; mean = patient-weighted (each patient's "
            "mean gain, then their mean; image_mean: each image once) with a cluster bootstrap-t CI over patients "
            "(stats.resamples, stats.seed, stats.confidence), p against 0 and p_adjusted across the table's "
            "comparisons (stats.multiplicity); at_chance: an equivalence test (TOST) puts the gain within "
            "+- stats.equivalence.gain of 0; n = (backbone, fold, image) triples; variance: test patients only",
    "agreement": "rank agreement of the methods (random excluded) across the region-perturbation fills, on the "
                 "common set, ranking by patient-weighted mean gain: Kendall's W over the fills (1 = same ranking "
                 "under every fill) with a bootstrap CI over patients (stats.method), and Kendall's tau per pair",
    "winners": "per metric: the method with the highest patient-weighted gain and a paired interval (same images, "
               "cluster bootstrap-t over patients) of its lead over every other method, p adjusted across those "
               "comparisons; clear = ahead of every other method after the adjustment, else tied_with lists "
               "the methods it is not shown to beat",
    "across_models": "the gain and the winners again with the trained models as a source of variance: the "
                     "models of the table (backbone x fold; each fold's model is another training run on other "
                     "data) are resampled, then the patients (one draw shared by the models: they explain the "
                     "same test images), a two-level bootstrap (cxrbench.core.inference.two_level_ci) with a p "
                     "against 0 adjusted across the table; per_model: each model's patient-weighted mean gain, "
                     "sign_agrees: every model's mean has the pooled mean's sign; leader_by_model: the method "
                     "each model alone ranks first. A table with one model has no such interval (no_ci)",
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
    """``method|metric`` -> {mean, std, n, patient_mean, patients} over every block's values concatenated in
    scoring order (``mean``: over images; ``patient_mean``: over patients, :func:`patient_weighted`).

    ``keep(block)`` -> bool mask of the block's values to use (the common set); ``None``: all.
    """
    per: dict = {}
    for block in scores["blocks"]:
        m, bb, fk, metric, v, images = block
        mask = np.ones(len(v), dtype=bool) if keep is None else keep(block)
        grp = scores["groups"].get((bb, fk))
        who = [str(grp[i]) if grp is not None else f"{bb}|{fk}|{i}" for i in np.asarray(images)[mask].tolist()]
        per.setdefault((m, metric), ([], []))
        per[(m, metric)][0].append(v[mask])
        per[(m, metric)][1].extend(who)
    return {f"{m}|{metric}": {**EM.mean_std(np.concatenate(v)), **patient_weighted(np.concatenate(v), np.array(w))}
            for (m, metric), (v, w) in per.items()}


def patient_weighted(values: np.ndarray, patients: np.ndarray) -> dict:
    """``patient_mean`` (each patient's mean over its finite values, then their mean: a patient with 12 images
    counts once) and ``patients``; beside the image-weighted ``mean`` of :func:`~cxrbench.explain.metrics.perturbation.mean_std`."""
    ok = np.isfinite(values)
    if not ok.any():
        return {"patient_mean": None, "patients": 0}
    from cxrbench.core.bootstrap import patient_means
    _, means = patient_means(values[ok], patients[ok])
    return {"patient_mean": round(float(means.mean()), 4), "patients": int(len(means))}


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


def _aligned(scores: dict, method: str, metric: str, sets: dict, backbone: str | None = None,
             models: bool = False):
    """Per-image values of ``method`` minus the random map's (same image), over the common set ``sets``,
    with the patient of each image: (gains, patients); with ``models``, also the model (``backbone|fold``)
    of each value: (gains, patients, models)."""
    index = {(m, bb, fk, me): (v, i) for m, bb, fk, me, v, i in scores["blocks"] if me == metric}
    gains, patients, keys = [], [], []
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
            keys.append(f"{bb}|{fk}")
    out = np.asarray(gains, dtype=np.float64), np.asarray(patients, dtype=object)
    return (*out, np.asarray(keys, dtype=object)) if models else out




def gain_ci(gains: np.ndarray, patients: np.ndarray, stats: dict, family: int = 1) -> dict:
    """Patient-weighted mean gain over the random map (each patient's mean gain, then their mean) with a
    cluster bootstrap-t CI over patients (:func:`cxrbench.core.bootstrap.patient_mean_ci`), its p against 0
    and an equivalence test (TOST) against the margin ``stats.equivalence.gain``: ``at_chance`` only when
    the test shows the gain within the margin. ``image_mean``: the mean over images (each image once).
    ``family``: the comparisons its p is adjusted across (:func:`cxrbench.core.inference.resamples_for`)."""
    from cxrbench.core import bootstrap as B
    from cxrbench.core.inference import resamples_for
    out = {"n": int(len(gains)), "patients": int(len(set(patients.tolist()))),
           "image_mean": round(float(gains.mean()), 4) if len(gains) else None}
    if not len(gains):
        return {"mean": None, **out, "low": None, "high": None, "status": "no_ci", "reason": "no image"}
    margin = float(stats.get("equivalence", B.DEFAULT_EQUIVALENCE)["gain"])
    ci = B.patient_mean_ci(gains, patients, n_boot=resamples_for(family, stats), seed=int(stats["seed"]),
                           confidence=float(stats["confidence"]),
                           min_valid_share=float(stats.get("min_valid_share", B.DEFAULT_MIN_VALID)),
                           null=0.0, equivalence=(-margin, margin))
    r = lambda v: None if v is None else round(float(v), 4)  # noqa: E731
    entry = {"mean": r(ci["estimate"]), **out, "low": r(ci["low"]), "high": r(ci["high"]), "status": ci["status"],
             "confidence": ci["confidence"], "undefined": ci["undefined"]}
    if ci["status"] != "ok":
        return {**entry, "reason": ci["reason"]}
    eq = ci["equivalence"]
    return {**entry, "p": round(float(ci["p"]), 4), "at_chance": eq["equivalent"],
            "equivalence": {"margin": margin, "p": round(float(eq["p"]), 4)}}


def kendall_w(ranks: np.ndarray) -> float | None:
    """Kendall's coefficient of concordance of (raters, items) ranks (1 = every rater ranks alike, 0 = no
    agreement); None with fewer than 2 raters or items."""
    m, n = ranks.shape
    if m < 2 or n < 2:
        return None
    r = ranks.sum(0)
    return float(12 * ((r - r.mean()) ** 2).sum() / (m ** 2 * (n ** 3 - n)))


def _gain_matrix(scores: dict, methods: list, metrics: list, sets: dict, backbone: str | None = None):
    """(metrics, methods, images) gains over the common set (same images in the same order for every
    method and metric) and the patient of each image."""
    cube, patients, models = [], None, None
    for me in metrics:
        rows = []
        for m in methods:
            g, pat, models = _aligned(scores, m, me, sets, backbone, models=True)
            if patients is not None and len(pat) != len(patients):
                raise ValueError(f"{m} {me}: {len(pat)} common-set images, other methods {len(patients)}: the "
                                 f"common set must hold the same images for every method")
            rows.append(g)
            patients = pat
        cube.append(rows)
    return np.asarray(cube, dtype=np.float64), patients, models


def rank_agreement(scores: dict, methods: list, metrics: list, stats: dict | None, sets: dict,
                   backbone: str | None = None) -> dict:
    """Do the perturbations rank the methods alike? Ranks of the methods' patient-weighted mean gain over
    the random map (on the common set) under each of ``metrics``: Kendall's W over them with a bootstrap CI
    over patients (``stats.method``), and Kendall's tau per pair."""
    from scipy.stats import kendalltau, rankdata
    from cxrbench.core import bootstrap as B
    cube, patients, _ = (_gain_matrix(scores, methods, metrics, sets, backbone) if metrics
                         else (np.zeros((0, 0, 0)), None, None))
    if len(methods) < 2 or len(metrics) < 2 or cube.shape[-1] == 0:
        return {"methods": list(methods), "metrics": list(metrics), "kendall_w": None, "pairs": {},
                "note": "fewer than 2 methods, perturbations or images with values"}
    w = _patient_weights(patients)

    def means_of(idx: np.ndarray) -> np.ndarray:
        return (cube[:, :, idx] * w[idx]).sum(-1) / w[idx].sum()

    def w_of(idx: np.ndarray) -> float:
        return kendall_w(np.vstack([rankdata(-row) for row in means_of(idx)]))

    means = means_of(np.arange(cube.shape[-1]))
    ranks = np.vstack([rankdata(-row) for row in means])
    pairs = {f"{a} vs {b}": round(float(kendalltau(means[i], means[j]).statistic), 3)
             for i, a in enumerate(metrics) for j, b in enumerate(metrics) if i < j}
    out = {"methods": list(methods), "metrics": list(metrics),
           "ranking": {me: [methods[k] for k in np.argsort(ranks[i], kind="stable")] for i, me in enumerate(metrics)},
           "kendall_w": round(kendall_w(ranks), 3), "pairs": pairs, "patients": int(len(set(patients.tolist())))}
    if stats is not None and out["patients"] >= 2:
        ci = B.group_ci(w_of, patients, **B.options(stats))
        out["kendall_w_ci"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in ci.items()
                               if k in ("low", "high", "status", "reason", "confidence", "undefined", "method")}
    return out


def winners(scores: dict, methods: list, metrics: list, stats: dict, sets: dict) -> dict:
    """Per metric, the method with the highest patient-weighted gain and a paired interval of its lead
    over every other method (differences on the same images, cluster bootstrap-t over patients), Holm /
    BH adjusted across the comparisons of that metric (``stats.multiplicity``). ``clear``: the leader is
    ahead of every other method after the adjustment; otherwise the methods it is not ahead of are
    ``tied_with``: no "winner" is stated. With 2 or more models, ``across_models`` asks the same of the lead
    with the models as a source of variance too (:func:`across_models_ci` of the paired differences, adjusted
    likewise) and names the leader of each model alone: a winner that another model overturns is not clear
    there."""
    from cxrbench.core import bootstrap as B
    from cxrbench.core.inference import adjust, resamples_for
    out = {}
    for me in metrics:
        cube, patients, models = _gain_matrix(scores, methods, [me], sets)
        if cube.shape[-1] == 0 or len(methods) < 2:
            continue
        w = _patient_weights(patients)
        means = (cube[0] * w).sum(-1) / w.sum()
        lead = int(np.argmax(means))
        vs = {}
        for k, m in enumerate(methods):
            if k != lead:
                ci = B.patient_mean_ci(cube[0, lead] - cube[0, k], patients,
                                       n_boot=resamples_for(len(methods) - 1, stats),
                                       seed=int(stats["seed"]), confidence=float(stats["confidence"]),
                                       min_valid_share=float(stats.get("min_valid_share", B.DEFAULT_MIN_VALID)),
                                       null=0.0)
                vs[m] = {k2: (round(v, 4) if isinstance(v, float) else v) for k2, v in ci.items()
                         if k2 in ("estimate", "low", "high", "p", "status", "reason", "groups")}
        adjust(list(vs.values()), stats.get("multiplicity", "holm"), 1 - float(stats["confidence"]))
        tied = [m for m, v in vs.items() if not v.get("significant")]
        out[me] = {"leader": methods[lead], "vs": vs, "clear": not tied, "tied_with": tied}
        if len(set(models.tolist())) >= 2:
            out[me]["across_models"] = _lead_across_models(cube[0], patients, models, methods, lead, stats)
    return out


def gains(scores: dict, methods: list, metrics: list, stats: dict) -> dict:
    """metrics/aoppc.json ``gain``: per metric and method, AOPPC minus the random map's on the same image
    (0 = no better than a random ranking of the pixels), over the common set, pooled and per backbone,
    patient-weighted mean with a cluster bootstrap-t CI over patients and a p against 0, adjusted across
    each table's comparisons (``stats.multiplicity``)."""
    from cxrbench.core.inference import adjust
    everyone = list(dict.fromkeys(list(methods) + [RANDOM]))
    sets, _, _ = common_images(scores, everyone)
    backbones = list(dict.fromkeys(bb for bb, _ in sets))
    out = {"definition": DEFINITIONS["gain"], "chance": 0.0, "pooled": {}, "by_backbone": {bb: {} for bb in backbones},
           "variance": "test patients only (one training seed per model: training variance is not in the "
                       "intervals)"}
    family = len(metrics) * len(methods)                 # the comparisons each table's p is adjusted across
    for metric in metrics:
        for m in methods:
            out["pooled"][f"{m}|{metric}"] = gain_ci(*_aligned(scores, m, metric, sets), stats, family)
            for bb in backbones:
                out["by_backbone"][bb][f"{m}|{metric}"] = gain_ci(*_aligned(scores, m, metric, sets, bb), stats,
                                                                  family)
    alpha = 1 - float(stats["confidence"])
    adjust(list(out["pooled"].values()), stats.get("multiplicity", "holm"), alpha)
    for bb in backbones:
        adjust(list(out["by_backbone"][bb].values()), stats.get("multiplicity", "holm"), alpha)
    out["across_models"] = across_models(scores, methods, metrics, stats, sets, backbones)
    return out


def across_models(scores: dict, methods: list, metrics: list, stats: dict, sets: dict, backbones: list) -> dict:
    """metrics/aoppc.json ``gain.across_models``: the gain table again with a two-level interval over models and
    patients (:func:`across_models_ci`), pooled and per backbone, adjusted across each table; tables with one
    model are left out (``note``)."""
    from cxrbench.core.inference import adjust
    alpha = 1 - float(stats["confidence"])
    out = {"definition": DEFINITIONS["across_models"], "pooled": {}, "by_backbone": {}}
    n_models = lambda bb=None: len({k for k in sets if bb is None or k[0] == bb})  # noqa: E731
    tables = ([(None, out["pooled"])] if n_models() >= 2 else []) + \
             [(bb, out["by_backbone"].setdefault(bb, {})) for bb in backbones if n_models(bb) >= 2]
    for bb, table in tables:
        for metric in metrics:
            for m in methods:
                table[f"{m}|{metric}"] = across_models_ci(*_aligned(scores, m, metric, sets, bb, models=True), stats)
        adjust(list(table.values()), stats.get("multiplicity", "holm"), alpha)
    if not tables:
        out["note"] = "one model per table: no interval over models"
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
        sets, _, _ = common_images(scores, list(dict.fromkeys(list(methods) + [RANDOM])))
        backbones = list(dict.fromkeys(bb for bb, _ in sets))
        out["agreement"] = {
            "definition": DEFINITIONS["agreement"],
            "pooled": rank_agreement(scores, methods, region, stats, sets),
            "by_backbone": {bb: rank_agreement(scores, methods, region, None, sets, bb) for bb in backbones}}
        out["winners"] = {"definition": DEFINITIONS["winners"], "by_metric": winners(scores, methods, metrics, stats, sets)}
    return out
