"""The aoppc stage's run: every backbone x fold of the attribute stage's maps scored, summarised and written.

Per method, backbone and fold (mean +- std over images): AOPPC with the paper's threshold levels (CXR-Net
eq. 12), pixel deletion and region perturbation under each fill of ``aoppc.region.fills``, the LeRF
control, the random-map baseline and each method's gain over it, the rank agreement of the methods across
fills, the share of the image each threshold level removes, the lung mass and the sanity Spearman
(:mod:`cxrbench.explain.metrics.scoring`, :mod:`cxrbench.explain.metrics.tables`). Writes
``core.paths.AOPPC`` and ``AOPPC_MD``, the curves (``AOPPC_CURVES``, ``AOPPC_CURVES_ALL``,
``AOPPC_CURVES_PLOT``) and one attribution panel per backbone (its first scored fold,
``core.paths.attribution_plot``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrbench.classify import fuse, training
from cxrbench.core import params as P
from cxrbench.core import paths, resume, runtime
from cxrbench.core.io import write_csv, write_json, write_text
from cxrbench.data import confounder
from cxrbench.data.cache import Cache
from cxrbench.explain import aoppc_resume as AR
from cxrbench.explain import plots as AP
from cxrbench.explain import runner as A
from cxrbench.explain.metrics import scoring as AS
from cxrbench.explain.metrics import robustness as RB
from cxrbench.explain.metrics import tables as AT
from cxrbench.explain.metrics import tables_text as ATT


# the params sections the stage reads: a saved model part is resumed only when they are unchanged
RESUME_PARAMS = ("aoppc", "explain", "stats", "confounder", "evaluate", "labels", "train", "preprocess", "segment")


def run_stage(params: dict) -> None:
    """Score every model of ``train.backbones`` x ``train.folds``, write the aoppc outputs, print the table."""
    training.checkpoint_file(params)                        # evaluate.checkpoint checked before any work
    methods = A.validate(params).methods
    s = AS.validate(params)
    backbones = P.check_nonempty_list("train.backbones", P.section(params, "train.backbones"))
    folds = P.check_nonempty_list("train.folds", P.section(params, "train.folds"))
    rt = runtime.configure()
    device = runtime.device()
    cache = Cache(paths.CACHE, paths.INDEX)
    confounder.apply(cache)                                 # the planted shortcut (confounder.enabled; else a no-op)

    scores, curves, status, side, drawn, samples, slots = AT.new_scores(), [], {}, None, set(), {}, []
    stage_params, code = {k: params.get(k) for k in RESUME_PARAMS}, AR.code_digest()
    Path(paths.AOPPC_PARTIAL).mkdir(parents=True, exist_ok=True)    # a declared output even if no model scores
    for backbone in backbones:
        for fold in folds:
            z, att = AS.load_fold(backbone, fold)
            samples.setdefault(backbone, {})[f"f{fold}"] = att.get("sample")
            if "skipped" in z.files:
                status.setdefault(backbone, {})[f"f{fold}"] = {"skipped": str(z["skipped"])}
                print(f"aoppc {backbone} fold {fold}: skipped ({z['skipped']})")
                continue
            model, meta = A.load_classifier(params, backbone, fold, device)
            model, _, folded = fuse.fold_batchnorm(model)   # forward passes only here: the same function, faster
            x = A.classifier_input(cache.images[z["rows"]], meta, device, z["masks"])
            side = int(x.shape[-1])
            part_path = paths.aoppc_partial(backbone, fold)
            ident = AR.identity(stage_params, Path(paths.attributions(backbone, fold)),
                                Path(paths.run("main", backbone, fold).model_dir) / training.checkpoint_file(params),
                                code)
            kept = resume.slot(part_path, ident)     # the part again, outside the DVC outputs (core.resume)
            slots.append(kept)
            if resume.restore(kept):
                print(f"aoppc {backbone} fold {fold}: {part_path} put back from {kept} (dvc exp run had removed "
                      f"the stage's outputs)", flush=True)
            saved, why = AR.load(part_path, ident)
            if saved is not None:
                curves += AR.merge(scores, saved, backbone, fold)
                print(f"aoppc {backbone} fold {fold}: resumed from {part_path} (scored by an interrupted run of "
                      f"the same inputs, params and code)", flush=True)
            else:
                if why != AR.ABSENT:
                    print(f"aoppc {backbone} fold {fold}: {part_path} not taken ({why}); scoring it again", flush=True)
                groups = cache.index["group"].to_numpy()[z["rows"]]
                scores.setdefault("paths", {})[(backbone, f"f{fold}")] = z["paths"].astype(str)
                rows = AS.score_model(scores, backbone, fold, methods, s, x, z, model, groups,
                                      controls={AT.EDGE: RB.edge_map(x.detach().cpu().numpy())})
                curves += rows
                AR.save(part_path, ident, AR.part(scores, rows, backbone, fold))
            resume.keep(kept, [part_path])                 # until the stage is done
            status.setdefault(backbone, {})[f"f{fold}"] = AT.fold_status(att["methods"], scores, backbone, fold)
            bad = {m: st for m, st in status[backbone][f"f{fold}"].items() if st != "ok"}
            print(f"aoppc {backbone} fold {fold}: {len(x)} images, {len(methods)} methods; {folded}"
                  + "".join(f"; {m}: {st if isinstance(st, str) else 'failed'}" for m, st in bad.items()), flush=True)
            if backbone not in drawn:                      # the first scored fold of each backbone
                drawn.add(backbone)
                AP.attribution_panels(backbone, fold, x[:3].mean(1, keepdim=True).cpu().numpy(), z, methods,
                                      Path(paths.attribution_plot(backbone)))

    result = AT.summary(scores, methods, rows=curves, stats=s.stats, fills=s.fills)
    region = AS.region_sentence(s, side) if side else ""
    write_json(paths.AOPPC, {
        "definition": {"aoppc_threshold_morf": "CXR-Net eq. 12: zero pixels with min-max importance >= x, "
                                               "x = 1.0..0.1; mean over levels of p(orig) - p(perturbed)",
                       "aoppc_pixels_morf": "pixel deletion: zero the top 10..100 % pixels by importance (ties in a "
                                            "seeded random order); the last level blanks the image for every map",
                       "aoppc_region_{fill}_morf": region or "region perturbation (no map scored)",
                       "*_lerf": "same levels, least important first (control)",
                       "random": "uniform random map (control)",
                       "edge": "Sobel edge magnitude of the input (control: image contrast)",
                       "lung_mass": "share of |attribution| inside the lung mask; lung_area: mask share of image",
                       "sanity_spearman": "Spearman of |map| vs. |map| of a weight-randomised model (low = passes)",
                       "importance": s.importance},
        "region": AS.perturbation_settings(s, side) if side else None,
        "sample": sample_summary(samples),
        "runtime": rt, "pooled": result["pooled"], "by_method": result["by_method"], "status": status,
        **{k: result[k] for k in ("maps", "sanity", "common", "gain", "agreement", "winners", "removed_share")}})

    frame = pd.DataFrame(curves)
    main_curve = (frame[(frame["scheme"] == "threshold") & (frame["order"] == "morf")]
                  .groupby(["method", "level"], as_index=False)["p_drop"].mean()) if len(frame) else \
        pd.DataFrame(columns=["method", "level", "p_drop"])
    write_csv(paths.AOPPC_CURVES, main_curve[["method", "level", "p_drop"]])
    if len(frame):
        write_csv(paths.AOPPC_CURVES_ALL, frame)
    AP.curves_figure(frame, paths.AOPPC_CURVES_PLOT)

    table = sample_sentence(sample_summary(samples)) + ATT.markdown(result, methods, s.reference, region)
    write_text(paths.AOPPC_MD, table)
    write_csv(paths.AOPPC_PER_IMAGE, pd.DataFrame(AT.per_image_rows(scores, scores.get("paths")),
                                                  columns=AT.PER_IMAGE_COLUMNS))
    for kept in slots:                                     # the stage is done: nothing left to resume
        resume.forget(kept)
    print(table, end="")


def sample_summary(samples: dict) -> dict:
    """The explained images of every model (``sample`` of each attribute metrics file) and, over all
    models, the distinct images, patients and sources (``all``): the n behind the stage's numbers."""
    per = {b: {f: v for f, v in folds.items()} for b, folds in samples.items()}
    images, patients, sources = set(), set(), {}
    for folds in per.values():
        for v in folds.values():
            for p in (v or {}).get("paths", []):
                images.add(p)
            patients.update((v or {}).get("patient_ids", []))
            for src, n in ((v or {}).get("sources") or {}).items():
                sources[src] = max(sources.get(src, 0), n)
    return {"models": per, "all": {"images": len(images), "patients": len(patients), "sources": sources}}


def sample_sentence(summary: dict) -> str:
    """One line for the top of metrics/aoppc.md: the n of images, patients and sources per model."""
    parts = []
    for b, folds in summary["models"].items():
        for f, v in folds.items():
            if v:
                src = ", ".join(f"{k} {n}" for k, n in v["sources"].items())
                parts.append(f"{b} {f}: {v['images']} images of {v['patients']} patients ({src})")
    if not parts:
        return ""
    a = summary["all"]
    return (f"Explained images ({(next(v for fs in summary['models'].values() for v in fs.values() if v) or {}).get('rule', '')}): "
            + "; ".join(parts) + f". All models together: {a['images']} distinct images of {a['patients']} patients.\n\n")
