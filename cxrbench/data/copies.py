"""Altered copies: the same radiograph with burned-in text, arrows, a crop or a border, mirrored or turned.

A perceptual hash compares whole images, so a copy with "day 1" burned in
(extubation-1.jpg = AR-2.jpg of another patient id, 46 bits apart at 256 bits)
or cropped differently escapes it. Two steps find them:

1. **Candidates**: each image's ``candidates`` nearest images of other groups
   by the correlation of z-normalised thumbnails of the central region (the
   margins, where labels and borders sit, are cut off); and, as a second
   list, its ``candidates`` nearest by the best correlation with the other
   image's 7 other dihedral variants (mirrored left-right or upside down,
   turned by 90, 180 or 270 degrees, transposed): a re-uploaded copy is often
   mirrored or turned, which keeps the diagnosis but not the thumbnail.
2. **Verification**: ORB keypoints (scikit-image) of both images are matched
   and a similarity transform is fitted with RANSAC; a pair is a copy when at
   least ``min_inliers`` matches agree with one transform. Text, arrows and
   crops remove some keypoints but leave the anatomy's hundreds in place;
   two different patients' films share almost none under one transform.
   ORB is rotation invariant, a similarity is not a reflection: the second
   image's keypoints are also taken from its mirror image (a reflection is a
   similarity onto the mirrored image), and the better count decides.

The pairs and counts of copies as they are (no mirror, no turn) are those of
the thumbnail-only search: the dihedral candidates and the mirrored count are
added to them, never in their place.

Linked images put their patient groups together (like near duplicates), so
no copy is ever on both sides of a split.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrbench.core.params import check_int, section
from cxrbench.core.runtime import progress as progress_bar
from cxrbench.data import copy_store
from cxrbench.data.dedupe import UnionFind
from cxrbench.data.images import load_grey
from cxrbench.data.indexing import exact_hash

THUMB = 24            # thumbnail side (pixels) for the candidate search
MARGIN = 0.15         # share of each side cut off before the thumbnail
ORB_SIDE = 256        # longer side of the image ORB sees
ORB_KEYPOINTS = 300
NOT_VERIFIED = -1     # an inlier count not computed: fewer matches than the count asked for (inliers' need)
FEATURES_VERSION = 1  # raise when what _features computes changes: the index stage's kept features go stale


def feature_key(phash_size: int) -> np.ndarray:
    """What the features of an image depend on besides its bytes (:mod:`cxrbench.data.copy_store`)."""
    return np.array([FEATURES_VERSION, THUMB, MARGIN, ORB_SIDE, ORB_KEYPOINTS, phash_size], np.float64)


def validate(params: dict) -> dict:
    p = section(params, "dedupe")
    check_int("dedupe.copy_candidates", p.get("copy_candidates"), minimum=0)
    check_int("dedupe.copy_min_inliers", p.get("copy_min_inliers"), minimum=8)
    return p


def _orb(small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ORB keypoints (K, 2) and packed descriptors (K, 32) uint8 of an image of ``ORB_SIDE`` pixels."""
    from skimage.feature import ORB

    orb = ORB(n_keypoints=ORB_KEYPOINTS, fast_threshold=0.05)
    try:
        orb.detect_and_extract(small)
        return orb.keypoints.astype(np.float32), np.packbits(orb.descriptors, axis=1)
    except RuntimeError:          # a flat image has no keypoints: it can match nothing
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)


def _features(path: str, loader=load_grey, hash_size: int = 0):
    """(thumbnail vector, (ORB keypoints, packed descriptors), the same of the mirror image) of one image;
    with ``hash_size``, its exact hash and perceptual hash (as the index makes them) follow. ``loader``
    returning None (an unreadable file): a blank entry that matches nothing."""
    grey = loader(path)
    if grey is None:
        empty = (np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))
        return (np.zeros(THUMB * THUMB, np.float32), empty, empty) + (("", "") if hash_size else ())
    im = Image.fromarray((grey * 255).astype(np.uint8))
    w, h = im.size
    thumb = im.crop((int(w * MARGIN), int(h * MARGIN), int(w * (1 - MARGIN)), int(h * (1 - MARGIN))))
    t = np.asarray(thumb.resize((THUMB, THUMB), Image.BILINEAR), np.float32).ravel()
    t -= t.mean()
    norm = np.linalg.norm(t)
    t = t / norm if norm > 0 else t
    s = ORB_SIDE / max(w, h)
    small = np.asarray(im.resize((max(8, round(w * s)), max(8, round(h * s))), Image.BILINEAR), np.float32) / 255
    out = (t, _orb(small), _orb(np.ascontiguousarray(small[:, ::-1])))
    if hash_size:
        import imagehash

        u8 = Image.fromarray(np.round(grey * 255).astype(np.uint8))
        out += (exact_hash(grey), str(imagehash.phash(u8, hash_size=hash_size)))
    return out


