"""The planted stage: every classifier of the run scored for reliance on the tag (and whether removing it changes
the decision: a strong cue), every attribution map of the attribute stage (and of a weight-randomised copy of
each model) scored against the tag's box, AOPPC on the same tagged images, the methods ranked against AOPPC on
the models that have a randomised control; metrics/planted.{json,md} and plots/planted/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrbench.core import paths
from cxrbench.classify import training
from cxrbench.classify import identity
from cxrbench.core import bootstrap, runtime
from cxrbench.core import params as P
from cxrbench.core.io import read_json, write_json, write_text
from cxrbench.core.plotting import planted_grid
from cxrbench.data import confounder as C
from cxrbench.data.cache import Cache
from cxrbench.explain import attribution as A
from cxrbench.explain.metrics import perturbation as EM
from cxrbench.explain.metrics import scoring as AS
from cxrbench.explain.metrics.localisation import map_status
from cxrbench.studies.planted import controls as CTL
from cxrbench.studies.planted import localisation as LOC
from cxrbench.studies.planted import ranking as RNK
from cxrbench.studies.planted import reliance as REL

OUT_JSON, OUT_MD, PLOTS = paths.PLANTED, paths.PLANTED_MD, Path(paths.PLANTED_PLOTS)
RANKING_PLOT, MAPS_PLOT = Path(paths.PLANTED_RANKING_PLOT), Path(paths.PLANTED_MAPS_PLOT)


def boxes_on(boxes: np.ndarray, cache_side: int, map_side: int) -> np.ndarray:
    """Cache-pixel boxes on a map of another side (explain.interpolate false), grown outwards."""
    if map_side == cache_side:
        return boxes
    s = map_side / cache_side
    return np.stack([np.floor(boxes[:, 0] * s), np.floor(boxes[:, 1] * s),
                     np.ceil(boxes[:, 2] * s), np.ceil(boxes[:, 3] * s)], axis=1).astype(np.int64)


def randomised_maps(params: dict, model, meta: dict, name: str, cache: Cache, plan_rows: pd.DataFrame,
                    methods: list, device, label: str, seed: int) -> dict:
    """Maps of ``methods`` from a weight-randomised copy of ``model`` (classifier ``name``), on the tagged images
    of ``plan_rows`` (stamped as the attribute stage saw them), target ``label``."""
    rnd = EM.randomise_weights(model, seed)
    x = A.classifier_input(C.stamp_plan(cache.images, cache.rows(plan_rows["path"]), plan_rows), meta, device)
    s = A.validate(params)
    target = torch.full((len(x),), list(meta["labels"]).index(label), device=device)
    run = A.attribute_all(methods, rnd, x, target, s, meta["backbone"],
                          log=lambda msg: print(f"  {name} (randomised){msg}"))
    return run.maps


def run(params: dict) -> None:
    """The planted stage on ``params``: with confounder.enabled false, only that status is written."""
    cfg = C.validate(params)
    PLOTS.mkdir(parents=True, exist_ok=True)
    if not cfg["enabled"]:
        note = ("confounder.enabled is false: no tag was planted, so there is no reliance or localisation to "
                "score. Run the `planted` profile (cxrbench profiles run planted).")
        write_json(OUT_JSON, {"enabled": False, "status": "disabled"})
        write_text(OUT_MD, f"### Planted shortcut\n\n{note}\n")
        write_text(PLOTS / "README.txt", note + "\n")
        print("planted: off (confounder.enabled: false)")
        return
    stats = bootstrap.validate(params)
    n_boot, seed, conf = stats["resamples"], stats["seed"], stats["confidence"]
    ci_kw = {"method": stats["method"], "min_valid_share": stats["min_valid_share"]}     # the rest of stats.*
    rt = runtime.configure()
    device = runtime.device()
    backbones, folds = P.section(params, "train.backbones"), P.section(params, "train.folds")
    if P.section(params, "train.input_mode") != "full":
        raise P.ParamError("train.input_mode", "the planted study scores the main classifiers on whole images; "
                                               "set train.input_mode: full in its profile")
    training.checkpoint_file(params)                        # evaluate.checkpoint checked before any work
    seed_loc = P.check_int("explain.seed", P.section(params, "explain.seed"))
    importance = P.section(params, "aoppc.importance")
    strong = P.check_fraction("confounder.strong_cue", P.section(params, "confounder.strong_cue"), open_low=False)
    aop = AS.validate(params)

    cache = Cache(paths.CACHE, paths.INDEX)                # untagged: the conditions stamp their own
    side = int(cache.images.shape[-1])
    plan = C.with_geometry(C.read_plan(), params, side)
    splits = pd.read_csv(paths.SPLITS, keep_default_na=False)
    test = splits[splits["split"] == "test"].reset_index(drop=True)
    by_path = plan.set_index("path")
    test_plan = by_path.loc[test["path"]].reset_index()
    test_plan.attrs.update(plan.attrs)
    rows = cache.rows(test["path"])
    groups = test["group"].to_numpy()
    target = test_plan["target"].to_numpy(bool)
    conds = C.conditions(cache.images, rows, test_plan, params)
    moved = conds["moved"][1]

    # --- 1. reliance and 2. localisation, one model at a time -------------------------------------------------
    reliance, per_model, decisions = {}, {}, {}
    frames, rand_frames, aoppc_frames, grid, grid_inputs = [], [], [], {}, {}
    group_of = dict(zip(splits["path"], splits["group"]))
    for bb in backbones:
        fold_probs, fold_cuts = [], []
        for k in folds:
            name = f"{bb}-f{k}"
            model, meta = identity.load(params, bb, k, device)
            li = list(meta["labels"]).index(cfg["label"])
            probs = {c: training.predict(model, imgs, np.arange(len(imgs)), device, 64)[:, li]
                     for c, (imgs, _) in conds.items()}
            fold_probs.append(probs)
            per_model[name] = REL.reliance(probs, target=target, tagged=test_plan["tagged"].to_numpy(bool),
                                           moved=moved, groups=groups, n_boot=n_boot, seed=seed, confidence=conf,
                                           **ci_kw)
            ev = read_json(paths.run("main", bb, k).eval_metrics)
            cut, rule = float(ev["thresholds"][cfg["label"]]["cut"]), ev.get("cut") or "ge"
            fold_cuts.append(cut)
            decisions[name] = CTL.decision_change(
                probs["as_is"], probs["removed"], cut, target=target, tagged=test_plan["tagged"].to_numpy(bool),
                groups=groups, margin=strong, n_boot=n_boot, seed=seed, confidence=conf, cut_rule=rule,
                **ci_kw)

            npz = np.load(paths.attributions(bb, k), allow_pickle=False)
            if "skipped" in npz.files:
                print(f"planted: {name}: attribution skipped ({npz['skipped']})")
                continue
            map_paths = npz["paths"].astype(str)
            sub = by_path.loc[map_paths]
            on = sub["tagged"].to_numpy(bool)
            if not on.any():
                continue
            methods = [m for m in P.section(params, "explain.methods") if m in npz.files]
            shape = tuple(npz["masks"].shape[-2:])             # every map is at the classifier input's size
            boxes = sub.loc[on, list(C.BOX_COLUMNS)].to_numpy(np.int64)
            b = boxes_on(boxes, side, shape[-1])
            ids = {"backbone": bb, "fold": k, "paths": map_paths[on], "groups": [group_of[p] for p in map_paths[on]]}
            # AOPPC (pixel deletion, most relevant first) on these same tagged images, beside the random map
            x_on = A.classifier_input(C.stamp_plan(cache.images, cache.rows(map_paths[on]), sub[on].reset_index()),
                                      meta, device)
            t_on = torch.full((len(x_on),), li, device=device)
            kw = AS.perturbation_settings(aop, int(x_on.shape[-1]))
            stored = {m: EM.stored_maps(npz, m)[on] for m in methods}
            stored[CTL.CONTROL] = EM.random_maps((int(on.sum()),) + shape, aop.seed + k)
            aoppc_frames.append(CTL.aoppc_per_image(
                lambda r, a: EM.perturbation_curves(model, EM.take(x_on, r), a, EM.take(t_on, r), scheme="pixels",
                                                    order="morf", fill="black", mode=aop.importance,
                                                    images_per_batch=aop.images_per_batch, **kw),
                stored, {m: map_status(v) for m, v in stored.items()}, ids))
            for m in methods:
                maps = EM.importance(EM.stored_maps(npz, m)[on], importance).numpy()
                frames.append(LOC.localisation_frame(maps, b, method=m, rng=np.random.default_rng([seed_loc, k]),
                                                     **ids))
                grid.setdefault((bb, k), {})[m] = maps[:4]
            frames.append(LOC.random_frame(b, shape, seed=seed_loc, **ids))
            # control: the same methods on a weight-randomised copy of the model, which cannot use the tag;
            # a method that still finds the tag there reads the image (the square's edges), not the model
            rmaps = randomised_maps(params, model, meta, name, cache, sub[on].reset_index(), methods, device,
                                    cfg["label"], seed_loc)
            for m, mp in rmaps.items():
                rand_frames.append(LOC.localisation_frame(
                    EM.importance(mp, importance).numpy(), b, method=m, rng=np.random.default_rng([seed_loc, k]),
                    **ids))
            rand_frames.append(LOC.random_frame(b, shape, seed=seed_loc, **ids))
            grid_inputs[(bb, k)] = (C.stamp_plan(cache.images, cache.rows(map_paths[on][:4]),
                                                 sub[on].iloc[:4].reset_index(drop=True)), boxes[:4])
        mean = {c: np.mean([p[c] for p in fold_probs], axis=0) for c in conds}
        reliance[bb] = REL.reliance(mean, target=target, tagged=test_plan["tagged"].to_numpy(bool), moved=moved,
                                    groups=groups, n_boot=n_boot, seed=seed, confidence=conf, **ci_kw)
        decisions[bb] = CTL.decision_change(                   # the folds' mean probability at their mean cut
            mean["as_is"], mean["removed"], float(np.mean(fold_cuts)), target=target,
            tagged=test_plan["tagged"].to_numpy(bool), groups=groups, margin=strong, n_boot=n_boot, seed=seed,
            confidence=conf, cut_rule=rule, **ci_kw)
        print(f"planted: {bb} reliance shown: {reliance[bb]['reliance_shown']}")
    if not frames:
        raise RuntimeError("no attributed test image carries the tag: raise explain.max_images or "
                           "confounder.fraction_target")
    loc = pd.concat(frames, ignore_index=True)
    loc_table = LOC.localisation_table(loc, n_boot=n_boot, seed=seed, confidence=conf, **ci_kw)
    loc_rand = LOC.localisation_table(pd.concat(rand_frames, ignore_index=True), n_boot=n_boot, seed=seed,
                                      confidence=conf, **ci_kw)

    # --- 3. ranking against AOPPC on the same tagged images, of the models that have a randomised control ----
    rand_all = pd.concat(rand_frames, ignore_index=True)
    kept, left_out = CTL.ranked_models(rand_all, [(bb, k) for bb in backbones for k in folds])
    kept_keys = {(str(b), int(k)) for b, k in kept}

    def keep(f: pd.DataFrame) -> pd.DataFrame:
        return f[[(str(b), int(k)) in kept_keys for b, k in zip(f["backbone"], f["fold"])]]

    ranked_loc = keep(loc)
    aoppc_all = pd.concat(aoppc_frames, ignore_index=True)
    if len(ranked_loc):
        loc_ranked = LOC.localisation_table(ranked_loc, n_boot=n_boot, seed=seed, confidence=conf, **ci_kw)
        same = CTL.aoppc_gain_same(keep(aoppc_all), [m for m in P.section(params, "explain.methods")
                                                     if m in set(aoppc_all["method"])])
        ranking = RNK.ranking(loc_ranked, {sc: {m: v for m, v in g.items() if m != "_n"} for sc, g in same.items()},
                              metric="rank")
    else:
        same, ranking = {}, {"metric": "rank", "scopes": {}, "status": "no model with a randomised control"}
    ranking.update(models=[f"{b}-f{k}" for b, k in kept], left_out=left_out, aoppc_images=CTL.SAME_IMAGES_RULE,
                   aoppc_n={sc: g["_n"] for sc, g in same.items()}, aoppc_metric="aoppc_pixels_morf, patient-weighted")

    if ranking["scopes"]:
        RNK.ranking_plot(ranking, RANKING_PLOT)
    # the figure shows the model that relies on the tag most (largest target drop), where a map should find it
    drops = {key: (per_model[f"{key[0]}-f{key[1]}"]["target_drop"].get("estimate") or float("-inf"))
             for key in grid_inputs}
    shown = max(drops, key=drops.get)
    planted_grid(grid_inputs[shown][0], grid[shown], grid_inputs[shown][1], MAPS_PLOT,
                 title=f"{shown[0]} fold {shown[1]} (the model whose score drops most without the tag): "
                       f"tagged test images, maps and the tag's box")
    write_json(OUT_JSON, {"enabled": True, "label": cfg["label"], "removal": cfg["removal"],
                          "tag_px": int(plan.attrs["tag"]), "cache_px": side, "test_images": len(test),
                          "test_tagged": int(test_plan["tagged"].sum()), "reliance": reliance,
                          "decision_change": decisions, "strong_cue_margin": strong,
                          "reliance_per_model": per_model, "localisation": loc_table,
                          "localisation_randomised_model": loc_rand, "ranking": ranking,
                          "runtime": rt})
    md = ["### Planted shortcut", "",
          f"A {plan.attrs['tag']} px square (value {cfg['intensity']}) on {int(test_plan['tagged'].sum())} of "
          f"{len(test)} test images ({int((test_plan['tagged'] & test_plan['target']).sum())} of "
          f"{int(target.sum())} {cfg['label']}); removal: {cfg['removal']}.", "",
          "#### Does the model use the tag?", "", REL.reliance_table(reliance), "",
          decision_markdown(decisions, strong), "",
          "#### Which method finds it?", ""]
    for metric in ("rank", "mass", "pointing", "auroc"):
        md += [LOC.localisation_markdown(loc_table, metric), ""]
    md += ["#### Control: the same methods on a weight-randomised copy of each model", "",
           "A randomised model cannot use the tag: what a method still finds there comes from the image (the "
           "square's edges), not from the model.", "", LOC.localisation_markdown(loc_rand, "rank"), ""]
    md += ["#### Localisation vs AOPPC ranking", "",
           f"On the models with a randomised control ({', '.join(ranking['models']) or 'none'}); AOPPC (pixel "
           f"deletion, most relevant first, patient-weighted) on {CTL.SAME_IMAGES_RULE} ("
           + "; ".join(f"{sc}: {n['images']} images of {n['groups']} patients" for sc, n in ranking['aoppc_n'].items())
           + ")." + "".join(f" Left out: {k}: {v}." for k, v in left_out.items()), "",
           RNK.ranking_markdown(ranking) if ranking["scopes"] else "No ranking: " + ranking["status"] + ".", ""]
    write_text(OUT_MD, "\n".join(md))
    print(f"planted: {OUT_MD}, {OUT_JSON}, {RANKING_PLOT}, {MAPS_PLOT}")


def decision_markdown(decisions: dict, margin: float) -> str:
    """Markdown: per model, the share of tagged target images whose decision flips when the tag is removed."""
    from cxrbench.studies.planted.common import _ci_text

    lines = ["| model | called positive with the tag | without it | decision change [CI] | n / groups | strong cue |",
             "|---|---|---|---|---|---|"]
    for name, d in decisions.items():
        pa, pr = d.get("positive_as_is"), d.get("positive_removed")
        lines.append(f"| {name} | {'–' if pa is None else f'{pa:.3f}'} | {'–' if pr is None else f'{pr:.3f}'} | "
                     f"{_ci_text(d)} | {d.get('n', 0)} / {d.get('groups', 0)} | {'yes' if d['strong_cue'] else 'no'} |")
    lines += ["", f"Decision change: the share of tagged target images called positive at the model's validation "
                  f"cut with the tag and not with it removed (per backbone: the folds' mean probability at their "
                  f"mean cut). Strong cue: its CI low above confounder.strong_cue ({margin:g}); a ranking of the "
                  f"methods by how well they find a tag the model barely uses says little."]
    return "\n".join(lines)
