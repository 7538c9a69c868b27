"""Build the index table of the study from the fetched sources.

One row per usable frontal X-ray: its path (relative to ``data/raw``), source,
patient, view, modality, license, upstream finding, hierarchical labels
(multi-hot ``y_*`` columns), size, pixel hashes and its lung mask if one exists.
Rows listed upstream whose file is missing, and files that do not decode, are
reported and skipped, never silently dropped.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from cxrbench.core import paths
from cxrbench.core.params import ParamError, check_int, check_nonempty_list, section
from cxrbench.core.runtime import progress as progress_bar
from cxrbench.data.images import DECODE_ERRORS, load_grey
from cxrbench.data.labels import LabelTable

COVID = "covid_chestxray"
KERMANY = "kermany"
MASKS = "v7_masks"

# Kermany et al. file-name conventions (upstream layout of ChestXRay2017/chest_xray):
#   PNEUMONIA/personN_bacteria_M.jpeg, PNEUMONIA/personN_virus_M.jpeg  (patient: personN)
#   NORMAL/IM-NNNN-MMMM[-KKKK].jpeg, NORMAL/NORMAL2-IM-NNNN-MMMM[-KKKK].jpeg
#                                                  (patient: IM-NNNN or NORMAL2-IM-NNNN)
KERMANY_PNEUMONIA = re.compile(r"^(person\d+)_(bacteria|virus)_\d+(?:_\d+)?\.jpe?g$", re.IGNORECASE)
KERMANY_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)(?:-\d+)+\.jpe?g$", re.IGNORECASE)
KERMANY_CLASSES = ("NORMAL", "bacteria", "virus")
KERMANY_FOLDERS = ("NORMAL", "PNEUMONIA")
KERMANY_PATIENT_PREFIX = "km:"


def kermany_name(folder: str, name: str) -> tuple[str, str] | None:
    """(class, patient id) of a Kermany file from its folder (NORMAL | PNEUMONIA) and file name, e.g.
    ``('virus', 'km:person5')``; None when the name fits no pattern of that folder."""
    if folder == "PNEUMONIA":
        m = KERMANY_PNEUMONIA.match(name)
        return (m.group(2).lower(), KERMANY_PATIENT_PREFIX + m.group(1)) if m else None
    if folder == "NORMAL":
        m = KERMANY_NORMAL.match(name)
        return ("NORMAL", KERMANY_PATIENT_PREFIX + m.group(1)) if m else None
    return None


def kermany_files(root: Path) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """The files of a Kermany split folder (``root/NORMAL``, ``root/PNEUMONIA``) by class, each as
    (``FOLDER/NAME``, patient id), sorted by name; and the files that fit no pattern, as ``FOLDER/NAME``."""
    by_class: dict[str, list[tuple[str, str]]] = {c: [] for c in KERMANY_CLASSES}
    unparsed: list[str] = []
    for folder in KERMANY_FOLDERS:
        for f in sorted((root / folder).glob("*")):
            if not f.is_file():
                continue
            parsed = kermany_name(folder, f.name)
            if parsed is None:
                unparsed.append(f"{folder}/{f.name}")
            else:
                by_class[parsed[0]].append((f"{folder}/{f.name}", parsed[1]))
    return by_class, unparsed


def exact_hash(grey: np.ndarray) -> str:
    """The index's exact-duplicate key of a decoded grey image (:func:`cxrbench.data.images.load_grey`): SHA-1 of
    its 8-bit pixels and shape."""
    u8 = np.round(grey * 255).astype(np.uint8)
    return hashlib.sha1(u8.tobytes() + str(u8.shape).encode()).hexdigest()


@dataclass
class IndexReport:
    """What the index stage saw besides the rows it kept."""
    missing: list[str] = field(default_factory=list)      # listed upstream, file absent
    corrupt: list[str] = field(default_factory=list)      # present, does not decode
    excluded_view_modality: int = 0
    kermany_available: dict[str, int] = field(default_factory=dict)
    unparsed_kermany: list[str] = field(default_factory=list)
    relisted: list[dict] = field(default_factory=list)    # one file in several metadata rows


def validate(params: dict) -> dict:
    """Check ``params: index`` before any work; return it."""
    p = section(params, "index")
    check_nonempty_list("index.views", p.get("views"))
    check_nonempty_list("index.modalities", p.get("modalities"))
    if not isinstance(p.get("kermany_view"), str):
        raise ParamError("index.kermany_view", "expected a view name such as AP")
    subset = p.get("kermany_subset")
    if not isinstance(subset, dict) or set(subset) != set(KERMANY_CLASSES):
        raise ParamError("index.kermany_subset", f"expected a mapping with exactly the keys {list(KERMANY_CLASSES)}"
                                                 f" (null takes all images of a class), got {subset!r}")
    for k, v in subset.items():
        if v is not None:
            check_int(f"index.kermany_subset.{k}", v, minimum=1)
    check_int("index.kermany_seed", p.get("kermany_seed"), minimum=0)
    return p


COVID_COLUMNS = ("patientid", "finding", "view", "modality", "folder", "filename", "license")


def covid_rows(raw: Path, p: dict, table: LabelTable, report: IndexReport) -> list[dict]:
    meta_path = raw / COVID / "metadata.csv"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: run the download stage (dvc repro download)")
    try:
        meta = pd.read_csv(meta_path, dtype=str, keep_default_na=False, encoding_errors="replace")
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{meta_path} is empty: the download is incomplete; delete data/raw/{COVID} and "
                         f"rerun the download stage") from err
    missing_cols = [c for c in COVID_COLUMNS if c not in meta.columns]
    if missing_cols:
        raise ValueError(f"{meta_path} has no column(s) {missing_cols} (it has {list(meta.columns)[:12]}...): "
                         f"not the covid-chestxray-dataset metadata at the pinned commit; check "
                         f"sources.covid_chestxray (url or mirror)")
    known_views = set(meta["view"])
    unknown = [v for v in p["views"] if v not in known_views]
    if unknown:
        raise ParamError("index.views", f"view(s) {unknown} never occur in {meta_path}; "
                                        f"valid views are {sorted(known_views)}")
    keep = meta["view"].isin(p["views"]) & meta["modality"].isin(p["modalities"])
    report.excluded_view_modality = int((~keep).sum())
    rows: dict[str, dict] = {}
    for r in meta[keep].itertuples(index=False):
        for part, value in (("folder", r.folder), ("filename", r.filename)):
            if Path(value).is_absolute() or ".." in Path(value).parts or ":" in value:
                raise ValueError(f"{meta_path}: patient {r.patientid} has {part} {value!r}, which points outside "
                                 f"{paths.RAW}/{COVID}: refusing it (a damaged or tampered metadata.csv)")
        rel = (Path(COVID) / r.folder / r.filename).as_posix()
        if not (raw / rel).is_file():
            report.missing.append(rel)
            continue
        labels = table.labels_of(COVID, r.finding)
        patient = f"cc:{r.patientid}"
        if rel in rows:  # upstream lists this file again (seen under two patient ids): one image
            first = rows[rel]
            first["labels"] = [n for n in table.names if n in set(first["labels"]) | set(labels)]
            if patient != first["patient"] and patient not in first["linked_patients"]:
                first["linked_patients"].append(patient)
            report.relisted.append({"path": rel, "patient": patient, "finding": r.finding})
            continue
        rows[rel] = dict(path=rel, source=COVID, patient=patient, linked_patients=[], view=r.view,
                         modality=r.modality, license=r.license.strip(), finding=r.finding, labels=labels)
    if int(keep.sum()) and not rows:
        raise FileNotFoundError(f"none of the {int(keep.sum())} frontal X-rays listed in {meta_path} is under "
                                f"{raw / COVID}: the images folder is empty or missing; rerun the download stage")
    return list(rows.values())


def kermany_rows(raw: Path, p: dict, table: LabelTable, report: IndexReport) -> list[dict]:
    root = raw / KERMANY / "train"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: run the download stage (dvc repro download)")
    by_class, unparsed = kermany_files(root)
    report.unparsed_kermany += [f"{KERMANY}/train/{u}" for u in unparsed]
    rng = np.random.default_rng(p["kermany_seed"])
    rows = []
    for cls in KERMANY_CLASSES:
        files = by_class[cls]
        report.kermany_available[cls] = len(files)
        n = p["kermany_subset"][cls]
        if n is not None:
            if n > len(files):
                raise ParamError(f"index.kermany_subset.{cls}",
                                 f"asks for {n} images but the source has {len(files)}; lower it or use null")
            files = [files[i] for i in sorted(rng.choice(len(files), size=n, replace=False))]
        labels = table.labels_of(KERMANY, cls)
        for name, patient in files:
            rows.append(dict(path=f"{KERMANY}/train/{name}", source=KERMANY, patient=patient,
                             linked_patients=[], view=p["kermany_view"], modality="X-ray", license="CC BY 4.0", finding=cls,
                             labels=labels))
    return rows


def _describe(path: str, hash_size: int = 8) -> tuple[str, int, int, str, str] | tuple[str, str]:
    """Decode one image; return (path, w, h, exact hash, perceptual hash) or (path, error)."""
    try:
        grey = load_grey(path)
    except DECODE_ERRORS as err:
        return path, f"{type(err).__name__}: {err}"
    u8 = np.round(grey * 255).astype(np.uint8)
    phash = str(imagehash.phash(Image.fromarray(u8), hash_size=hash_size))
    return path, grey.shape[1], grey.shape[0], exact_hash(grey), phash


def describe_images(raw: Path, rows: list[dict], workers: int, report: IndexReport,
                    hash_size: int = 8) -> list[dict]:
    """Decode every image in parallel; add size and hashes, drop and report corrupt files."""
    paths = [str(raw / r["path"]) for r in rows]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(progress_bar(pool.map(partial(_describe, hash_size=hash_size), paths, chunksize=16), total=len(paths),
                            desc="decode + hash", unit="img"))
    kept = []
    for row, res in zip(rows, results):
        if len(res) == 2:
            report.corrupt.append(f"{row['path']} ({res[1]})")
            warnings.warn(f"skipping corrupt image {raw / row['path']}: {res[1]}", stacklevel=2)
            continue
        _, w, h, exact, phash = res
        kept.append({**row, "width": w, "height": h, "exact_hash": exact, "phash": phash})
    return kept


def attach_masks(raw: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Column ``mask``: the V7 Labs lung mask of a covid image (same file name), or ''."""
    mask_dir = raw / MASKS
    names = {f.name for f in mask_dir.iterdir()} if mask_dir.is_dir() else set()
    frame = frame.copy()
    frame["mask"] = [f"{MASKS}/{Path(p).name}" if s == COVID and Path(p).name in names else ""
                     for p, s in zip(frame["path"], frame["source"])]
    return frame


def to_frame(rows: list[dict], table: LabelTable) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for i, name in enumerate(table.names):
        frame[f"y_{name}"] = [int(name in r) for r in frame["labels"]]
    frame["labels"] = ["|".join(r) for r in frame["labels"]]
    frame["linked_patients"] = ["|".join(r) for r in frame["linked_patients"]]
    return frame.sort_values("path", kind="stable").reset_index(drop=True)


def label_matrix(frame: pd.DataFrame, names) -> np.ndarray:
    return frame[[f"y_{n}" for n in names]].to_numpy(dtype=np.float32)
