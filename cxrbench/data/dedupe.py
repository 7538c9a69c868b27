"""Exact and near duplicates, and the patient groups that keep them in one split.

* exact duplicates: identical decoded pixels (``exact_hash``); every copy but
  the first (by path) is dropped.
* near duplicates: perceptual hashes (``phash``, ``phash_size`` squared bits)
  within a Hamming distance. ``merge`` puts their patients in one group; ``drop`` keeps only the
  first image of each cluster.

Patients linked by any duplicate share one ``group``; splits are made by group,
so no image, nor its copy, nor its patient, is ever on both sides of a split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrbench.core.params import ParamError, check_choice, check_int, section

NEAR_ACTIONS = ("merge", "drop")


def validate(params: dict) -> dict:
    p = section(params, "dedupe")
    size = check_int("dedupe.phash_size", p.get("phash_size"), minimum=8, maximum=32)
    if size % 8:
        raise ParamError("dedupe.phash_size", f"must be a multiple of 8 (8, 16, 24, 32), got {size}")
    check_int("dedupe.phash_max_distance", p.get("phash_max_distance"), minimum=0, maximum=size * size)
    check_choice("dedupe.near_action", p.get("near_action"), NEAR_ACTIONS)
    return p


class UnionFind:
    def __init__(self, items):
        self.parent = {i: i for i in items}

    def find(self, x):
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def phash_bits(hexes) -> np.ndarray:
    """Perceptual hashes (hex strings of equal length) as an (N, words) uint64 array."""
    hexes = list(hexes)
    width = max((len(h) for h in hexes), default=16)
    if width % 16 or any(len(h) != width for h in hexes):
        raise ValueError("perceptual hashes must all have the same length, a multiple of 64 bits")
    return np.array([[int(h[i:i + 16], 16) for i in range(0, width, 16)] for h in hexes],
                    dtype=np.uint64).reshape(len(hexes), width // 16)


def near_pairs(hashes: np.ndarray, max_distance: int, block: int = 1024) -> list[tuple[int, int, int]]:
    """All pairs (i < j) whose Hamming distance is <= ``max_distance``, with the distance.

    ``hashes`` is (N, words) uint64. Vectorised in blocks of rows.
    """
    pairs = []
    hashes = hashes.reshape(len(hashes), -1)
    n = len(hashes)
    for start in range(0, n, block):
        a = hashes[start:start + block, None, :]
        dist = np.bitwise_count(np.bitwise_xor(a, hashes[None, :, :])).sum(axis=-1, dtype=np.int64)
        ii, jj = np.nonzero(dist <= max_distance)
        for i, j in zip(ii + start, jj):
            if i < j:
                pairs.append((int(i), int(j), int(dist[i - start, j])))
    return pairs


def dedupe(frame: pd.DataFrame, max_distance: int, near_action: str,
           drop_exact: bool = True) -> tuple[pd.DataFrame, dict]:
    """Drop exact copies, handle near duplicates, and add the ``group`` column.

    ``drop_exact=False`` (the authors' cohort, kept image for image) only links
    the patients of copies into one group.

    Returns the kept rows (sorted by path) and a report for metrics/data.json.
    """
    frame = frame.sort_values("path", kind="stable").reset_index(drop=True)
    linked = [[q for q in str(s).split("|") if q] for s in frame.get("linked_patients", [""] * len(frame))]
    uf = UnionFind(set(frame["patient"]) | {q for qs in linked for q in qs})
    # one file listed upstream under several patient ids: the same person
    for p, qs in zip(frame["patient"], linked):
        for q in qs:
            uf.union(p, q)

    # exact: keep the first copy, link the patients of every copy
    first = frame.groupby("exact_hash", sort=False)["path"].transform("first")
    is_copy = frame["path"] != first
    exact_groups = []
    for _, sub in frame[frame["exact_hash"].duplicated(keep=False)].groupby("exact_hash", sort=True):
        exact_groups.append(sub["path"].tolist())
        pats = sub["patient"].tolist()
        for p in pats[1:]:
            uf.union(pats[0], p)
    if not drop_exact:
        is_copy = pd.Series(False, index=frame.index)
    kept = frame[~is_copy].reset_index(drop=True)

    # near: pairs within the distance
    pairs = near_pairs(phash_bits(kept["phash"]), max_distance)
    cross = [(i, j, d) for i, j, d in pairs if kept.at[i, "patient"] != kept.at[j, "patient"]]
    cross_paths = [[kept.at[i, "path"], kept.at[j, "path"], d] for i, j, d in cross]
    drop_idx: set[int] = set()
    if near_action == "merge":
        for i, j, _ in cross:
            uf.union(kept.at[i, "patient"], kept.at[j, "patient"])
    else:  # drop: in each cluster of cross-patient near duplicates keep the first image
        img_uf = UnionFind(range(len(kept)))
        for i, j, _ in cross:
            img_uf.union(i, j)
        for i, j, _ in cross:
            for k in (i, j):
                if img_uf.find(k) != k:
                    drop_idx.add(k)
        kept = kept.drop(index=sorted(drop_idx)).reset_index(drop=True)

    kept["group"] = [uf.find(p) for p in kept["patient"]]
    report = {
        "exact_duplicate_sets": len(exact_groups),
        "exact_copies_dropped": int(is_copy.sum()),
        "exact_duplicates": exact_groups,
        "near_duplicate_pairs": len(pairs),
        "near_duplicate_pairs_across_patients": len(cross),
        "near_duplicates_across_patients": cross_paths,
        "near_action": near_action,
        "near_copies_dropped": len(drop_idx),
        "patients": int(kept["patient"].nunique()),
        "groups": int(kept["group"].nunique()),
        "patients_merged_into_shared_groups": int(kept["patient"].nunique() - kept["group"].nunique()),
    }
    return kept, report