def dihedral(thumbs: np.ndarray) -> np.ndarray:
    """(N, 8, THUMB * THUMB): each thumbnail as it is (variant 0), turned by 90, 180, 270 degrees, mirrored
    left-right and mirrored then turned (the dihedral group of the square: every flip and right angle)."""
    sq = thumbs.reshape(len(thumbs), THUMB, THUMB)
    out = [np.rot90(v, k, axes=(1, 2)) for v in (sq, sq[:, :, ::-1]) for k in range(4)]
    return np.stack(out, axis=1).reshape(len(thumbs), 8, THUMB * THUMB)


def match(da: np.ndarray, db: np.ndarray, max_ratio: float = 0.8) -> np.ndarray:
    """Cross-checked matches (Q, 2) of packed binary descriptors with a ratio test: what
    ``skimage.feature.match_descriptors(..., cross_check=True, max_ratio=max_ratio)`` returns on the unpacked
    bits (the same Hamming distances, as fractions of the bits, and the same ties), from popcounts of the
    packed bytes, several times faster."""
    bits = 8.0 * da.shape[1]
    if da.shape[1] % 8 == 0:                 # 64-bit words: 8 times fewer popcounts
        da, db = np.ascontiguousarray(da).view(np.uint64), np.ascontiguousarray(db).view(np.uint64)
    distances = np.bitwise_count(da[:, None, :] ^ db[None, :, :]).sum(axis=-1, dtype=np.int64) / bits
    indices1 = np.arange(da.shape[0])
    indices2 = np.argmin(distances, axis=1)
    matches1 = np.argmin(distances, axis=0)
    mask = indices1 == matches1[indices2]
    indices1, indices2 = indices1[mask], indices2[mask]
    best = distances[indices1, indices2]
    distances[indices1, indices2] = np.inf
    second = distances[indices1, np.argmin(distances[indices1], axis=1)]
    second[second == 0] = np.finfo(np.float64).eps
    keep = best / second < max_ratio
    return np.column_stack((indices1[keep], indices2[keep]))


def inliers(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], need: int = 0) -> int:
    """Matches of two images' ORB features that agree with one similarity transform (RANSAC).

    ``need``: only whether the count reaches ``need`` matters to the caller. The inliers are a subset of the
    matches, so with fewer matches than ``need`` the count cannot reach it: :data:`NOT_VERIFIED` is returned
    without RANSAC (500 trials, most of a pair's time). Every other count is exact."""
    from skimage.measure import ransac
    from skimage.transform import SimilarityTransform

    (ka, da), (kb, db) = a, b
    if len(ka) < 8 or len(kb) < 8:
        return 0
    if len(ka) < need or len(kb) < need:
        return NOT_VERIFIED
    m = match(da, db)
    if len(m) < need:
        return NOT_VERIFIED
    if len(m) < 8:
        return 0
    with warnings.catch_warnings():          # "No inliers found": the usual answer for two different films
        warnings.filterwarnings("ignore", message="No inliers found")
        _, inl = ransac((ka[m[:, 0]][:, ::-1], kb[m[:, 1]][:, ::-1]), SimilarityTransform, min_samples=3,
                        residual_threshold=2, max_trials=500, rng=0)
    return int(inl.sum()) if inl is not None else 0


_SHARED: dict = {}


def _init(features, need: int = 0):
    _SHARED["f"], _SHARED["need"] = features, need


def verify_pair(a, b, need: int = 0) -> tuple[int, int]:
    """(inliers of ``a`` with ``b`` as it is, with ``b``'s mirror image); ``a``, ``b``: :func:`_features`;
    ``need``: as :func:`inliers`."""
    return inliers(a[1], b[1], need), inliers(a[1], b[2], need)


def _verify(pairs):
    f, need = _SHARED["f"], _SHARED["need"]
    return [verify_pair(f[i], f[j], need) for i, j in pairs]


