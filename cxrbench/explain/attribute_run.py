"""The attribute stage's run for one classifier (BACKBONE, FOLD): attribution maps on held-out test images.

For each target class of ``explain.targets`` (default covid19) a seeded sample of the test-split images
positive for it: ``explain.max_images`` patients, one image each, drawn at random within each source
(``explain.sample_seed``; :mod:`cxrbench.explain.selection`), every method of
``explain.methods`` on the trained model and on a weight-randomised copy (the first
``explain.sanity_images`` images). Writes the maps (:mod:`cxrbench.explain.store`) and
``metrics/attribute/{backbone}-f{fold}.json``: per method ok (it ran) + seconds, or the recorded reason it
could not run; for a method that ran, ``maps``: how many of its maps (as stored) are ok, constant (one
value everywhere, e.g. an all-zero Grad-CAM) or nonfinite, and ``degenerate``: the image paths of the
constant or non-finite ones (empty list when none); the same under ``sanity`` for the randomised model's
maps; for deeplift its completeness per image (``convergence``) and for lrp its relevance conservation per
image (``conservation``: sum(map), the target logit and their relative gap); the model preparation report;
max_batch; ``sample``: the n of images, patients and sources explained, and of those it was drawn from. Degenerate maps are a status, not a score: the aoppc stage leaves them out of every metric and
counts them.

No matching test image: the fold is recorded as skipped (reason in both files).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from cxrbench.classify import training
from cxrbench.core import params as P
from cxrbench.core import paths, runtime
from cxrbench.core.io import write_json
from cxrbench.data import confounder
from cxrbench.data.cache import Cache
from cxrbench.explain import runner as A
from cxrbench.explain import store
from cxrbench.explain.methods.gradients import convergence_summary
from cxrbench.explain.metrics import perturbation as EM
from cxrbench.explain.selection import describe, lung_masks, select, test_images


def run_stage(params: dict, backbone: str, fold: int) -> None:
    """Maps of classifier ``backbone`` fold ``fold`` written to ``core.paths.attributions`` and its status to
    ``core.paths.attribute_metrics``."""
    training.checkpoint_file(params)                        # evaluate.checkpoint checked before any work
    s = A.validate(params)
    targets = P.check_nonempty_list("explain.targets", P.section(params, "explain.targets"))
    max_images = P.check_int("explain.max_images", P.section(params, "explain.max_images"), minimum=1)
    n_sanity = P.check_int("explain.sanity_images", P.section(params, "explain.sanity_images"), minimum=0)
    seed = P.check_int("explain.seed", P.section(params, "explain.seed"))
    sample_seed = P.check_int("explain.sample_seed", P.section(params, "explain.sample_seed"))
    tolerance = P.check_fraction("explain.deeplift_tolerance", P.section(params, "explain.deeplift_tolerance"),
                                 open_high=False)
    npz_path = Path(paths.attributions(backbone, fold))
    metrics_path = Path(paths.attribute_metrics(backbone, fold))
    rt = runtime.configure()
    device = runtime.device()

    cache = Cache(paths.CACHE, paths.INDEX)
    confounder.apply(cache)                                 # the planted shortcut (confounder.enabled; else a no-op)
    sel = select(cache, targets, max_images, fold, sample_seed)
    sample = describe(sel, test_images(cache, fold), sample_seed)
    if len(sel) == 0:
        reason = f"no held-out test image is positive for {targets}"
        print(f"attribute {backbone} fold {fold}: SKIPPED: {reason}")
        store.save_skipped(npz_path, reason)
        write_json(metrics_path, {"backbone": backbone, "fold": fold, "skipped": reason, "sample": sample,
                                  "methods": {}})
        return

    model, meta = A.load_classifier(params, backbone, fold, device)
    labels = list(meta["labels"])
    missing = [t for t in targets if t not in labels]
    if missing:
        raise P.ParamError("explain.targets", f"{missing} not among the classifier's labels {labels}")
    rows = cache.rows(list(sel["path"]))
    target = torch.tensor([labels.index(t) for t in sel["target_name"]], device=device)
    masks_all, mask_source = lung_masks(cache)
    masks = np.asarray(masks_all[rows])
    x = A.classifier_input(cache.images[rows], meta, device, masks)
    masks = A.resize_masks(masks, tuple(x.shape[-2:]))

    print(f"attribute {backbone} fold {fold}: {len(x)} images of {sample['patients']} patients "
          f"({', '.join(f'{k} {v}' for k, v in sample['sources'].items())}) at {tuple(x.shape[1:])}")
    t0 = time.perf_counter()
    run = A.attribute_all(s.methods, model, x, target, s, backbone)
    maps, status, built, max_batch, rep = run.maps, run.status, run.built, run.max_batch, run.prepare
    print(f"  max_batch {max_batch}, prepare {rep.as_dict()}")
    if rep.functional_relu_calls:
        print(f"  note: {rep.functional_relu_calls} functional relu call(s) cannot be hooked: DeepLIFT treats "
              f"them as linear, guided backprop does not guide them")
    record_checks(status, built, tolerance, sel["path"].tolist(), s.lrp_composite)

    rand_maps = {}
    if n_sanity:
        rnd = EM.randomise_weights(model, seed)
        ok = [m for m in s.methods if status[m]["ok"]]
        rnd_run = A.attribute_all(ok, rnd, x[:n_sanity], target[:n_sanity], s, backbone, max_batch,
                                  log=lambda msg: print("  (randomised)" + msg))
        rand_maps, rstatus = rnd_run.maps, rnd_run.status
        for m, st in rstatus.items():
            status[m]["sanity"] = st

    arrays = store.arrays(rows, sel["path"].tolist(), target.cpu().numpy(), sel["target_name"].tolist(), masks,
                          maps, rand_maps)
    store.record_map_status(status, arrays, sel["path"].tolist())
    store.save(npz_path, arrays)
    write_json(metrics_path, {
        "backbone": backbone, "fold": fold, "images": int(len(x)), "input": list(x.shape[1:]),
        "targets": targets, "sample": sample, "mask_source": mask_source, "max_batch": int(max_batch),
        "max_batch_from": "params" if s.max_batch else "estimate", "device": str(device),
        "prepare": rep.as_dict(), "runtime": rt, "seconds": round(time.perf_counter() - t0, 2), "methods": status})
    bad = [m for m, st in status.items() if not st["ok"]]
    print(f"attribute {backbone} fold {fold}: {len(maps)}/{len(s.methods)} methods ran; "
          + EM.degenerate_summary(status) + (f"; failed (recorded): {bad}" if bad else ""))


def record_checks(status: dict, built: dict, tolerance: float, image_paths: list[str], lrp_composite: str) -> None:
    """Into ``status``: DeepLIFT's completeness per image (``convergence``, against ``tolerance``) and LRP's
    relevance conservation per image (``conservation``), for whichever of the two ran (``built``: the method
    objects by name)."""
    if status.get("deeplift", {}).get("ok"):                   # completeness: sum(map) = f(x) - f(0)?
        conv = convergence_summary(built["deeplift"].convergence(), tolerance, image_paths)
        status["deeplift"]["convergence"] = conv
        print(f"  deeplift completeness |sum - (f(x) - f(0))| / |f(x) - f(0)|: median "
              f"{conv['relative_median']:.2g}, max {conv['relative_max']:.2g}; {conv['above_tolerance']}/"
              f"{conv['images']} above explain.deeplift_tolerance {tolerance:g}")

    if status.get("lrp", {}).get("ok"):                        # relevance conservation: sum(map) = target logit?
        cons = built["lrp"].conservation()
        rel = np.asarray(cons["relative"], dtype=float)
        status["lrp"]["conservation"] = {
            "composite": lrp_composite, "relative_median": float(np.median(rel)), "relative_max": float(rel.max()),
            "relative": [round(float(v), 6) for v in rel], "sum": cons["sum"], "logit": cons["logit"]}
        print(f"  lrp conservation |sum - logit| / |logit| ({lrp_composite}): median {np.median(rel):.2g}, "
              f"max {rel.max():.2g} (biases and stabilisers absorb relevance; exact only for epsilon without biases)")
