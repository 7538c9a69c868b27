"""Altered copies: the same radiograph with burned-in text, arrows, a crop or a border.

A perceptual hash compares whole images, so a copy with "day 1" burned in
(extubation-1.jpg = AR-2.jpg of another patient id, 46 bits apart at 256 bits)
or cropped differently escapes it. Two steps find them:

1. **Candidates**: each image's ``candidates`` nearest images of other groups
   by the correlation of z-normalised thumbnails of the central region (the
   margins, where labels and borders sit, are cut off).
2. **Verification**: ORB keypoints (scikit-image) of both images are matched
   and a similarity transform is fitted with RANSAC; a pair is a copy when at
   least ``min_inliers`` matches agree with one transform. Text, arrows and
   crops remove some keypoints but leave the anatomy's hundreds in place;
   two different patients' films share almost none under one transform.

Linked images put their patient groups together (like near duplicates), so
no copy is ever on both sides of a split.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrbench.core.params import check_int, section
from cxrbench.core.runtime import progress as progress_bar
from cxrbench.data.dedupe import UnionFind
from cxrbench.data.images import load_grey

THUMB = 24            # thumbnail side (pixels) for the candidate search
MARGIN = 0.15         # share of each side cut off before the thumbnail
ORB_SIDE = 256        # longer side of the image ORB sees
ORB_KEYPOINTS = 300


def validate(params: dict) -> dict:
    p = section(params, "dedupe")
    check_int("dedupe.copy_candidates", p.get("copy_candidates"), minimum=0)
    check_int("dedupe.copy_min_inliers", p.get("copy_min_inliers"), minimum=8)
    return p


def _features(path: str):
    """(thumbnail vector, ORB keypoints (K, 2), packed descriptors (K, 32) uint8) of one image."""
    from skimage.feature import ORB

    grey = load_grey(path)
    im = Image.fromarray((grey * 255).astype(np.uint8))
    w, h = im.size
    thumb = im.crop((int(w * MARGIN), int(h * MARGIN), int(w * (1 - MARGIN)), int(h * (1 - MARGIN))))
    t = np.asarray(thumb.resize((THUMB, THUMB), Image.BILINEAR), np.float32).ravel()
    t -= t.mean()
    norm = np.linalg.norm(t)
    t = t / norm if norm > 0 else t
    s = ORB_SIDE / max(w, h)
    small = np.asarray(im.resize((max(8, round(w * s)), max(8, round(h * s))), Image.BILINEAR), np.float32) / 255
    orb = ORB(n_keypoints=ORB_KEYPOINTS, fast_threshold=0.05)
    try:
        orb.detect_and_extract(small)
        kp, desc = orb.keypoints.astype(np.float32), np.packbits(orb.descriptors, axis=1)
    except RuntimeError:          # a flat image has no keypoints: it can match nothing
        kp, desc = np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    return t, kp, desc


def inliers(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> int:
    """Matches of two images' ORB features that agree with one similarity transform (RANSAC)."""
    from skimage.feature import match_descriptors
    from skimage.measure import ransac
    from skimage.transform import SimilarityTransform

    (ka, da), (kb, db) = a, b
    if len(ka) < 8 or len(kb) < 8:
        return 0
    m = match_descriptors(np.unpackbits(da, axis=1).astype(bool), np.unpackbits(db, axis=1).astype(bool),
                          cross_check=True, max_ratio=0.8)
    if len(m) < 8:
        return 0
    with warnings.catch_warnings():          # "No inliers found": the usual answer for two different films
        warnings.filterwarnings("ignore", message="No inliers found")
        _, inl = ransac((ka[m[:, 0]][:, ::-1], kb[m[:, 1]][:, ::-1]), SimilarityTransform, min_samples=3,
                        residual_threshold=2, max_trials=500, rng=0)
    return int(inl.sum()) if inl is not None else 0


_SHARED: dict = {}


def _init(features):
    _SHARED["f"] = features


def _verify(pairs):
    f = _SHARED["f"]
    return [inliers(f[i], f[j]) for i, j in pairs]


def candidates(thumbs: np.ndarray, groups: np.ndarray, k: int, block: int = 512) -> list[tuple[int, int, float]]:
    """Each image's ``k`` most correlated thumbnails among other groups: unique pairs (i < j, correlation)."""
    out: dict[tuple[int, int], float] = {}
    n = len(thumbs)
    for start in range(0, n, block):
        sim = thumbs[start:start + block] @ thumbs.T
        rows = np.arange(start, min(start + block, n))
        sim[groups[rows][:, None] == groups[None, :]] = -np.inf      # same group (and self): never a candidate
        top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        for r, js in zip(rows, top):
            for j in js:
                if np.isfinite(sim[r - start, j]):
                    out[(min(r, int(j)), max(r, int(j)))] = float(sim[r - start, j])
    return [(i, j, c) for (i, j), c in sorted(out.items())]


def link_altered_copies(frame: pd.DataFrame, raw: Path, p: dict, workers: int) -> tuple[pd.DataFrame, dict]:
    """Find altered copies across patient groups and merge their groups; return the frame and a report."""
    k, min_inliers = p["copy_candidates"], p["copy_min_inliers"]
    report = {"copy_candidates": k, "copy_min_inliers": min_inliers, "candidate_pairs": 0,
              "altered_copies_across_groups": 0, "altered_copies": [], "groups_merged": 0}
    if k == 0 or len(frame) < 2:
        return frame, report
    paths = [str(Path(raw) / x) for x in frame["path"]]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        feats = list(progress_bar(pool.map(_features, paths, chunksize=8), total=len(paths),
                                  desc="copies: features", unit="img"))
    thumbs = np.stack([f[0] for f in feats])
    groups = frame["group"].to_numpy()
    pairs = candidates(thumbs, groups, k)
    report["candidate_pairs"] = len(pairs)
    orb = [(f[1], f[2]) for f in feats]
    chunks = [[(i, j) for i, j, _ in pairs[s:s + 64]] for s in range(0, len(pairs), 64)]
    with ProcessPoolExecutor(max_workers=workers, initializer=_init, initargs=(orb,)) as pool:
        counts = [c for chunk in progress_bar(pool.map(_verify, chunks), total=len(chunks),
                                              desc="copies: verify", unit="chunk") for c in chunk]
    uf = UnionFind(set(groups))
    for (i, j, corr), n in zip(pairs, counts):
        if n >= min_inliers:
            report["altered_copies"].append({"a": frame["path"].iat[i], "b": frame["path"].iat[j],
                                             "patients": [frame["patient"].iat[i], frame["patient"].iat[j]],
                                             "inliers": n, "thumbnail_correlation": round(corr, 4)})
            uf.union(groups[i], groups[j])
    report["altered_copies_across_groups"] = len(report["altered_copies"])
    bins, n_in = np.unique(np.minimum(np.asarray(counts, int) // 10 * 10, 200), return_counts=True)
    report["inlier_histogram"] = {f"{int(a)}-{int(a) + 9}" if a < 200 else "200+": int(b) for a, b in zip(bins, n_in)}
    frame = frame.copy()
    frame["group"] = [uf.find(g) for g in groups]
    report["groups_merged"] = int(len(set(groups)) - frame["group"].nunique())
    return frame, report
