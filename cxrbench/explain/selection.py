"""The images the attribute stage explains: a seeded, patient-stratified sample of the held-out test images
positive for each target class (one image per patient, drawn at random within each source), what that
sample holds (images, patients, sources), and the lung masks the maps are scored with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.core import params as P
from cxrbench.core import paths
from cxrbench.data import splitting
from cxrbench.data.cache import Cache
from cxrbench.lungs.segmentation import LUNG_MASKS, load_lung_masks

RULE = ("per target class: one image per patient, explain.max_images patients drawn at random (explain.sample_seed) "
        "within each source, in proportion to the source's patients (largest remainder)")


def lung_masks(cache: Cache) -> tuple[np.ndarray, str]:
    """The segmentation stage's masks when present, else the cache's V7 masks."""
    if Path(LUNG_MASKS).is_file():
        return load_lung_masks(len(cache.index), mmap=True), LUNG_MASKS
    return cache.masks, paths.CACHE_MASKS


def allocate(counts: dict[str, int], n: int) -> dict[str, int]:
    """``n`` draws shared among strata in proportion to ``counts`` (largest remainder; ties by stratum name),
    none above its count; all of every stratum when ``n`` >= their total."""
    total = sum(counts.values())
    if n >= total:
        return dict(counts)
    quota = {k: n * c / total for k, c in counts.items()}
    out = {k: min(counts[k], int(np.floor(q))) for k, q in quota.items()}
    order = sorted(counts, key=lambda k: (-(quota[k] - np.floor(quota[k])), k))
    while sum(out.values()) < n:                        # largest remainder first, then any stratum with room
        for k in order + sorted(counts, key=lambda k: (-(counts[k] - out[k]), k)):
            if out[k] < counts[k]:
                out[k] += 1
                break
    return out


def sample(test: pd.DataFrame, target: str, n: int, seed: int) -> pd.DataFrame:
    """At most ``n`` images of ``test`` positive for ``target``: one per patient, patients drawn at random
    within each source (:func:`allocate`), one of each drawn patient's images at random. Seeded by ``seed``
    alone: the same test images give the same sample in every fold and model. Sorted by source, patient."""
    for col in ("path", "patient", "source"):
        if col not in test.columns:
            raise ValueError(f"{paths.INDEX} has no column {col!r}: rerun the index stage")
    pos = test[test[f"y_{target}"] == 1].sort_values("path", kind="stable")
    patients = pos.groupby("source")["patient"].unique()
    take = allocate({s: len(p) for s, p in patients.items()}, n)
    rng = np.random.default_rng(seed)
    chosen = []
    for src in sorted(take):
        pts = sorted(patients[src])
        for pid in sorted(rng.permutation(len(pts))[:take[src]]):
            rows = pos.index[(pos["source"] == src).to_numpy() & (pos["patient"] == pts[pid]).to_numpy()]
            chosen.append(rows[int(rng.integers(len(rows)))])
    return pos.loc[chosen]


def test_images(cache: Cache, fold: int) -> pd.DataFrame:
    """The index rows of ``fold``'s held-out test images."""
    splits = pd.read_csv(paths.SPLITS, keep_default_na=False)
    test_paths = splitting.fold_parts(splits, fold)["test"]["path"]
    return cache.index[cache.index["path"].isin(set(test_paths))]


def select(cache: Cache, targets: list, max_images: int, fold: int, seed: int = 0) -> pd.DataFrame:
    """Held-out test images of ``fold`` positive for each target class: :func:`sample` of ``max_images``
    patients each, column ``target_name`` added."""
    test = test_images(cache, fold)
    parts = []
    for t in targets:
        if f"y_{t}" not in test.columns:
            raise P.ParamError("explain.targets", f"{t!r} is not a label column of {paths.INDEX}")
        sub = sample(test, t, max_images, seed).copy()
        sub["target_name"] = t
        parts.append(sub)
    return pd.concat(parts) if parts else test.iloc[:0]


def describe(sel: pd.DataFrame, available: pd.DataFrame | None = None, seed: int | None = None) -> dict:
    """What a selection holds: images, patients and images per source, per target class and in all; with
    ``available`` (the test images it was drawn from) the patients it could have drawn from."""
    def one(frame: pd.DataFrame) -> dict:
        return {"images": int(len(frame)), "patients": int(frame["patient"].nunique()) if len(frame) else 0,
                "sources": {str(k): int(v) for k, v in frame["source"].value_counts().sort_index().items()}}

    out = {**one(sel), "rule": RULE, "seed": seed, "paths": [str(p) for p in sel["path"]],
           "patient_ids": sorted({str(p) for p in sel["patient"]}),
           "per_target": {str(t): one(g) for t, g in sel.groupby("target_name")} if len(sel) else {}}
    if available is not None:
        for t, entry in out["per_target"].items():
            pos = available[available[f"y_{t}"] == 1]
            entry["patients_available"] = int(pos["patient"].nunique())
            entry["images_available"] = int(len(pos))
    return out
