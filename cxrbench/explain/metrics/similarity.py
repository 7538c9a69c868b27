"""Similarity of two maps of the same image, without the floors that inflate it: repeatability and randomisation.

Two pitfalls make two unrelated maps look alike (Arun et al. 2021; Binder et al. 2023):

* **pixels where the input is 0** (padding and clipping: 15-32 % of a preprocessed X-ray). Every input x
  gradient map is 0 there, so two independent maps share a block of tied zeros and correlate. Those pixels
  are left out (:func:`input_support`): Spearman over the kept pixels, SSIM averaged over the kept pixels of
  scikit-image's full SSIM map.
* **upsampled class-activation maps**. A CAM of a 64 px input and a stride-32 layer is a 2 x 2 map
  interpolated to 64 x 64; its pixel correlation is a correlation of 4 numbers with 1024-fold weight. CAMs
  (:data:`cxrbench.explain.metrics.robustness.CAMS`) are compared at the feature map's resolution
  (:func:`to_grid`: block means), a cell kept when most of its pixels are.

:func:`compare` returns, per image, a status (``compared``, ``degenerate``: a map constant over the kept
pixels, no similarity; ``too_small``: SSIM needs a 3 x 3 window, Spearman 3 kept values) and the values.
"""

from __future__ import annotations

import numpy as np

__all__ = ["input_support", "to_grid", "compare", "STATUSES"]

STATUSES = ("compared", "degenerate", "too_small")


def input_support(images) -> np.ndarray:
    """(N, H, W) bool: the pixels where the input (N, C, H, W) or (N, H, W) is not 0 in some channel."""
    a = np.asarray(images)
    return (a != 0).any(1) if a.ndim == 4 else a != 0


def to_grid(maps, keep, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) maps and kept pixels -> (N, side, side) block means and cells kept where more than half of the
    block's pixels are. ``H`` and ``W`` must be multiples of ``side`` (a stride-s layer of an input side
    divisible by s)."""
    m = np.asarray(maps, np.float64)
    n, h, w = m.shape
    if side < 1 or h % side or w % side:
        raise ValueError(f"to_grid: maps of {h} x {w} px do not divide into {side} x {side} cells")
    bh, bw = h // side, w // side
    grid = m.reshape(n, side, bh, side, bw).mean((2, 4))
    cells = np.asarray(keep, np.float64).reshape(n, side, bh, side, bw).mean((2, 4)) > 0.5
    return grid, cells


def _minmax(a: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``a`` scaled to [0, 1] by its range over the kept pixels, the others set to 0 (the same in both maps, so
    that they add no difference to a window at the support's edge)."""
    lo, hi = a[keep].min(), a[keep].max()
    return np.where(keep, (a - lo) / (hi - lo), 0.0) if hi > lo else np.zeros_like(a)


def compare(a, b, keep, metrics=("spearman_abs", "ssim")) -> dict:
    """Per image, the similarity of maps ``a`` and ``b`` (N, H, W) over the pixels ``keep`` (N, H, W bool):
    ``spearman_abs`` (scipy's Spearman of |a| and |b| over kept pixels), ``spearman`` (of the signed maps)
    and ``ssim`` (scikit-image SSIM of the maps min-max normalised over the kept pixels and 0 elsewhere,
    ``data_range=1``, 7 px window or the largest odd one that fits, averaged over
    the kept pixels). Returns ``status`` (:data:`STATUSES`, per image and metric: ``{metric}_status``) and
    one float array per metric (NaN unless compared)."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = np.asarray(keep, bool)
    if a.shape != b.shape or a.shape != keep.shape:
        raise ValueError(f"compare: maps {a.shape} and {b.shape} with support {keep.shape}")
    side = min(a.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    out: dict = {}
    for metric in metrics:
        if metric not in ("spearman", "spearman_abs", "ssim"):
            raise ValueError(f"unknown similarity {metric!r}: expected spearman, spearman_abs or ssim")
        values = np.full(len(a), np.nan)
        status = np.empty(len(a), dtype=object)
        for i in range(len(a)):
            k = keep[i]
            x, y = np.abs(a[i][k]) if metric == "spearman_abs" else a[i][k], \
                np.abs(b[i][k]) if metric == "spearman_abs" else b[i][k]
            if k.sum() < 3 or (metric == "ssim" and win < 3):
                status[i] = "too_small"
            elif np.ptp(x) == 0 or np.ptp(y) == 0:
                status[i] = "degenerate"
            elif metric in ("spearman", "spearman_abs"):
                status[i], values[i] = "compared", float(spearmanr(x, y).statistic)
            else:
                _, full = structural_similarity(_minmax(a[i], k), _minmax(b[i], k), data_range=1.0, win_size=win,
                                                full=True)
                status[i], values[i] = "compared", float(full[k].mean())
        out[metric], out[f"{metric}_status"] = values, status
    return out
