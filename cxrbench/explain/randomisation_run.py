"""The randomisation stage's run: the model-parameter randomisation checks on every classifier, summarised and
written.

For every classifier of train.backbones x train.folds, on the first ``randomisation.images`` images of its
attribute-stage npz (``core.paths.attributions``: the held-out images, targets and masks), the methods of
``randomisation.methods`` are run on the trained model, on each step of the cascading randomisation, on a
second, independent full randomisation (the null reference) and, on the trained model, for another label
drawn per image (the random-logit check); :mod:`cxrbench.explain.randomisation` holds the definitions.
Writes ``core.paths.RANDOMISATION`` (per method x backbone, per step, the null and the random logit: mean
over folds of the mean over images, patient-bootstrap CI, n and status counts; the layer groups and the
timings per model), ``RANDOMISATION_MD``, ``RANDOMISATION_CURVES`` and ``RANDOMISATION_PLOT``.
"""

from __future__ import annotations

import time
import zlib

import numpy as np
import pandas as pd
import torch

from cxrbench.core import bootstrap, paths, timing
from cxrbench.core.io import write_csv, write_json, write_text
from cxrbench.explain import plots as AP
from cxrbench.explain import randomisation as R
from cxrbench.explain import reliability as RL
from cxrbench.explain.metrics.robustness import CAMS
from cxrbench.explain import runner as A


def run_stage(params: dict) -> None:
    """Run the checks on every model of ``train.backbones`` x ``train.folds``, write the outputs, print the table."""
    cfg = R.validate(params)
    s, stats, backbones, folds, rt, device, cache, group_of = A.model_stage(params)

    t_all = time.perf_counter()
    frames, models = [], {}
    for bb in backbones:
        for k in folds:
            name = f"{bb}-f{k}"
            z = np.load(paths.attributions(bb, k), allow_pickle=False)
            if "skipped" in z.files:
                models[name] = {"skipped": str(z["skipped"])}
                print(f"randomisation {name}: skipped ({z['skipped']})")
                continue
            t0 = time.perf_counter()
            n = min(cfg.images, len(z["rows"]))
            image_paths = z["paths"][:n].astype(str)
            model, meta = A.load_classifier(params, bb, k, device)
            labels = list(meta["labels"])
            x = A.classifier_input(cache.images[z["rows"][:n]], meta, device, z["masks"][:n])
            target = torch.as_tensor(z["target"][:n], device=device).long()
            other = R.other_labels(target.cpu().numpy(), len(labels), [cfg.seed, int(k), zlib.crc32(bb.encode())])
            max_batch = s.max_batch or A.estimate_max_batch(model, x, s.memory_fraction)
            failed: dict = {}

            def attribute(net, xx, t, label, name=name, max_batch=max_batch, failed=failed):
                t1 = time.perf_counter()
                run = A.attribute_all(cfg.methods, net, xx, t, s, bb, max_batch, log=lambda msg: None)
                maps, st = run.maps, run.status
                bad = {m: v["reason"] for m, v in st.items() if not v["ok"]}
                if bad:
                    failed[label] = bad
                print(f"  {name} {label}: {len(maps)}/{len(cfg.methods)} methods, {time.perf_counter() - t1:.1f}s"
                      + (f"; failed (recorded): {sorted(bad)}" if bad else ""))
                return maps, st

            print(f"randomisation {name}: {n} images, methods {cfg.methods}")
            keep = RL.support(x.detach().cpu().numpy(), int(x.shape[-1]))       # pixels where the input is not 0
            cam_side = (RL.feature_side(model, A.target_layer(model, bb, s.target_layers)[1], x)
                        if set(cfg.methods) & set(CAMS) else None)
            rows, status = R.run_checks(model, x, target, torch.as_tensor(other, device=device), attribute,
                                        cfg.seed, cfg.metrics, log=lambda msg: None, keep=keep, cam_side=cam_side)
            frame = pd.DataFrame(rows)
            frame["backbone"], frame["fold"] = bb, int(k)
            frame["path"] = image_paths[frame["image"].to_numpy()]
            frame["group"] = [group_of.get(p, p) for p in frame["path"]]
            frames.append(frame)
            models[name] = {"images": int(n), "groups_top_down": status["groups"],
                            "other_labels": {labels[i]: int((other == i).sum()) for i in sorted(set(other.tolist()))},
                            "failed": failed, "max_batch": int(max_batch), "cam_side": cam_side,
                            "input_zero_share": round(float(1 - keep.mean()), 4),
                            "seconds": round(time.perf_counter() - t0, 1)}
            print(f"randomisation {name}: {len(status['groups'])} layer groups, {models[name]['seconds']}s")

    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    t1 = time.perf_counter()
    with timing.step("summary (patient bootstrap)"):
        summary = (R.summarise(frame, cfg.metrics, stats["resamples"], stats["seed"], stats["confidence"],
                               stats["method"], stats["min_valid_share"]) if len(frame) else {})
    print(f"randomisation: {len(frame)} per-image similarities summarised ({stats['resamples']} resamples) in "
          f"{time.perf_counter() - t1:.1f}s")
    curves = pd.DataFrame(R.curve_rows(summary, cfg.metrics),
                          columns=["backbone", "method", "metric", "step", "layer", "similarity", "low", "high", "n",
                                   "null", "null_low", "null_high"])
    write_json(paths.RANDOMISATION, {
        "definition": {
            "cascade": "step k: the top k layer groups (cxrbench.explain.randomisation.cascade_groups) re-initialised; "
                       "similarity of each image's map to the trained model's (step 0: the trained model itself)",
            "null": "similarity between the maps of two independently, fully randomised models "
                    "(replicates 0 and 1): what the input alone produces",
            "random_logit": "the trained model's map for the target vs for another label (seeded choice)",
            "spearman": "rank correlation of the signed maps", "spearman_abs": "rank correlation of |map|",
            "ssim": "scikit-image SSIM of min-max normalised maps, data_range 1, averaged over the kept pixels",
            "pixels": "pixels where the input is 0 (padding, clipping) are left out of every similarity; CAMs "
                      "are compared at the target layer's feature-map resolution (cam_side per model); masked_out: "
                      "compared pairs whose similarity is undefined there (e.g. SSIM of a 2 x 2 map)",
            "estimate": f"mean over folds of the mean over compared images; CI: "
                        f"{bootstrap.method_name(stats['method'])} bootstrap, one draw of the patient groups "
                        f"per resample shared by every fold (cxrbench.core.bootstrap.fold_bootstrap)",
            "counts": "compared | changed_constant (the second map constant: passes, no similarity) | "
                      "changed_nonfinite | reference_degenerate (the first map constant or non-finite: excluded)"},
        "params": {"images": cfg.images, "methods": cfg.methods, "seed": cfg.seed, "metrics": cfg.metrics},
        "runtime": rt, "seconds": round(time.perf_counter() - t_all, 1), "models": models, "summary": summary})
    write_csv(paths.RANDOMISATION_CURVES, curves)
    AP.randomisation_figure(curves, cfg.metrics, cfg.methods, paths.RANDOMISATION_PLOT)
    table = R.markdown(summary, cfg.metrics, cfg.methods, cfg.images) if summary else \
        f"### Model-parameter randomisation\n\nNo result: every model was skipped (see {paths.RANDOMISATION}).\n"
    write_text(paths.RANDOMISATION_MD, table)
    print(table, end="")
    print(f"randomisation: {paths.RANDOMISATION}, {paths.RANDOMISATION_MD}, {paths.RANDOMISATION_PLOT} in "
          f"{time.perf_counter() - t_all:.0f}s")
