"""The reliability stage's run: robustness of every method (Captum max-sensitivity and infidelity, with the
random and Sobel edge controls), the agreement of every metric on the methods' ranking (with the aoppc
stage's per-image scores), and the repeatability of the maps across the models of two folds beside the
randomised-model similarity (:mod:`cxrbench.explain.reliability`, :mod:`cxrbench.explain.metrics.agreement`).

Writes ``core.paths.RELIABILITY`` (JSON), ``RELIABILITY_MD`` and ``RELIABILITY_PER_IMAGE`` (every per-image
robustness score, long form, as ``AOPPC_PER_IMAGE``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrbench.core import bootstrap, paths, timing
from cxrbench.core.io import read_json, write_csv, write_json, write_text
from cxrbench.explain import reliability as RL
from cxrbench.explain import runner as A
from cxrbench.explain.metrics import agreement as AG
from cxrbench.explain.metrics import perturbation as EM
from cxrbench.explain.metrics import robustness as RB
from cxrbench.explain.metrics import scoring as AS


def _metric_fns(cfg, sa, side: int, max_batch: int) -> dict:
    """metric -> g(net, inputs, maps, target) -> (N,) for the resilience tests; NaN where a map is degenerate."""
    kw = AS.perturbation_settings(sa, side)

    def safe(g):
        def run(net, xx, maps, t):
            ok = np.flatnonzero(EM.map_status(maps) == "ok")
            out = np.full(len(maps), np.nan)
            if len(ok):
                sel = torch.as_tensor(ok, device=xx.device)
                out[ok] = g(net, xx[sel], maps[ok], t[sel])
            return out
        return run
    fns = {"infidelity": lambda net, xx, m, t: RB.infidelity(net, xx, m, t, cfg.noise, cfg.infidelity_samples,
                                                              cfg.seed, max_batch),
           "aoppc_pixels_morf": lambda net, xx, m, t: EM.perturbation_curves(
               net, xx, m, t, scheme="pixels", order="morf", mode=sa.importance,
               images_per_batch=sa.images_per_batch, seed=sa.seed)["aoppc"],
           "aoppc_region_blur_morf": lambda net, xx, m, t: EM.perturbation_curves(
               net, xx, m, t, scheme="region", order="morf", mode=sa.importance, images_per_batch=sa.images_per_batch,
               **{**kw, "fill": "blur"})["aoppc"]}
    return {name: safe(fns[name]) for name in cfg.resilience_metrics}


def _resilience(cfg, s, sa, bb, model, x, target, max_batch) -> list[dict]:
    prepared: dict = {}

    def explainer(net, method):
        if id(net) not in prepared:
            prepared[id(net)] = A.prepare_for_attribution(net, x)[0]
        return A.make(method, net, prepared[id(net)], s, max_batch, bb).attribute
    return RL.resilience_rows(cfg, model, x, target, explainer, _metric_fns(cfg, sa, int(x.shape[-1]), max_batch))


def _robustness(params, cfg, s, bb, k, z, cache, device, group_of) -> list[dict]:
    n = min(cfg.images, len(z["rows"]))
    model, meta = A.load_classifier(params, bb, k, device)
    x = A.classifier_input(cache.images[z["rows"][:n]], meta, device, z["masks"][:n])
    target = torch.as_tensor(z["target"][:n], device=device).long()
    max_batch = int(s.max_batch or A.estimate_max_batch(model, x, s.memory_fraction))
    prepared, _ = A.prepare_for_attribution(model, x)
    have = [m for m in cfg.methods if m in z.files]
    explainers = {m: A.make(m, model, prepared, s, max_batch, bb).attribute
                  for m in cfg.sensitivity_methods if m in have}
    draws = iter(range(cfg.seed * 1_000_003, 2 ** 62))
    explainers["random"] = lambda inp, tg: torch.as_tensor(RB.random_map((len(inp),) + tuple(inp.shape[-2:]),
                                                                         next(draws)))
    explainers["edge"] = lambda inp, tg: torch.as_tensor(RB.edge_map(inp.detach().cpu().numpy()))
    stored = {m: EM.stored_maps(z, m)[:n] for m in have}
    stored["random"] = EM.random_maps((n,) + tuple(x.shape[-2:]), cfg.seed + int(k))
    stored["edge"] = RB.edge_map(x.detach().cpu().numpy())
    rows = RL.robustness_rows(cfg, model, x, target, stored, explainers, max_batch)
    if cfg.resilience_methods:
        rows += [{**r, "metric": f"{r['metric']}@{r['test']}"}
                 for r in _resilience(cfg, s, AS.validate(params), bb, model, x, target, max_batch)]
    image_paths = z["paths"][:n].astype(str)
    for r in rows:
        r.update(backbone=bb, fold=int(k), path=image_paths[r["image"]],
                 group=group_of.get(image_paths[r["image"]], image_paths[r["image"]]))
    return rows


def repeat_pair(params, cfg, s, bb, za, zb, ka, pair: str, cache, device, group_of) -> list[dict]:
    """Repeatability rows of two models' stored maps of ``bb`` (``za``, ``zb``: attribute-stage files; model A is
    fold ``ka`` of the current folder's run, whose randomised copy is the control), on the images both explain;
    each row is labelled ``pair`` (e.g. ``0 vs 1``: two folds; or two seeds of one fold). [] when either file
    records a skipped model or they share no image."""
    if "skipped" in za.files or "skipped" in zb.files:
        return []
    pa, pb = za["paths"].astype(str), zb["paths"].astype(str)
    in_b = set(pb.tolist())
    common = [p for p in pa if p in in_b]
    ia = np.array([list(pa).index(p) for p in common], dtype=int)
    ib = np.array([list(pb).index(p) for p in common], dtype=int)
    methods = [m for m in cfg.methods if m in za.files]
    side = int(EM.stored_maps(za, methods[0]).shape[-1]) if methods else 0
    if not methods or not len(common):
        return []
    model, meta = A.load_classifier(params, bb, ka, device)
    x = A.classifier_input(cache.images[za["rows"]], meta, "cpu", za["masks"])       # model A's input, host
    cam_side = RL.feature_side(model, A.target_layer(model, bb, s.target_layers)[1], x[:1].to(device))
    keep_all = RL.support(x.numpy(), side)                     # where the model's input is not 0
    maps_a = {m: EM.stored_maps(za, m)[ia] for m in methods}
    maps_b = {m: EM.stored_maps(zb, m)[ib] for m in methods if m in zb.files}
    rand_a = {m: EM.stored_maps(za, f"rand__{m}") for m in methods if f"rand__{m}" in za.files}
    rows = RL.repeatability_rows(maps_a, maps_b, rand_a, keep_all[ia], keep_all, cam_side)
    for r in rows:
        p = common[r["image"]] if r["comparison"] == "repeat" else pa[r["image"]]
        r.update(backbone=bb, folds=pair, path=p, group=group_of.get(p, p), cam_side=cam_side)
    return rows


def model_auroc(backbone: str, fold, label: str) -> float | None:
    """The classifier's held-out test AUROC for ``label`` (evaluate stage: metrics/eval/{backbone}-f{fold}.json),
    None when it is not there: how good each of the two compared models is."""
    path = Path(paths.EVAL_METRICS) / f"{backbone}-f{fold}.json"
    if not path.is_file():
        return None
    v = ((read_json(path).get("test") or {}).get("auroc") or {}).get(label)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def run_stage(params: dict) -> None:
    """Robustness per model, agreement over every metric, repeatability across folds; write and print."""
    cfg = RL.validate(params)
    s, stats, backbones, folds, rt, device, cache, group_of = A.model_stage(params)
    t0 = time.perf_counter()

    rob, rep, skipped, pairs = [], [], {}, {}
    for bb in backbones:
        for k in folds:
            z = np.load(paths.attributions(bb, k), allow_pickle=False)
            if "skipped" in z.files:
                skipped[f"{bb}-f{k}"] = str(z["skipped"])
                continue
            t1 = time.perf_counter()
            with timing.step("robustness", unit="model"):
                rob += _robustness(params, cfg, s, bb, k, z, cache, device, group_of)
            print(f"reliability {bb}-f{k}: robustness in {time.perf_counter() - t1:.1f}s", flush=True)
        for ka, kb in zip(folds[:-1], folds[1:]):
            with timing.step("repeatability", unit="pair of models"):
                za, zb = (np.load(paths.attributions(bb, k), allow_pickle=False) for k in (ka, kb))
                rows = repeat_pair(params, cfg, s, bb, za, zb, ka, f"{ka} vs {kb}", cache, device, group_of)
            rep += rows
            if rows:
                label = str(za["target_name"][0])
                pairs[f"{bb} f{ka} vs f{kb}"] = {"label": label, "test_auroc": [model_auroc(bb, ka, label),
                                                                                 model_auroc(bb, kb, label)],
                                                 "cam_side": int(rows[0]["cam_side"])}
    every = pd.DataFrame(rob)
    res_frame = every[every["metric"].str.contains("@")] if len(every) else every
    if len(res_frame):
        res_frame = res_frame.assign(metric=res_frame["metric"].str.split("@").str[0])
    rob_frame = pd.DataFrame(every[~every["metric"].str.contains("@")] if len(every) else [],
                             columns=["method", "backbone", "fold", "image", "path", "group", "metric", "status",
                                      "value"])
    rep_frame = pd.DataFrame(rep)

    per_image = pd.read_csv(paths.AOPPC_PER_IMAGE, keep_default_na=False)
    per_image = per_image.assign(value=pd.to_numeric(per_image["value"], errors="coerce"))
    robust_ok = rob_frame[rob_frame["status"] == "ok"].drop(columns="status")
    methods = list(dict.fromkeys([m for m in cfg.methods] + list(RL.CONTROLS)))
    # every explained image, by the metrics that cover them all; robustness (reliability.images per model) beside
    # it, on the images it was scored on, when it covers fewer
    agreement = AG.over_covered_items(per_image, robust_ok, methods, cfg.agreement_metrics, stats)
    with_robustness = None
    if agreement["metrics_on_fewer_items"]:
        both = pd.concat([per_image, robust_ok], ignore_index=True)
        kept, metrics_left = AG.select(both, methods, cfg.agreement_metrics)
        with_robustness = AG.agreement(both, methods, kept, stats)
        with_robustness["metrics_not_scored"] = metrics_left

    robustness = RL.summarise(rob_frame, stats) if len(rob_frame) else {}
    repeat = RL.summarise_repeatability(rep_frame, stats) if len(rep_frame) else {}
    resilience = RL.summarise_resilience(res_frame, stats) if len(res_frame) else {}
    write_csv(paths.RELIABILITY_PER_IMAGE, rob_frame)
    write_json(paths.RELIABILITY, {
        "definition": {
            "sensitivity_max": f"Captum sensitivity_max: max over {cfg.sensitivity_samples} uniform perturbations "
                               f"(L-inf radius {cfg.radius:g}, input units) of ||e(x+d)-e(x)||/||e(x)||; lower = "
                               f"more robust",
            "infidelity": f"Captum infidelity, normalize=True, {cfg.infidelity_samples} Gaussian perturbations "
                          f"(sd {cfg.noise:g}) of the stored maps against P(target); lower = better",
            "controls": "random: uniform noise map (a fresh draw per call); edge: Sobel magnitude of the input",
            "repeatability": "same method, same test image, models of two folds; randomised: trained model vs "
                             "its weight-randomised copy (attribute stage, first explain.sanity_images images); "
                             "zero-input pixels excluded, CAMs at feature-map resolution; flag: repeat < randomised",
            "seeds": "one training seed per fold in this pipeline: repeatability across seeds is measured over "
                     "runs of other seeds by scripts/repeat_seeds.py",
            "resilience": f"MetaQuantus-style, methods {cfg.resilience_methods}: |score change| under input noise "
                          f"(sd {cfg.input_noise:g}) where |P(target) change| <= {cfg.prob_tolerance:g} (lower = "
                          f"resilient), and under multiplicative weight noise (sd {cfg.model_noise:g}) where it is "
                          f"larger (higher = reactive)",
            "ci": f"{bootstrap.method_name(stats['method'])} bootstrap resampling patients (stats.*)"},
        "params": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "runtime": rt, "seconds": round(time.perf_counter() - t0, 1), "skipped": skipped,
        "robustness": robustness, "agreement": agreement, "agreement_with_robustness": with_robustness,
        "repeatability": repeat, "repeatability_models": pairs, "resilience": resilience})
    table = RL.markdown(robustness, agreement, repeat, cfg, resilience, pairs, with_robustness)
    write_text(paths.RELIABILITY_MD, table)
    print(table, end="")

