"""The copy search's per-image features, kept by the index stage for the external stage.

The external stage compares every image of an outside source with every study image (``data/index.csv``)
as the index stage compares the study images with each other (:mod:`cxrbench.data.copies`). The ORB
keypoints of a study image cost about 0.1 s of CPU, and in the ``ci`` profile recomputing them for the
826 study images was about 45 of the external stage's 108 s. The index stage writes them here; the
external stage takes an image's features only where the file's bytes (SHA-1) and the ``key`` (the feature
code's version, its constants and ``dedupe.phash_size``: :func:`cxrbench.data.copies.feature_key`) are
those they were computed from, and computes the rest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cxrbench.core.io import atomic_path

__all__ = ["file_digest", "save", "load", "lookup"]


def file_digest(path: str | Path) -> str:
    """SHA-1 of the file's bytes ('' when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha1").hexdigest()
    except OSError:
        return ""


def save(path: str | Path, key: np.ndarray, rel_paths: list[str], digests: list[str], feats: list,
         exact: list[str], phash: list[str]) -> None:
    """Write the features (``copies._features`` without hashes: thumbnail, ORB as is, ORB mirrored) of the
    images ``rel_paths`` (paths under data/raw), their file digests and the index's hashes, atomically."""
    n = len(rel_paths)
    orbs = [f[k] for f in feats for k in (1, 2)]
    counts = np.array([len(o[0]) for o in orbs], np.int64).reshape(n, 2)
    thumbs = np.stack([f[0] for f in feats]).astype(np.float32) if n else np.zeros((0, 0), np.float32)
    kp = np.concatenate([o[0] for o in orbs]).astype(np.float32) if orbs else np.zeros((0, 2), np.float32)
    desc = np.concatenate([o[1] for o in orbs]).astype(np.uint8) if orbs else np.zeros((0, 32), np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.asarray(key, np.float64), paths=np.array(rel_paths, dtype=str).reshape(n),
                     digests=np.array(digests, dtype=str).reshape(n), exact=np.array(exact, dtype=str).reshape(n),
                     phash=np.array(phash, dtype=str).reshape(n), thumbs=thumbs, counts=counts, keypoints=kp,
                     descriptors=desc)


def load(path: str | Path, key: np.ndarray) -> tuple[dict, str | None]:
    """({rel path: (digest, (thumb, orb, orb mirrored, exact hash, phash))}, None), or ({}, why not used)."""
    path = Path(path)
    if not path.is_file():
        return {}, f"{path} not found (the index stage writes it)"
    try:
        z = np.load(path, allow_pickle=False)
        if not np.array_equal(z["key"], np.asarray(key, np.float64)):
            return {}, f"{path} was computed by other feature code or another dedupe.phash_size: rerun the index stage"
        counts, kp, desc = z["counts"], z["keypoints"], z["descriptors"]
        ends = np.cumsum(counts.ravel())
        starts = ends - counts.ravel()
        out = {}
        for i, rel in enumerate(z["paths"].tolist()):
            a, b = (slice(starts[2 * i + k], ends[2 * i + k]) for k in (0, 1))
            out[rel] = (str(z["digests"][i]), (z["thumbs"][i], (kp[a], desc[a]), (kp[b], desc[b]),
                                               str(z["exact"][i]), str(z["phash"][i])))
        return out, None
    except (OSError, ValueError, KeyError) as err:
        return {}, f"{path} could not be read ({type(err).__name__}: {err}): rerun the index stage"


def lookup(cached: dict, rel: str, file: str | Path):
    """The cached features of ``rel`` if ``file``'s bytes are those they were computed from, else None."""
    entry = cached.get(rel)
    if entry is None:
        return None
    digest, feats = entry
    return feats if digest and digest == file_digest(file) else None