def candidates(thumbs: np.ndarray, groups: np.ndarray, k: int, block: int = 512,
               turned: bool = False) -> list[tuple[int, int, float]]:
    """Each image's ``k`` most correlated thumbnails among other groups: unique pairs (i < j, correlation).

    ``turned``: the correlation with the best of the other image's 7 other dihedral variants (mirrored,
    turned, both; :func:`dihedral`) instead of the thumbnail as it is."""
    out: dict[tuple[int, int], float] = {}
    n = len(thumbs)
    variants = dihedral(thumbs)[:, 1:] if turned else None
    for start in range(0, n, block):
        if turned:
            sim = np.max([thumbs[start:start + block] @ variants[:, d].T for d in range(variants.shape[1])], axis=0)
        else:
            sim = thumbs[start:start + block] @ thumbs.T
        rows = np.arange(start, min(start + block, n))
        sim[groups[rows][:, None] == groups[None, :]] = -np.inf      # same group (and self): never a candidate
        top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        for r, js in zip(rows, top):
            for j in js:
                if np.isfinite(sim[r - start, j]):
                    out[(min(r, int(j)), max(r, int(j)))] = float(sim[r - start, j])
    return [(i, j, c) for (i, j), c in sorted(out.items())]


def all_candidates(thumbs: np.ndarray, groups: np.ndarray, k: int) -> list[tuple[int, int, float]]:
    """The pairs of :func:`candidates` as they are, then those of its dihedral variants not among them."""
    pairs = {(i, j): c for i, j, c in candidates(thumbs, groups, k)}
    for i, j, c in candidates(thumbs, groups, k, turned=True):
        pairs.setdefault((i, j), c)
    return [(i, j, c) for (i, j), c in sorted(pairs.items())]


