"""Stage train_unet: MONAI U-Net on the V7 lung masks of the dev split, scored on the test split.

Writes models/unet/model.pt (checkpoint each epoch; resumed when present),
dvclive/unet (per-epoch train/val loss, val IoU), metrics/unet.json and
plots/unet_overlays.png.
"""

import time
from pathlib import Path

import numpy as np
import pandas as pd
from dvclive import Live

from cxrbench.core import headline
from cxrbench.core import params as P
from cxrbench.core import paths, runtime
from cxrbench.core.io import write_json
from cxrbench.data.cache import Cache
from cxrbench.lungs import segmentation as seg
from cxrbench.lungs import unet

MODEL = Path(paths.UNET_MODEL)
LIVE_DIR = paths.DVCLIVE_UNET
OVERLAYS = 8


def main(argv: list[str] | None = None) -> None:
    params = unet.stage_params(__doc__, argv)
    cache = Cache(paths.CACHE, paths.INDEX)
    cfg = unet.UNetConfig.from_params(params, in_channels=int(cache.images.shape[1]))
    seg_p = P.section(params, "segment")
    splits = pd.read_csv(paths.SPLITS, keep_default_na=False)
    parts = unet.unet_split(cache.index, splits, cfg.val_fold)
    print(f"train_unet: {len(parts['train'])} train / {len(parts['val'])} val (dev fold {cfg.val_fold}) / "
          f"{len(parts['test'])} test images with lung masks, {cfg.size}px, device {unet.device()}")

    image_paths = cache.index["path"].to_numpy()
    fingerprint = unet.data_fingerprint(cache.meta, {k: list(image_paths[parts[k]]) for k in ("train", "val")})
    live = Live(dir=LIVE_DIR, save_dvc_exp=False, dvcyaml=None)
    try:
        with runtime.exit_on_deadline():           # CXRBENCH_DEADLINE: stop after a checkpoint, exit 75
            result = unet.train(cfg, cache.images, cache.masks, parts, MODEL, live=live, fingerprint=fingerprint)
    finally:
        live.end()

    model, _ = unet.load_model(MODEL)
    test = parts["test"]
    size = int(cache.meta["size"])
    t0 = time.perf_counter()
    proba = unet.predict_proba(model, cache.images[test], cfg.size, size, cfg.batch_size, progress=True,
                               desc="test")
    infer_s = time.perf_counter() - t0
    raw = (proba >= cfg.threshold).astype(np.uint8)
    post = seg.postprocess_all(raw, int(seg_p["components"]), bool(seg_p["fill_holes"]))
    true = cache.masks[test]
    iou_raw, dice_raw = seg.iou(raw, true), seg.dice(raw, true)
    iou_post, dice_post = seg.iou(post, true), seg.dice(post, true)
    image_paths = image_paths[test]
    patients = cache.index["patient"].to_numpy()

    hist = result["history"]
    speeds = [h["train_images_per_s"] for h in hist if np.isfinite(h.get("train_images_per_s", np.nan))]
    write_json(paths.UNET_METRICS, {
        "runtime": runtime.info(),
        "images": {k: int(len(v)) for k, v in parts.items()},
        "patients": {k: int(len(set(patients[v]))) for k, v in parts.items()},
        "val_fold": cfg.val_fold, "size": cfg.size, "eval_size": size, "loss": cfg.loss,
        "epochs": len(hist), "best_epoch": result["best"]["epoch"],
        "best_val_loss": result["best"]["val_loss"], "best_val_iou": result["best"]["val_iou"],
        "final_train_loss": hist[-1]["train_loss"] if hist else None,
        # Held-out test split, at the cache size, after post-processing (what the segment stage writes).
        "test": {"iou": seg.summary(iou_post), "dice": seg.summary(dice_post),
                 "iou_raw": seg.summary(iou_raw), "dice_raw": seg.summary(dice_raw)},
        "train_images_per_s": float(np.median(speeds)) if speeds else None,
        "infer_images_per_s": len(test) / infer_s if infer_s > 0 else None,
        "test_per_image": [{"path": p, "iou": float(a), "dice": float(b)}
                           for p, a, b in zip(image_paths, iou_post, dice_post)],
    })

    # Overlays: held-out images spread over the IoU ranking (worst to best).
    order = np.argsort(iou_post, kind="stable")
    pick = order[np.unique(np.linspace(0, len(order) - 1, min(OVERLAYS, len(order))).round().astype(int))]
    seg.overlay_grid(cache.images[test[pick]], true[pick], post[pick], list(image_paths[pick]),
                     paths.UNET_OVERLAYS_PLOT, scores=iou_post[pick])
    si, sd = seg.summary(iou_post), seg.summary(dice_post)
    print(f"train_unet: best epoch {result['best']['epoch']} (val loss {result['best']['val_loss']:.4f}); "
          f"test IoU mean {si['mean']} median {si['median']}, Dice mean {sd['mean']} median {sd['median']} "
          f"(n={si['n']})")
    headline.write("train_unet", params)


if __name__ == "__main__":
    P.run_stage(main)
