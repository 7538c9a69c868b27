"""Stage attribute BACKBONE FOLD: attribution maps of one classifier on held-out test images.

For each target class of ``explain.targets`` (default covid19): the first
``explain.max_images`` test-split images positive for it (index order). Writes

* data/attributions/{backbone}-f{fold}.npz: ``rows`` (cache rows), ``paths``,
  ``target`` (class index per image), ``masks`` (lung masks at input
  resolution), per method ``{method}`` float32 (N, H, W) maps divided by a
  per-image scale ``{method}__scale`` (float32; map = stored * scale: maxima of
  1, so maps of any magnitude compare alike; float32, because float16 storage
  made 91-99 % of a map's pixels tie with another and underflowed tiny
  gradients), and ``rand__{method}`` maps of a
  weight-randomised copy of the model for the first ``explain.sanity_images``
  images (the sanity check of the aoppc stage).
* metrics/attribute/{backbone}-f{fold}.json: per method ok (it ran) + seconds, or
  the recorded reason it could not run; for a method that ran, ``maps``: how
  many of its maps (as stored) are ok, constant (one value everywhere, e.g. an
  all-zero Grad-CAM) or nonfinite, and ``degenerate``: the image paths of the
  constant or non-finite ones (empty list when none); the same under
  ``sanity`` for the randomised model's maps; for deeplift its completeness per image
  (``convergence``) and for lrp its relevance conservation per image (``conservation``:
  sum(map), the target logit and their relative gap); the model preparation report;
  max_batch. Degenerate maps are a status, not a score: the aoppc stage leaves
  them out of every metric and counts them.

No matching test image: the fold is recorded as skipped (reason in both files).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrbench.classify import training
from cxrbench.core import params as P
from cxrbench.core import runtime
from cxrbench.core.io import atomic_path, write_json
from cxrbench.data import confounder, splitting
from cxrbench.data.cache import Cache
from cxrbench.explain import attribution as A
from cxrbench.explain.metrics import perturbation as EM
from cxrbench.explain.metrics.perturbation import randomise_weights
from cxrbench.lungs.segmentation import LUNG_MASKS, load_lung_masks


def lung_masks(cache: Cache) -> tuple[np.ndarray, str]:
    """The segmentation stage's masks when present, else the cache's V7 masks."""
    if Path(LUNG_MASKS).is_file():
        return load_lung_masks(len(cache.index), mmap=True), LUNG_MASKS
    return cache.masks, "data/cache/masks.npy"


def select(cache: Cache, targets: list, max_images: int, fold: int) -> pd.DataFrame:
    """Held-out test images of ``fold`` positive for each target class (first ``max_images`` in index order)."""
    splits = pd.read_csv("data/splits.csv", keep_default_na=False)
    test_paths = splitting.fold_parts(splits, fold)["test"]["path"]
    test = cache.index[cache.index["path"].isin(set(test_paths))]
    parts = []
    for t in targets:
        col = f"y_{t}"
        if col not in test.columns:
            raise P.ParamError("explain.targets", f"{t!r} is not a label column of data/index.csv")
        sub = test[test[col] == 1].head(max_images).copy()
        sub["target_name"] = t
        parts.append(sub)
    return pd.concat(parts) if parts else test.iloc[:0]


def scaled(maps: dict, prefix: str = "") -> dict:
    out = {}
    for name, m in maps.items():
        m32 = m.astype(np.float32) if m.dtype != np.float32 else m
        scale = np.abs(m32).reshape(len(m32), -1).max(1)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        out[f"{prefix}{name}"] = (m32 / scale[:, None, None]).astype(np.float32)
        out[f"{prefix}{name}__scale"] = scale
    return out


def record_map_status(status: dict, arrays: dict, paths: list) -> None:
    """Add ``maps`` and ``degenerate`` (:func:`cxrbench.explain.metrics.perturbation.map_report`) to each method's
    status, from its maps as stored in ``arrays`` (what the aoppc stage scores), and the same under ``sanity``
    for the randomised model's maps (``rand__{method}``, the first images)."""
    for m, st in status.items():
        if st.get("ok") and m in arrays:
            st.update(EM.map_report(EM.stored_maps(arrays, m), paths))
        rnd = st.get("sanity")
        if rnd is not None and rnd.get("ok") and f"rand__{m}" in arrays:
            stored = EM.stored_maps(arrays, f"rand__{m}")
            rnd.update(EM.map_report(stored, paths[:len(stored)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("backbone")
    ap.add_argument("fold", type=int)
    P.add_stage_arguments(ap)
    args = ap.parse_args()
    backbone, fold = args.backbone, args.fold
    params = P.from_arguments(args)
    checkpoint_file = training.checkpoint_file(params)
    s = A.validate(params)
    targets = P.check_nonempty_list("explain.targets", P.section(params, "explain.targets"))
    max_images = P.check_int("explain.max_images", P.section(params, "explain.max_images"), minimum=1)
    n_sanity = P.check_int("explain.sanity_images", P.section(params, "explain.sanity_images"), minimum=0)
    seed = P.check_int("explain.seed", P.section(params, "explain.seed"))
    tolerance = P.check_fraction("explain.deeplift_tolerance", P.section(params, "explain.deeplift_tolerance"),
                                 open_high=False)
    npz_path = Path(f"data/attributions/{backbone}-f{fold}.npz")
    metrics_path = Path(f"metrics/attribute/{backbone}-f{fold}.json")
    rt = runtime.configure()
    device = runtime.device()

    cache = Cache("data/cache", "data/index.csv")
    confounder.apply(cache)                                 # the planted shortcut (confounder.enabled; else a no-op)
    sel = select(cache, targets, max_images, fold)
    if len(sel) == 0:
        reason = f"no held-out test image is positive for {targets}"
        print(f"attribute {backbone} fold {fold}: SKIPPED: {reason}")
        with atomic_path(npz_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, skipped=np.array(reason))
        write_json(metrics_path, {"backbone": backbone, "fold": fold, "skipped": reason, "methods": {}})
        return

    model, meta = A.load_classifier(backbone, fold, device, checkpoint_file)
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

    print(f"attribute {backbone} fold {fold}: {len(x)} images at {tuple(x.shape[1:])}")
    t0 = time.perf_counter()
    run = A.attribute_all(s.methods, model, x, target, s, backbone)
    maps, status, built, max_batch, rep = run.maps, run.status, run.built, run.max_batch, run.prepare
    print(f"  max_batch {max_batch}, prepare {rep.as_dict()}")
    if rep.functional_relu_calls:
        print(f"  note: {rep.functional_relu_calls} functional relu call(s) cannot be hooked: DeepLIFT treats "
              f"them as linear, guided backprop does not guide them")
    if status.get("deeplift", {}).get("ok"):                   # completeness: sum(map) = f(x) - f(0)?
        conv = A.convergence_summary(built["deeplift"].convergence(), tolerance, sel["path"].tolist())
        status["deeplift"]["convergence"] = conv
        print(f"  deeplift completeness |sum - (f(x) - f(0))| / |f(x) - f(0)|: median "
              f"{conv['relative_median']:.2g}, max {conv['relative_max']:.2g}; {conv['above_tolerance']}/"
              f"{conv['images']} above explain.deeplift_tolerance {tolerance:g}")

    if status.get("lrp", {}).get("ok"):                        # relevance conservation: sum(map) = target logit?
        cons = built["lrp"].conservation()
        rel = np.asarray(cons["relative"], dtype=float)
        status["lrp"]["conservation"] = {
            "composite": s.lrp_composite, "relative_median": float(np.median(rel)), "relative_max": float(rel.max()),
            "relative": [round(float(v), 6) for v in rel], "sum": cons["sum"], "logit": cons["logit"]}
        print(f"  lrp conservation |sum - logit| / |logit| ({s.lrp_composite}): median {np.median(rel):.2g}, "
              f"max {rel.max():.2g} (biases and stabilisers absorb relevance; exact only for epsilon without biases)")

    rand_maps = {}
    if n_sanity:
        rnd = randomise_weights(model, seed)
        ok = [m for m in s.methods if status[m]["ok"]]
        rnd_run = A.attribute_all(ok, rnd, x[:n_sanity], target[:n_sanity], s, backbone, max_batch,
                                  log=lambda msg: print("  (randomised)" + msg))
        rand_maps, rstatus = rnd_run.maps, rnd_run.status
        for m, st in rstatus.items():
            status[m]["sanity"] = st

    arrays = {"rows": rows, "paths": np.array(sel["path"].tolist()), "target": target.cpu().numpy(),
              "target_name": np.array(sel["target_name"].tolist()), "masks": masks.astype(np.uint8),
              **scaled(maps), **scaled(rand_maps, "rand__")}
    record_map_status(status, arrays, sel["path"].tolist())
    with atomic_path(npz_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    write_json(metrics_path, {
        "backbone": backbone, "fold": fold, "images": int(len(x)), "input": list(x.shape[1:]),
        "targets": targets, "mask_source": mask_source, "max_batch": int(max_batch),
        "max_batch_from": "params" if s.max_batch else "estimate", "device": str(device),
        "prepare": rep.as_dict(), "runtime": rt, "seconds": round(time.perf_counter() - t0, 2), "methods": status})
    bad = [m for m, st in status.items() if not st["ok"]]
    print(f"attribute {backbone} fold {fold}: {len(maps)}/{len(s.methods)} methods ran; "
          + EM.degenerate_summary(status) + (f"; failed (recorded): {bad}" if bad else ""))


if __name__ == "__main__":
    main()
