"""A source kept apart from the study: its study patients dropped or refused, the patients of copies of study
images (exact, near or altered: mirrored, turned, cropped, re-encoded) dropped or refused, pixel-identical
images refused, and at most ``external.max_images_per_class`` images per finding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data import copies, copy_store
from cxrbench.data.images import DECODE_ERRORS
from cxrbench.studies.external.sources import ExternalError, OverlapError, Source
from cxrbench.studies.predict import inputs as PI

SHOWN = 20                                      # names listed in an error before "and N more"


def study_patients(index: pd.DataFrame) -> set[str]:
    """Every patient with an image in the study, linked patients (one file listed under two ids) included."""
    out = set(index["patient"].astype(str))
    for linked in index.get("linked_patients", pd.Series(dtype=str)).fillna("").astype(str):
        out.update(p for p in linked.split("|") if p)
    return out


def _listed(items: list[str]) -> str:
    items = sorted(items)
    return ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def separate_from_study(frame: pd.DataFrame, index: pd.DataFrame, src: Source) -> tuple[pd.DataFrame, dict]:
    """Drop (``exclude_study_patients``) or refuse the study's patients, then verify the rest is disjoint.

    Refused: an :class:`OverlapError` naming the shared patients. Verified after any exclusion: no patient
    and no file of data/index.csv remains.
    """
    shared = sorted(set(frame["patient"]) & study_patients(index))
    shared_paths = sorted(set(frame["path"]) & set(index["path"]))
    excluded = {"patients": 0, "images": 0}
    if shared or shared_paths:
        if not src.exclude_study_patients:
            raise OverlapError(
                f"external source `{src.name}` ({src.key}) shares {len(shared)} patient(s) with the study "
                f"(data/index.csv, training, validation or test): {_listed(shared)}"
                + (f"; and {len(shared_paths)} file(s): {_listed(shared_paths)}" if shared_paths else "")
                + f". A model has seen these patients, so their images are not external: remove them from the "
                  f"source, or set {src.key}.exclude_study_patients: true to score only the other patients")
        drop = frame["patient"].isin(shared) | frame["path"].isin(shared_paths)
        excluded = {"patients": len(shared), "images": int(drop.sum())}
        frame = frame.loc[~drop].reset_index(drop=True)
    still = sorted(set(frame["patient"]) & study_patients(index)) + sorted(set(frame["path"]) & set(index["path"]))
    if still:                                   # cannot happen after the exclusion above: the contract, checked
        raise OverlapError(f"external source `{src.name}`: {_listed(still)} still in data/index.csv after exclusion")
    if frame.empty:
        raise ExternalError(f"external source `{src.name}` ({src.key}) has no image left of a patient outside the "
                            f"study ({excluded['images']} image(s) of {excluded['patients']} study patient(s) "
                            f"excluded): nothing external to score")
    return frame, excluded


def cap_per_class(frame: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    """At most ``cap`` images per finding, drawn with ``seed`` (None: all), in path order."""
    if cap is None:
        return frame
    rng = np.random.default_rng(seed)
    keep = []
    for _, sub in frame.groupby("finding", sort=True):
        idx = sub.index.to_numpy()
        keep.append(np.sort(rng.choice(idx, size=cap, replace=False)) if len(idx) > cap else idx)
    return frame.loc[np.sort(np.concatenate(keep))].reset_index(drop=True)


def refuse_identical(frame: pd.DataFrame, state: pd.DataFrame, index: pd.DataFrame, src: Source) -> None:
    """A file whose decoded pixels equal a study image (the index's exact hash) is not external: an error."""
    study = dict(zip(index["exact_hash"], index["path"]))
    same = [f"{p} = {study[h]}" for p, h in zip(frame["path"], state["exact_hash"]) if h and h in study]
    if same:
        raise OverlapError(f"external source `{src.name}` ({src.key}): {len(same)} image(s) are pixel-identical to "
                           f"images of the study (data/index.csv) under other patient ids: {_listed(same)}. A model "
                           f"has seen them: remove them from the source")


def _load_or_none(path: str):
    """A source image decoded as the stage decodes it, or None where it cannot be read (it is then listed as
    unreadable when the images are prepared, and can be a copy of nothing)."""
    expected = PI._dicom_errors() if Path(path).suffix.lower() in PI.DICOM_SUFFIXES else DECODE_ERRORS
    try:
        return PI.load_image(path)
    except expected:
        return None


def kept_features(index: pd.DataFrame, raw: Path, dedupe: dict, kept: str | Path) -> list:
    """The index stage's copy-search features (:mod:`cxrbench.data.copy_store`) of each image of
    ``index``, None for one to compute (a DICOM file, a file changed since, or no usable store); read once
    per stage, for every source's :func:`separate_copies`. Says how many it reuses."""
    cached, why = copy_store.load(kept, copies.feature_key(dedupe["phash_size"]))
    files = [Path(raw) / x for x in index["path"]]
    known = [None if f.suffix.lower() in PI.DICOM_SUFFIXES else copy_store.lookup(cached, rel, f)
             for rel, f in zip(index["path"], files)]
    reused = sum(k is not None for k in known)
    print(f"external: the copy search reuses the index stage's features of {reused} of {len(files)} study "
          f"images" + (f" ({why})" if why else " (the others' files changed since: computed)"
                       if reused < len(files) else ""), flush=True)
    return known


def separate_copies(frame: pd.DataFrame, index: pd.DataFrame, raw: Path, src: Source, dedupe: dict,
                    workers: int = 1, study_features: list | None = None) -> tuple[pd.DataFrame, dict]:
    """Drop (``exclude_study_patients``) or refuse the patients of images that are copies of study images.

    A copy is found as the index stage finds one (:func:`cxrbench.data.copies.copies_between`: the same
    pixels, a perceptual hash within ``dedupe.phash_max_distance``, or ORB keypoints under one similarity of
    any flip or right-angle turn), against every image of data/index.csv read from ``raw``. Its patient is a
    study patient under another id: all their images go. Returns the frame and the count for the metrics.
    ``study_features``: :func:`kept_features` of ``index`` (None: every study image's features computed)."""
    files = [Path(raw) / x for x in index["path"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ExternalError(f"{len(missing)} image(s) of data/index.csv are missing ({_listed(missing)}): the "
                            f"external stage compares every source image with the study's images; download "
                            f"them again (dvc repro download)")
    found = copies.copies_between(frame["file"].tolist(), [str(f) for f in files], dedupe, workers,
                                  loader=_load_or_none, desc=f"external {src.name} vs study",
                                  ref_features=study_features)
    pairs = [{"path": frame["path"].iat[c["query"]], "study_path": index["path"].iat[c["ref"]],
              **{k: c[k] for k in ("kind", "inliers", "mirrored", "hash_distance")}} for c in found]
    if pairs and not src.exclude_study_patients:
        named = [f"{c['path']} ~ {c['study_path']} ({c['kind']})" for c in pairs]
        raise OverlapError(
            f"external source `{src.name}` ({src.key}): {len(pairs)} image(s) are copies of study images "
            f"(data/index.csv) under other patient ids (exact, near, or altered: cropped, re-encoded, mirrored "
            f"or turned): {_listed(named)}. A model has seen them: remove them from the source, or set "
            f"{src.key}.exclude_study_patients: true to drop their patients")
    patients = sorted({frame["patient"].iat[c["query"]] for c in found})
    drop = frame["patient"].isin(patients)
    report = {"copies": len(pairs), "patients": len(patients), "images": int(drop.sum()), "pairs": pairs}
    frame = frame.loc[~drop].reset_index(drop=True)
    if frame.empty:
        raise ExternalError(f"external source `{src.name}` ({src.key}) has no image left: all are copies of study "
                            f"images or of their patients ({len(pairs)} copies): nothing external to score")
    return frame, report
