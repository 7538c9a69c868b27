"""Lung masks: overlap metrics, post-processing, mask statistics and the
classifier's input modes.

The U-Net itself (model, loss, training, inference) lives in :mod:`cxrbench.lungs.unet`;
this module holds the parts that need no network:

* :func:`iou` / :func:`dice` of binary masks (per image; two empty masks agree
  perfectly: 1.0),
* :func:`postprocess`: keep the ``components`` largest 4-connected components
  (the two lungs; ``skimage.measure.label``) and fill their holes
  (``scipy.ndimage.binary_fill_holes``),
* :func:`area_summary` and :func:`implausible` for the segment stage's report,
* :func:`apply_input_mode`: what the classifier sees (``full`` image, the
  ``lung_crop`` or the image with the ``lungs_removed``), from a mask dilated by
  ``dilation`` pixels (exact Euclidean disk, via a distance transform).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage import measure

from cxrbench.core import paths
from cxrbench.core.params import ParamError

INPUT_MODES = ("full", "lung_crop", "lungs_removed", "lungs_segmented")


# --- overlap ----------------------------------------------------------------

def _pair(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred) > 0, np.asarray(true) > 0
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {true.shape}")
    if pred.ndim == 2:
        pred, true = pred[None], true[None]
    return pred.reshape(len(pred), -1), true.reshape(len(true), -1)


def iou(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Intersection over union per image of (N, H, W) or (H, W) masks; 1.0 where both are empty."""
    p, t = _pair(pred, true)
    inter = (p & t).sum(1).astype(np.float64)
    union = (p | t).sum(1).astype(np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def dice(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Dice coefficient 2|A∩B| / (|A| + |B|) per image; 1.0 where both are empty."""
    p, t = _pair(pred, true)
    inter = (p & t).sum(1).astype(np.float64)
    total = (p.sum(1) + t.sum(1)).astype(np.float64)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def summary(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "mean": None, "median": None, "std": None, "min": None, "max": None}
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std()),
            "min": float(v.min()), "max": float(v.max())}


# --- post-processing --------------------------------------------------------

def postprocess(mask: np.ndarray, components: int = 2, fill_holes: bool = True) -> np.ndarray:
    """Keep the ``components`` largest connected components of a (H, W) mask and fill holes.

    ``components`` = 0 keeps every component. Ties in size keep the component
    met first in raster order. Returns uint8 in {0, 1}.
    """
    mask = np.asarray(mask) > 0
    if mask.ndim != 2:
        raise ValueError(f"postprocess expects one (H, W) mask, got shape {mask.shape}")
    out = mask
    if components > 0 and mask.any():
        labels = measure.label(mask, connectivity=1)
        sizes = np.bincount(labels.ravel())[1:]
        if len(sizes) > components:
            keep = np.argsort(-sizes, kind="stable")[:components] + 1
            out = np.isin(labels, keep)
    if fill_holes:
        out = ndimage.binary_fill_holes(out)
    return out.astype(np.uint8)


def postprocess_all(masks: np.ndarray, components: int = 2, fill_holes: bool = True) -> np.ndarray:
    return np.stack([postprocess(m, components, fill_holes) for m in masks]) if len(masks) else \
        np.zeros_like(masks, dtype=np.uint8)


def n_components(mask: np.ndarray) -> int:
    return int(measure.label(np.asarray(mask) > 0, connectivity=1).max())


# --- statistics for the segment stage --------------------------------------

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def area_fraction(masks: np.ndarray) -> np.ndarray:
    m = np.asarray(masks) > 0
    return m.reshape(len(m), -1).mean(1)


def area_summary(fractions: np.ndarray) -> dict:
    f = np.asarray(fractions, dtype=np.float64)
    if f.size == 0:
        return {"n": 0}
    return {"n": int(f.size), "mean": float(f.mean()), "std": float(f.std()),
            "quantiles": {f"q{int(q * 100):02d}": float(np.quantile(f, q)) for q in QUANTILES}}


def implausible(mask: np.ndarray, max_area: float = 0.8) -> list[str]:
    """Reasons a (post-processed) lung mask is implausible: empty, one component, too large."""
    m = np.asarray(mask) > 0
    if not m.any():
        return ["empty"]
    reasons = []
    if n_components(m) == 1:
        reasons.append("one_component")
    if m.mean() > max_area:
        reasons.append(f"area_over_{max_area:g}")
    return reasons


# --- classifier inputs ------------------------------------------------------

def dilate(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Binary dilation of a (H, W) mask by a Euclidean disk of radius ``dilation`` pixels."""
    m = np.asarray(mask) > 0
    if dilation <= 0 or not m.any():
        return m
    return ndimage.distance_transform_edt(~m) <= dilation


def _resize_bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """(C, h, w) uint8 -> (C, size, size) uint8, bilinear, antialiased when shrinking."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]
    shrink = x.shape[-1] > size or x.shape[-2] > size
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return y[0].round_().clamp_(0, 255).to(torch.uint8).numpy()


def apply_input_mode(images: np.ndarray, masks: np.ndarray, mode: str, dilation: int = 0,
                     key: str = "input_mode") -> np.ndarray:
    """The classifier's input under ``mode``: (N, C, S, S) uint8 -> (N, C, S, S) uint8.

    * ``full``: the images unchanged (a copy).
    * ``lung_crop``: crop each image to the bounding box of its mask dilated by
      ``dilation`` px, resize back to S x S (bilinear; the aspect ratio is not
      kept). An empty mask leaves the image unchanged.
    * ``lungs_removed``: pixels inside the dilated mask set to 0.
    * ``lungs_segmented``: pixels outside the dilated mask set to 0 (CXR-Net's lung-segmented input, seed 003).
      An empty mask leaves a black image (the segment stage counts empty masks as implausible: :func:`implausible`).

    ``key`` names the params key in the error raised for an unknown mode.
    """
    if mode not in INPUT_MODES:
        raise ParamError(key, f"unknown input mode {mode!r}; valid modes are {list(INPUT_MODES)}")
    if isinstance(dilation, bool) or not isinstance(dilation, (int, np.integer)) or dilation < 0:
        raise ValueError(f"dilation must be an integer >= 0 (pixels), got {dilation!r}")
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, S, S), got shape {images.shape}")
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, S, S), got shape {masks.shape}")
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if images.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"mask size {masks.shape[-2]}x{masks.shape[-1]} differs from image size "
                         f"{images.shape[-2]}x{images.shape[-1]}")
    out = images.astype(np.uint8, copy=True)
    if mode == "full":
        return out
    for i in range(len(images)):
        m = dilate(masks[i], int(dilation))
        if mode == "lungs_removed":
            out[i][:, m] = 0
            continue
        if mode == "lungs_segmented":
            out[i][:, ~m] = 0
            continue
        if not m.any():
            continue
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        size = images.shape[-1]
        if images.shape[-2] != size:
            raise ValueError(f"lung_crop expects square images, got {images.shape[-2]}x{size}")
        out[i] = _resize_bilinear(images[i][:, r0:r1, c0:c1], size)
    return out


# --- figures ----------------------------------------------------------------

def overlay_grid(images: np.ndarray, true: np.ndarray, pred: np.ndarray, titles: Sequence[str],
                 path: str | Path, scores: Sequence[float] | None = None) -> None:
    """Rows of (image, true mask, predicted mask) for held-out images."""
    from cxrbench.core.plotting import plt, save

    n = len(images)
    fig, axes = plt.subplots(max(n, 1), 3, figsize=(7.5, 2.5 * max(n, 1)), squeeze=False)
    for i in range(n):
        img = images[i][0]
        for j, (m, name) in enumerate([(None, "image"), (true[i], "V7 mask"), (pred[i], "U-Net mask")]):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            if m is not None:
                ax.imshow(np.ma.masked_where(m == 0, m), cmap="autumn", alpha=0.45, vmin=0, vmax=1)
            label = name if j != 2 or scores is None else f"{name} (IoU {scores[i]:.2f})"
            ax.set_title(label if j else f"{titles[i][-32:]}", fontsize=7)
            ax.axis("off")
    fig.suptitle("Held-out (test split) lung segmentation")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    save(fig, path)


def contour_grid(groups: dict[str, tuple[np.ndarray, np.ndarray, Sequence[str]]], path: str | Path,
                 cols: int = 4) -> None:
    """One block per source: images with the contours of their lung masks."""
    from cxrbench.core.plotting import plt, save

    blocks = [(src, imgs, msks, names) for src, (imgs, msks, names) in groups.items() if len(imgs)]
    rows_per = [-(-len(b[1]) // cols) for b in blocks]
    total = max(sum(rows_per), 1)
    fig, axes = plt.subplots(total, cols, figsize=(2.4 * cols, 2.5 * total), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    r = 0
    for (src, imgs, msks, names), nr in zip(blocks, rows_per):
        for k in range(len(imgs)):
            ax = axes[r + k // cols, k % cols]
            ax.imshow(imgs[k][0], cmap="gray", vmin=0, vmax=255)
            for c in measure.find_contours(msks[k].astype(float), 0.5):
                ax.plot(c[:, 1], c[:, 0], color="lime", linewidth=0.8)
            ax.set_title(f"{src}\n{Path(names[k]).name[-24:]}", fontsize=6)
        r += nr
    fig.suptitle("U-Net lung masks (post-processed)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    save(fig, path)


LUNG_MASKS = paths.LUNG_MASKS


def load_lung_masks(n_images: int, path: str | Path = LUNG_MASKS, mmap: bool = False) -> np.ndarray:
    """The segment stage's masks (N, S, S), checked to be aligned with a cache of ``n_images`` images."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the segment stage (dvc repro segment)")
    masks = np.load(path, mmap_mode="r" if mmap else None)
    if len(masks) != n_images:
        raise ValueError(f"{path} holds {len(masks)} masks for {n_images} cache images: rerun segment")
    return masks


def validate_segment(params: dict) -> dict:
    """Check ``params: segment`` (the post-processing of the U-Net's masks and the grid); return it."""
    from cxrbench.core import params as P

    p = P.section(params, "segment")
    P.check_int("segment.components", p.get("components"), minimum=0)
    if not isinstance(p.get("fill_holes"), bool):
        raise P.ParamError("segment.fill_holes", f"expected true or false, got {p.get('fill_holes')!r}")
    P.check_fraction("segment.implausible_max_area", p.get("implausible_max_area"))
    P.check_int("segment.grid_images", p.get("grid_images"), minimum=0)
    return p


def mask_report(masks: np.ndarray, index, v7_masks, max_area: float) -> dict:
    """Lung-area fraction and connected components per source, the implausible masks (counted by reason and
    listed), and the Dice against the V7 masks where they exist. ``index``: the cache's index frame;
    ``v7_masks``: the cache's masks, aligned with it."""
    n = len(masks)
    frac = area_fraction(masks)
    bad = []
    for i in range(n):
        reasons = implausible(masks[i], max_area)
        if reasons:
            bad.append({"path": index["path"].iat[i], "source": index["source"].iat[i], "reasons": reasons})
    comps = np.array([n_components(m) for m in masks])
    by_source = {}
    for src in sorted(index["source"].unique()):
        sel = (index["source"] == src).to_numpy()
        c = comps[sel]
        by_source[src] = {"area_fraction": area_summary(frac[sel]),
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
    return {"by_source": by_source,
            "dice_vs_v7_all_masked_incl_train": summary(dice(masks[has], v7_masks[has])) if has.any() else None,
            "implausible": {"count": len(bad), "by_reason": reason_counts, "masks": bad}}


def grid_groups(images, masks: np.ndarray, index, per_source: int, seed: int) -> dict:
    """``per_source`` images of each source, drawn with ``seed``, for :func:`contour_grid`."""
    groups = {}
    rng = np.random.default_rng(seed)
    for src in sorted(index["source"].unique()):
        rows = np.flatnonzero((index["source"] == src).to_numpy())
        pick = np.sort(rng.choice(rows, size=min(per_source, len(rows)), replace=False))
        groups[src] = (images[pick], masks[pick], list(index["path"].to_numpy()[pick]))
    return groups
