"""Stage segment: the trained U-Net on every cached image (both sources), post-processed.

Writes data/lungs/masks.npy (N, S, S) uint8 aligned with data/cache and
data/index.csv (plus data/lungs/meta.json), metrics/segment.json (lung-area
fraction and connected components per source, implausible masks) and plots/segment_grid.png.
"""

import time
from pathlib import Path

import numpy as np

from cxrbench.core import params as P
from cxrbench.core import paths, runtime
from cxrbench.core.io import atomic_path, write_json
from cxrbench.data.cache import Cache
from cxrbench.lungs import segmentation as seg
from cxrbench.lungs import unet


def main(argv: list[str] | None = None) -> None:
    params = unet.stage_params(__doc__, argv)
    p = seg.validate_segment(params)
    cache = Cache(paths.CACHE, paths.INDEX, in_memory=False)  # read batch by batch
    model, cfg = unet.load_model(Path(paths.UNET_MODEL))
    if cfg.in_channels != cache.images.shape[1]:
        raise RuntimeError(f"{paths.UNET_MODEL} expects {cfg.in_channels} channel(s) but the cache has "
                           f"{cache.images.shape[1]}: rerun train_unet")
    n, size = len(cache.images), int(cache.meta["size"])

    t0 = time.perf_counter()
    masks = unet.predict_masks(model, cache.images, cfg.size, size, max(cfg.batch_size, 16), cfg.threshold,
                               p["components"], p["fill_holes"], progress=True)
    infer_s = time.perf_counter() - t0  # network + post-processing

    with atomic_path(Path(paths.LUNGS)) as tmp:
        tmp.mkdir()
        np.save(tmp / "masks.npy", masks)
        write_json(tmp / "meta.json", {"n": n, "size": size, "index_sha1": cache.meta.get("index_sha1"),
                                       "unet_size": cfg.size, "threshold": cfg.threshold,
                                       "components": p["components"], "fill_holes": p["fill_holes"]})
    report = seg.mask_report(masks, cache.index, cache.masks, p["implausible_max_area"])
    write_json(paths.SEGMENT_METRICS, {
        "runtime": runtime.info(), "images": n, "size": size, "images_per_s": n / infer_s if infer_s > 0 else None,
        **report})
    seg.contour_grid(seg.grid_groups(cache.images, masks, cache.index, p["grid_images"], cfg.seed),
                     paths.SEGMENT_GRID_PLOT)
    print(f"segment: {n} images at {size}px ({n / infer_s:.1f} images/s), {report['implausible']['count']} "
          "implausible masks; " + ", ".join(f"{s}: area {v['area_fraction'].get('mean', float('nan')):.3f}"
                                           for s, v in report["by_source"].items()))


if __name__ == "__main__":
    P.run_stage(main)