def features(paths: list[str], workers: int, loader=load_grey, hash_size: int = 0, desc: str = "copies") -> list:
    """:func:`_features` of every path, in worker processes."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(progress_bar(pool.map(partial(_features, loader=loader, hash_size=hash_size), paths,
                                          chunksize=8), total=len(paths), desc=f"{desc}: features", unit="img"))


def verify(pairs: list[tuple[int, int]], feats: list, workers: int, desc: str = "copies",
           need: int = 0) -> list[tuple[int, int]]:
    """:func:`verify_pair` of every pair of indices into ``feats``, in worker processes. ``need``: as
    :func:`inliers` (0: every count exact, as the index's inlier histogram reports them)."""
    if not pairs:
        return []
    chunks = [pairs[s:s + 64] for s in range(0, len(pairs), 64)]
    with ProcessPoolExecutor(max_workers=workers, initializer=_init, initargs=(feats, need)) as pool:
        return [c for chunk in progress_bar(pool.map(_verify, chunks), total=len(chunks),
                                            desc=f"{desc}: verify", unit="chunk") for c in chunk]


def link_altered_copies(frame: pd.DataFrame, raw: Path, p: dict, workers: int,
                        keep: str | Path | None = None) -> tuple[pd.DataFrame, dict]:
    """Find altered copies across patient groups and merge their groups; return the frame and a report.
    ``keep``: write every image's features there (:mod:`cxrbench.data.copy_store`; no image when none was
    computed), with the frame's ``exact_hash`` and ``phash`` (made with ``phash_size`` as ``_features``)."""
    k, min_inliers = p["copy_candidates"], p["copy_min_inliers"]
    report = {"copy_candidates": k, "copy_min_inliers": min_inliers, "candidate_pairs": 0,
              "altered_copies_across_groups": 0, "altered_copies": [], "groups_merged": 0}
    if k == 0 or len(frame) < 2:
        if keep is not None:
            copy_store.save(keep, feature_key(p["phash_size"]), [], [], [], [], [])
        return frame, report
    paths = [str(Path(raw) / x) for x in frame["path"]]
    feats = features(paths, workers)
    if keep is not None:
        copy_store.save(keep, feature_key(p["phash_size"]), frame["path"].tolist(),
                        [copy_store.file_digest(x) for x in paths], feats, frame["exact_hash"].tolist(),
                        frame["phash"].tolist())
    thumbs = np.stack([f[0] for f in feats])
    groups = frame["group"].to_numpy()
    pairs = all_candidates(thumbs, groups, k)
    report["candidate_pairs"] = len(pairs)
    # RANSAC only where the matches could reach copy_min_inliers (the pairs under it cannot be copies)
    both = verify([(i, j) for i, j, _ in pairs], feats, workers, need=min_inliers)
    counts = [max(n) for n in both]
    uf = UnionFind(set(groups))
    for (i, j, corr), n, (as_is, mirror) in zip(pairs, counts, both):
        if n >= min_inliers:
            report["altered_copies"].append({"a": frame["path"].iat[i], "b": frame["path"].iat[j],
                                             "patients": [frame["patient"].iat[i], frame["patient"].iat[j]],
                                             "inliers": n, "mirrored": bool(mirror > as_is),
                                             "thumbnail_correlation": round(corr, 4)})
            uf.union(groups[i], groups[j])
    report["altered_copies_across_groups"] = len(report["altered_copies"])
    verified = np.asarray([n for n in counts if n != NOT_VERIFIED], int)
    report["pairs_under_min_matches"] = len(counts) - len(verified)     # fewer matches than copy_min_inliers
    bins, n_in = np.unique(np.minimum(verified // 10 * 10, 200), return_counts=True)
    report["inlier_histogram"] = {f"{int(a)}-{int(a) + 9}" if a < 200 else "200+": int(b) for a, b in zip(bins, n_in)}
    frame = frame.copy()
    frame["group"] = [uf.find(g) for g in groups]
    report["groups_merged"] = int(len(set(groups)) - frame["group"].nunique())
    return frame, report


def copies_between(query: list[str], ref: list[str], p: dict, workers: int, loader=load_grey,
                   desc: str = "copies", ref_features: list | None = None) -> list[dict]:
    """The images of ``query`` that are copies of images of ``ref`` (file paths): ``exact`` (the same decoded
    pixels), ``near`` (perceptual hashes within ``phash_max_distance``) or ``altered`` (the candidates and
    verification above, every dihedral variant). One entry per query image found, its first match in this
    order: ``{"query": i, "ref": j, "kind", "inliers", "mirrored", "hash_distance"}``. ``p``: the ``dedupe``
    section. ``ref_features``: known features of the ``ref`` images (``_features`` with ``phash_size``; None
    for one to compute), e.g. those the index stage kept."""
    from cxrbench.data.dedupe import near_pairs, phash_bits

    nq = len(query)
    if nq == 0 or not ref:
        return []
    known = list(ref_features) if ref_features is not None else [None] * len(ref)
    if len(known) != len(ref):
        raise ValueError(f"copies_between: {len(known)} ref_features for {len(ref)} reference images")
    todo = list(query) + [r for r, f in zip(ref, known) if f is None]
    computed = features(todo, workers, loader, p["phash_size"], desc)
    rest = iter(computed[nq:])
    feats = computed[:nq] + [f if f is not None else next(rest) for f in known]
    found: dict[int, dict] = {}
    first_ref = {}
    for j in range(len(ref) - 1, -1, -1):
        if feats[nq + j][3]:
            first_ref[feats[nq + j][3]] = j
    for i in range(nq):
        if feats[i][3] in first_ref:
            found[i] = {"query": i, "ref": first_ref[feats[i][3]], "kind": "exact", "inliers": None,
                        "mirrored": False, "hash_distance": 0}
    readable = [k for k, f in enumerate(feats) if f[4]]
    for a, b, dist in near_pairs(phash_bits([feats[k][4] for k in readable]), p["phash_max_distance"]):
        i, j = readable[a], readable[b]          # i < j: a query image and a reference image, or neither
        if i < nq <= j and i not in found:
            found[i] = {"query": i, "ref": j - nq, "kind": "near", "inliers": None, "mirrored": False,
                        "hash_distance": dist}
    k = p["copy_candidates"]
    if k:
        groups = np.array([0] * nq + [1] * len(ref))          # only query-reference pairs are candidates
        pairs = [(i, j) for i, j, _ in all_candidates(np.stack([f[0] for f in feats]), groups, k)
                 if i not in found]
        # only a count reaching copy_min_inliers decides (and is reported): RANSAC is skipped below it
        for (i, j), (as_is, mirror) in zip(pairs, verify(pairs, feats, workers, desc, p["copy_min_inliers"])):
            if max(as_is, mirror) >= p["copy_min_inliers"] and i not in found:
                found[i] = {"query": i, "ref": j - nq, "kind": "altered", "inliers": max(as_is, mirror),
                            "mirrored": bool(mirror > as_is), "hash_distance": None}
    return [found[i] for i in sorted(found)]
