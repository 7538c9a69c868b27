"""Stage aoppc: explanation metrics of every backbone x fold of data/attributions.

Per method, backbone and fold (mean +- std over images): AOPPC with the
paper's threshold levels (CXR-Net eq. 12), pixel deletion (the top 10 %, ...,
100 % of pixels zeroed) and region perturbation (Samek et al. 2017: patches,
``aoppc.region.steps`` steps) under each fill of ``aoppc.region.fills`` (black,
blur, ROAD's noisy linear imputation); the least-important-first (LeRF)
control; the random-map baseline and each method's gain over it per image
(bootstrap CI over patients); the rank agreement of the methods across fills;
the share of the image each threshold level removes; the share of attribution
mass inside the lung mask; the Spearman rank correlation with the maps of a
weight-randomised model. Degenerate maps (constant or non-finite) are a status,
not a score, and the common-set tables compare all methods on the same
(backbone, fold, image) set (cxrbench/explain/metrics/scoring.py, aoppc_tables.py).

Writes metrics/aoppc.json, metrics/aoppc_table.md (next to CXR-Net's values),
plots/aoppc/curves.csv (method, level, p_drop: threshold MoRF, pooled),
plots/aoppc/curves_all.csv (every backbone/fold/perturbation/order),
plots/aoppc/curves.png and plots/attributions/{backbone}.png (first fold).
"""

from pathlib import Path

import pandas as pd

from cxrbench.classify import training
from cxrbench.core import params as P
from cxrbench.core import runtime
from cxrbench.core.io import write_csv, write_json, write_text
from cxrbench.data import confounder
from cxrbench.data.cache import Cache
from cxrbench.explain import attribution as A
from cxrbench.explain import plots as AP
from cxrbench.explain.metrics import scoring as AS
from cxrbench.explain.metrics import tables as AT


def main() -> None:
    params = P.stage_params(__doc__)
    checkpoint_file = training.checkpoint_file(params)
    methods = A.validate(params).methods
    s = AS.validate(params)
    backbones = P.check_nonempty_list("train.backbones", P.section(params, "train.backbones"))
    folds = P.check_nonempty_list("train.folds", P.section(params, "train.folds"))
    rt = runtime.configure()
    device = runtime.device()
    cache = Cache("data/cache", "data/index.csv")
    confounder.apply(cache)                                 # the planted shortcut (confounder.enabled; else a no-op)

    scores, curves, status, side, drawn = AT.new_scores(), [], {}, None, set()
    for backbone in backbones:
        for fold in folds:
            z, att = AS.load_fold(backbone, fold)
            if "skipped" in z.files:
                status.setdefault(backbone, {})[f"f{fold}"] = {"skipped": str(z["skipped"])}
                print(f"aoppc {backbone} fold {fold}: skipped ({z['skipped']})")
                continue
            model, meta = A.load_classifier(backbone, fold, device, checkpoint_file)
            x = A.classifier_input(cache.images[z["rows"]], meta, device, z["masks"])
            side = int(x.shape[-1])
            groups = cache.index["group"].to_numpy()[z["rows"]]
            curves += AS.score_model(scores, backbone, fold, methods, s, x, z, model, groups)
            status.setdefault(backbone, {})[f"f{fold}"] = AT.fold_status(att["methods"], scores, backbone, fold)
            bad = {m: st for m, st in status[backbone][f"f{fold}"].items() if st != "ok"}
            print(f"aoppc {backbone} fold {fold}: {len(x)} images, {len(methods)} methods"
                  + "".join(f"; {m}: {st if isinstance(st, str) else 'failed'}" for m, st in bad.items()), flush=True)
            if backbone not in drawn:                      # the first scored fold of each backbone
                drawn.add(backbone)
                AP.attribution_panels(backbone, fold, x[:3].mean(1, keepdim=True).cpu().numpy(), z, methods,
                                      Path(f"plots/attributions/{backbone}.png"))

    result = AT.summary(scores, methods, rows=curves, stats=s.stats, fills=s.fills)
    region = AS.region_sentence(s, side) if side else ""
    write_json("metrics/aoppc.json", {
        "definition": {"aoppc_threshold_morf": "CXR-Net eq. 12: zero pixels with min-max importance >= x, "
                                               "x = 1.0..0.1; mean over levels of p(orig) - p(perturbed)",
                       "aoppc_pixels_morf": "pixel deletion: zero the top 10..100 % pixels by importance (ties in a "
                                            "seeded random order); the last level blanks the image for every map",
                       "aoppc_region_{fill}_morf": region or "region perturbation (no map scored)",
                       "*_lerf": "same levels, least important first (control)",
                       "random": "uniform random map (control)",
                       "lung_mass": "share of |attribution| inside the lung mask; lung_area: mask share of image",
                       "sanity_spearman": "Spearman of |map| vs. |map| of a weight-randomised model (low = passes)",
                       "importance": s.importance},
        "region": AS.perturbation_settings(s, side) if side else None,
        "runtime": rt, "pooled": result["pooled"], "by_method": result["by_method"], "status": status,
        **{k: result[k] for k in ("maps", "sanity", "common", "gain", "agreement", "removed_share")}})

    frame = pd.DataFrame(curves)
    main_curve = (frame[(frame["scheme"] == "threshold") & (frame["order"] == "morf")]
                  .groupby(["method", "level"], as_index=False)["p_drop"].mean()) if len(frame) else \
        pd.DataFrame(columns=["method", "level", "p_drop"])
    write_csv("plots/aoppc/curves.csv", main_curve[["method", "level", "p_drop"]])
    if len(frame):
        write_csv("plots/aoppc/curves_all.csv", frame)
    AP.curves_figure(frame, "plots/aoppc/curves.png")

    table = AT.markdown(result, methods, s.reference, region)
    write_text("metrics/aoppc_table.md", table)
    print(table, end="")


if __name__ == "__main__":
    main()
