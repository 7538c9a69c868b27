"""Stage segment: the trained U-Net on every cached image (both sources), post-processed.

Writes data/lungs/masks.npy (N, S, S) uint8 aligned with data/cache and
data/index.csv (plus data/lungs/meta.json), metrics/segment.json (lung-area
fraction and connected components per source, implausible masks) and plots/segment_grid.png.
"""

import time
from pathlib import Path

import numpy as np

from cxrbench.core import params as P
from cxrbench.core import runtime
from cxrbench.core.io import atomic_path, write_json
from cxrbench.data.cache import Cache
from cxrbench.lungs import segmentation as seg
from cxrbench.lungs import unet

MODEL = Path("models/unet/model.pt")
OUT_DIR = Path("data/lungs")


def validate(params: dict) -> dict:
    p = P.section(params, "segment")
    P.check_int("segment.components", p.get("components"), minimum=0)
    if not isinstance(p.get("fill_holes"), bool):
        raise P.ParamError("segment.fill_holes", f"expected true or false, got {p.get('fill_holes')!r}")
    P.check_fraction("segment.implausible_max_area", p.get("implausible_max_area"))
    P.check_int("segment.grid_images", p.get("grid_images"), minimum=0)
    return p


def main(argv=None) -> None:
    params = unet.stage_params(__doc__, argv)
    p = validate(params)
    cache = Cache("data/cache", "data/index.csv", in_memory=False)  # read batch by batch
    model, cfg = unet.load_model(MODEL)
    if cfg.in_channels != cache.images.shape[1]:
        raise RuntimeError(f"{MODEL} expects {cfg.in_channels} channel(s) but the cache has "
                           f"{cache.images.shape[1]}: rerun train_unet")
    n, size = len(cache.images), int(cache.meta["size"])

    t0 = time.perf_counter()
    masks = unet.predict_masks(model, cache.images, cfg.size, size, max(cfg.batch_size, 16), cfg.threshold,
                               p["components"], p["fill_holes"], progress=True)
    infer_s = time.perf_counter() - t0  # network + post-processing

    with atomic_path(OUT_DIR) as tmp:
        tmp.mkdir()
        np.save(tmp / "masks.npy", masks)
        write_json(tmp / "meta.json", {"n": n, "size": size, "index_sha1": cache.meta.get("index_sha1"),
                                       "unet_size": cfg.size, "threshold": cfg.threshold,
                                       "components": p["components"], "fill_holes": p["fill_holes"]})

    index = cache.index
    frac = seg.area_fraction(masks)
    bad = []
    for i in range(n):
        reasons = seg.implausible(masks[i], p["implausible_max_area"])
        if reasons:
            bad.append({"path": index["path"].iat[i], "source": index["source"].iat[i], "reasons": reasons})
    comps = np.array([seg.n_components(m) for m in masks])
    by_source = {}
    for src in sorted(index["source"].unique()):
        sel = (index["source"] == src).to_numpy()
        c = comps[sel]
        by_source[src] = {"area_fraction": seg.area_summary(frac[sel]),
                          "components": {"0": int((c == 0).sum()), "1": int((c == 1).sum()),
                                         "2+": int((c >= 2).sum())},
                          "implausible": sum(b["source"] == src for b in bad)}
    # Agreement with the V7 masks where they exist (test-split rows only are unseen by the U-Net;
    # train_unet reports those, this is the whole set as a consistency check).
    has = (index["mask"] != "").to_numpy()
    reason_counts = {}
    for b in bad:
        for r in b["reasons"]:
            reason_counts[r] = reason_counts.get(r, 0) + 1
    write_json("metrics/segment.json", {
        "runtime": runtime.info(), "images": n, "size": size, "images_per_s": n / infer_s if infer_s > 0 else None,
        "by_source": by_source,
        "dice_vs_v7_all_masked_incl_train": seg.summary(seg.dice(masks[has], cache.masks[has])) if has.any() else None,
        "implausible": {"count": len(bad), "by_reason": reason_counts, "masks": bad}})

    groups = {}
    rng = np.random.default_rng(cfg.seed)
    for src in sorted(index["source"].unique()):
        rows = np.flatnonzero((index["source"] == src).to_numpy())
        pick = np.sort(rng.choice(rows, size=min(p["grid_images"], len(rows)), replace=False))
        groups[src] = (cache.images[pick], masks[pick], list(index["path"].to_numpy()[pick]))
    seg.contour_grid(groups, "plots/segment_grid.png")
    print(f"segment: {n} images at {size}px ({n / infer_s:.1f} images/s), {len(bad)} implausible masks; "
          + ", ".join(f"{s}: area {v['area_fraction'].get('mean', float('nan')):.3f}" for s, v in by_source.items()))


if __name__ == "__main__":
    main()
