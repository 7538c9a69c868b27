"""External validation: the run's trained classifiers scored on images of patients that no model has seen.

An external source is declared in ``params.yaml: external.catalog`` like a study source: either a study
source whose download the stage reads again (``source: kermany`` reads ``data/raw/kermany``, which holds
the whole upstream split while the study indexes a subset of it), or a ``url`` / ``mirror`` of its own
(fetched by :func:`cxrbench.data.sources.fetch` into ``data/external/<name>/raw``); and how its labels are read:

* ``labels: kermany``: class and patient from each file name, exactly as the index stage derives them
  (:func:`cxrbench.data.indexing.kermany_files`), in the ``folders`` that hold ``NORMAL/`` and ``PNEUMONIA/``;
* ``labels: csv``: a ``table`` (CSV under the source's root) with columns ``path``, ``patient``, ``finding``.

Findings become labels through ``labels.findings.<findings>`` (an unmapped finding is an error naming it).
``external.sources`` names the entries scored; empty (the default) turns the stage off.

Per source: (1) its images with patient and labels (file names that fit no pattern are listed);
(2) patients with any image in ``data/index.csv`` (any split, linked patients included) are dropped when
``exclude_study_patients`` is true and are an error naming them otherwise, and the rest is verified
disjoint from the study; (3) at most ``external.max_images_per_class`` images per finding (seeded);
(4) each image decoded and preprocessed with the run's cache recipe (:mod:`cxrbench.studies.predict`'s), in worker
processes, cached under ``data/external/<name>/cache`` by file content and recipe; an image pixel-identical
to a study image (the index's exact hash) is an error naming both files; (5) every model of
``external.models`` predicts it (probability: the mean over its members, :func:`cxrbench.studies.predict.combine`;
decision: the vote of the members' validation cuts); (6) per label with both classes present, AUROC and
average precision with bootstrap CIs over patients, beside the same model on the study's held-out test set
(``data/predictions``; groups from ``data/index.csv``), all of it and its part from ``compare_with``;
sensitivity and specificity at the validation thresholds; reliability curves and expected calibration
error. Labels that cannot be scored are listed with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from cxrbench.core import bootstrap as B
from cxrbench.studies import predict as PR
from cxrbench.core import paths
from cxrbench.data.images import DECODE_ERRORS
from cxrbench.data.indexing import KERMANY_CLASSES, exact_hash, kermany_files
from cxrbench.core.io import atomic_path, read_json, write_csv, write_json, write_text
from cxrbench.data.labels import LabelTable
from cxrbench.core.params import ParamError, check_choice, check_int, check_nonempty_list, section
from cxrbench.data.preprocess import Recipe, prepare
from cxrbench.core.runtime import progress
from cxrbench.data.sources import SourceError, SourceSpec, fetch

OUT_DIR = Path("data/external")
RAW = Path("data/raw")
INDEX = Path("data/index.csv")
METRICS_JSON = Path("metrics/external.json")
METRICS_MD = Path("metrics/external.md")
PLOT = Path("plots/external_calibration.png")

LABEL_RULES = ("kermany", "csv")
EACH_BACKBONE = "each_backbone"                 # external.models: one entry per train.backbones
FETCH_FIELDS = ("url", "sha256", "archive_root", "inner_archive", "include", "mirror")
FIELDS = ("source", *FETCH_FIELDS, "labels", "folders", "table", "findings", "exclude_study_patients",
          "compare_with", "note")
CSV_COLUMNS = ("path", "patient", "finding")
INTERNAL, SAME, EXTERNAL, MIX = "internal", "internal_same_source", "external", "external_at_internal_mix"
AUROC_CHANCE = 0.5
METRICS = ("auroc", "ap", "sensitivity", "specificity")
SHOWN = 20                                      # names listed in an error before "and N more"


class ExternalError(RuntimeError):
    """A declared external source that cannot be scored; the message names the file or param and the fix."""


class OverlapError(ExternalError):
    """An external source shares patients (or pixel-identical images) with the study."""


# --- params -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """One entry of ``external.catalog``, checked."""
    name: str
    study_source: str | None          # a key of `sources` whose download (data/raw/<it>) is read
    spec: SourceSpec | None           # or its own url / mirror
    labels: str                       # kermany | csv
    folders: tuple[str, ...]          # labels: kermany
    table: str | None                 # labels: csv
    findings: str                     # key of labels.findings
    exclude_study_patients: bool
    compare_with: str | None          # study source whose internal test images form the same-source column
    note: str

    @property
    def key(self) -> str:
        return f"external.catalog.{self.name}"


@dataclass(frozen=True)
class Config:
    sources: list[Source]
    models: list[str]                 # predict --models specs, each_backbone expanded
    max_images_per_class: int | None
    seed: int
    calibration_bins: int


def _relative(key: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise ParamError(key, f"expected a relative path, got {value!r}")
    p = PurePosixPath(value.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise ParamError(key, f"{value!r} must stay inside the source's folder (no absolute path, no '..')")
    return p.as_posix()


def parse_source(name: str, spec, params: dict) -> Source:
    key = f"external.catalog.{name}"
    if not isinstance(spec, dict):
        raise ParamError(key, f"expected a mapping with fields {list(FIELDS)}, got {spec!r}")
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        raise ParamError(key, f"unknown field(s) {unknown}; valid fields are {list(FIELDS)}")
    study_sources = section(params, "sources")
    study = spec.get("source")
    own = [f for f in ("url", "mirror") if spec.get(f)]
    if study and own:
        raise ParamError(key, f"has both `source` ({study!r}) and {own}: give `source` (a study source whose "
                              f"download is read again) or a url / mirror of its own, not both")
    fetch_spec = None
    if study:
        if study not in study_sources:
            raise ParamError(f"{key}.source", f"{study!r} is not a key of `sources` ({sorted(study_sources)})")
        if study not in section(params, "download.sources"):
            raise ParamError(f"{key}.source", f"{study!r} is not fetched by this run: add it to download.sources")
    elif not own:
        raise ParamError(key, "needs `source` (a key of `sources`, e.g. kermany: its download in data/raw is read "
                              "again) or a `url` / `mirror` of its own")
    else:
        inner_name = f"external-{name}"
        try:
            fetch_spec = SourceSpec.from_params(inner_name, {f: spec.get(f) for f in FETCH_FIELDS})
        except ParamError as err:
            message = str(err).split("`: ", 1)[-1]
            raise ParamError(key + err.key[len(f"sources.{inner_name}"):], message) from err
    labels = check_choice(f"{key}.labels", spec.get("labels"), LABEL_RULES)
    folders: tuple[str, ...] = ()
    table = None
    if labels == "kermany":
        folders = tuple(_relative(f"{key}.folders", f)
                        for f in check_nonempty_list(f"{key}.folders", spec.get("folders")))
    else:
        table = _relative(f"{key}.table", spec.get("table"))
    findings = spec.get("findings")
    known = section(params, "labels.findings")
    if findings not in known:
        raise ParamError(f"{key}.findings", f"{findings!r} is not a table of labels.findings ({sorted(known)}); "
                                            f"name the one that maps this source's findings to labels")
    exclude = spec.get("exclude_study_patients")
    if not isinstance(exclude, bool):
        raise ParamError(f"{key}.exclude_study_patients", f"expected true (drop the study's patients) or false "
                                                          f"(an overlap is an error), got {exclude!r}")
    compare = spec.get("compare_with")
    if compare is not None and compare not in study_sources:
        raise ParamError(f"{key}.compare_with", f"{compare!r} is not a key of `sources` ({sorted(study_sources)}); "
                                                f"null compares with the whole internal test set only")
    note = spec.get("note") or ""
    if not isinstance(note, str):
        raise ParamError(f"{key}.note", f"expected text, got {note!r}")
    return Source(name, study or None, fetch_spec, labels, folders, table, findings, exclude, compare, note.strip())


def model_specs(models, params: dict) -> list[str]:
    """``external.models`` as predict ``--models`` specs; ``each_backbone`` becomes one per train.backbones."""
    backbones = check_nonempty_list("train.backbones", section(params, "train.backbones"))
    folds = check_nonempty_list("train.folds", section(params, "train.folds"))
    out: list[str] = []
    for entry in check_nonempty_list("external.models", models):
        if not isinstance(entry, str) or not entry.strip():
            raise ParamError("external.models", f"expected model specs (ensemble, BACKBONE, BACKBONE:FOLD, "
                                                f"ensemble:FOLD or {EACH_BACKBONE}), got {entry!r}")
        for spec in (list(backbones) if entry == EACH_BACKBONE else [entry.strip()]):
            try:
                members = PR.parse_models(spec, backbones, folds)
            except PR.PredictError as err:
                raise ParamError("external.models", str(err)) from err
            bad = [f"{b}:{k}" for b, k in members if b not in backbones or k not in folds]
            if bad:
                raise ParamError("external.models", f"{spec!r} names model(s) {bad} that this run does not train "
                                                    f"(train.backbones {backbones}, train.folds {folds})")
            if spec not in out:
                out.append(spec)
    return out


def validate(params: dict) -> Config:
    """The ``external`` section, every key checked before any work (only the sources it lists are parsed)."""
    p = section(params, "external")
    if not isinstance(p, dict):
        raise ParamError("external", "expected a mapping with sources, catalog, models, max_images_per_class, "
                                     "seed, calibration_bins")
    names = p.get("sources")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ParamError("external.sources", f"expected a list of names of external.catalog entries ([] turns "
                                             f"the external stage off), got {names!r}")
    if len(set(names)) != len(names):
        raise ParamError("external.sources", f"lists a source twice: {names}")
    catalog = p.get("catalog") or {}
    if not isinstance(catalog, dict):
        raise ParamError("external.catalog", f"expected a mapping of source name -> declaration, got {catalog!r}")
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise ParamError("external.sources", f"{unknown} not declared under external.catalog "
                                             f"(declared: {sorted(catalog)})")
    cap = p.get("max_images_per_class")
    if cap is not None:
        check_int("external.max_images_per_class", cap, minimum=1)
    return Config([parse_source(n, catalog[n], params) for n in names], model_specs(p.get("models"), params), cap,
                  check_int("external.seed", p.get("seed"), minimum=0),
                  check_int("external.calibration_bins", p.get("calibration_bins"), minimum=2, maximum=100))


# --- the images of a source -------------------------------------------------------------------

def source_root(src: Source, raw: Path = RAW, out_dir: Path = OUT_DIR) -> tuple[Path, str]:
    """(the folder holding the source's upstream layout, the prefix of its paths): a study source is read
    where the download stage put it and named as data/index.csv names its files."""
    if src.study_source:
        return raw / src.study_source, f"{src.study_source}/"
    if src.spec.mirror:
        return Path(src.spec.mirror), ""
    return out_dir / src.name / "raw", ""


def fetch_source(src: Source, out_dir: Path = OUT_DIR) -> dict:
    """Fetch a source with a url of its own into data/external/<name>/raw; a study source or a mirror is read
    in place. Returns where the images came from."""
    root, _ = source_root(src, out_dir=out_dir)
    if src.study_source:
        return {"origin": "study source", "source": src.study_source, "folder": str(root)}
    if src.spec.mirror:
        return {"origin": "mirror", "mirror": str(src.spec.mirror)}
    try:
        return fetch(src.spec, root, None)
    except SourceError as err:
        raise ExternalError(f"{src.key} (fetched as `{src.spec.name}`): {err}") from err


def list_images(src: Source, root: Path, prefix: str, table: LabelTable) -> tuple[pd.DataFrame, list[str]]:
    """Every image of the source: ``path`` (as data/index.csv would name it), ``file`` (where to read it),
    ``patient``, ``finding`` and the ``y_*`` labels, sorted by path; and the files whose names fit no pattern."""
    rows, unparsed = [], []
    if not root.is_dir():
        what = (f"the download of study source `{src.study_source}`: run its download stage (dvc repro download)"
                if src.study_source else f"{src.key}.mirror / url")
        raise ExternalError(f"external source `{src.name}`: {root} not found ({what})")
    if src.labels == "kermany":
        for folder in src.folders:
            if not (root / folder).is_dir():
                raise ExternalError(f"external source `{src.name}`: {root / folder} not found; {src.key}.folders "
                                    f"names the folders under {root} that hold NORMAL/ and PNEUMONIA/")
            by_class, bad = kermany_files(root / folder)
            unparsed += [f"{prefix}{folder}/{u}" for u in bad]
            for cls in KERMANY_CLASSES:
                for rel, patient in by_class[cls]:
                    rows.append({"path": f"{prefix}{folder}/{rel}", "file": str(root / folder / rel),
                                 "patient": patient, "finding": cls})
    else:
        path = root / src.table
        if not path.is_file():
            raise ExternalError(f"external source `{src.name}`: label table {path} not found ({src.key}.table)")
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in CSV_COLUMNS if c not in frame.columns]
        if missing:
            raise ExternalError(f"{path} has no column(s) {missing}: the label table of {src.key} needs "
                                f"{list(CSV_COLUMNS)} (path relative to the source's folder)")
        for r in frame.itertuples(index=False):
            try:
                rel = _relative(f"{src.key}.table", r.path)
            except ParamError as err:
                raise ExternalError(f"{path}: row path {r.path!r} points outside {root}: {err}") from err
            if not r.patient:
                raise ExternalError(f"{path}: {r.path} has no patient id; every image needs one (the external "
                                    f"stage resamples and checks overlap by patient)")
            rows.append({"path": f"{prefix}{rel}", "file": str(root / rel), "patient": r.patient,
                         "finding": r.finding})
    frame = pd.DataFrame(rows, columns=["path", "file", "patient", "finding"])
    if frame["path"].duplicated().any():
        raise ExternalError(f"external source `{src.name}` lists {frame['path'][frame['path'].duplicated()].iloc[0]} "
                            f"twice")
    y = {f: table.multi_hot(table.labels_of(src.findings, f)) for f in sorted(set(frame["finding"]))}
    labels = np.stack([y[f] for f in frame["finding"]]) if len(frame) else np.zeros((0, len(table.names)), np.uint8)
    for j, n in enumerate(table.names):
        frame[f"y_{n}"] = labels[:, j].astype(int)
    return frame.sort_values("path", kind="stable").reset_index(drop=True), unparsed


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


# --- preprocessing, cached by file content and recipe --------------------------------------------

def file_sha1(path: str | Path) -> str:
    """SHA-1 of a file's bytes; '' when it cannot be read (then it is never taken from the cache)."""
    h = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return ""
    return h.hexdigest()


def _prepare_job(job: tuple[str, Recipe]) -> tuple[np.ndarray | None, str, str]:
    """(the (C, S, S) uint8 input or None, the index's exact hash or '', status) of one file."""
    path, recipe = job
    dicom = Path(path).suffix.lower() in PR.DICOM_SUFFIXES
    expected = PR._dicom_errors() if dicom else DECODE_ERRORS
    try:
        grey = PR.load_image(path)
    except expected as err:
        return None, "", f"{type(err).__name__}: {err}".replace("\n", " ").strip()
    return prepare(grey, recipe), exact_hash(grey), PR.OK


def prepare_images(frame: pd.DataFrame, recipe: Recipe, cache_dir: Path, workers: int = 1,
                   show: bool = True) -> tuple[np.ndarray, pd.DataFrame, int]:
    """The preprocessed images (memory-mapped, in frame order), a table of ``status`` and ``exact_hash`` per
    image, and how many came from the cache (same file bytes, same recipe)."""
    n, c, s = len(frame), len(recipe.channels), recipe.size
    digests = [file_sha1(f) for f in frame["file"]]
    recipe_meta = dataclasses.asdict(recipe)
    old_images, old_rows = None, {}
    if all((cache_dir / f).is_file() for f in ("meta.json", "images.npy", "rows.csv")):
        meta = read_json(cache_dir / "meta.json")
        if meta.get("recipe") == _as_json(recipe_meta):
            old = pd.read_csv(cache_dir / "rows.csv", dtype=str, keep_default_na=False)
            old_images = np.load(cache_dir / "images.npy", mmap_mode="r")
            old_rows = {d: i for i, d in enumerate(old["file_sha1"]) if d}
            old_state = old[["status", "exact_hash"]].to_numpy()
    status, hashes = [""] * n, [""] * n
    todo = [i for i, d in enumerate(digests) if d not in old_rows]
    with atomic_path(cache_dir) as tmp:
        tmp.mkdir()
        images = open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, c, s, s))
        for i, d in enumerate(digests):
            if d in old_rows:
                images[i] = old_images[old_rows[d]]
                status[i], hashes[i] = old_state[old_rows[d]]
        jobs = [(frame["file"].iloc[i], recipe) for i in todo]
        if workers > 1 and len(jobs) >= 2 * workers:
            pool = ProcessPoolExecutor(max_workers=workers)
            results = pool.map(_prepare_job, jobs, chunksize=8)
        else:
            pool, results = None, map(_prepare_job, jobs)
        try:
            for i, (arr, h, st) in zip(todo, progress(results, total=len(jobs), desc=f"external {s}px",
                                                      unit="img", enabled=show)):
                if arr is not None:
                    images[i] = arr
                status[i], hashes[i] = st, h
        finally:
            if pool is not None:
                pool.shutdown()
        images.flush()
        del images, old_images
        write_csv(tmp / "rows.csv", pd.DataFrame({"path": frame["path"], "file_sha1": digests, "status": status,
                                                  "exact_hash": hashes}))
        write_json(tmp / "meta.json", {"n": n, "recipe": recipe_meta})
    state = pd.DataFrame({"status": status, "exact_hash": hashes})
    return np.load(cache_dir / "images.npy", mmap_mode="r"), state, n - len(todo)


def _as_json(recipe_meta: dict) -> dict:
    """A recipe as it reads back from meta.json (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in recipe_meta.items()}


def refuse_identical(frame: pd.DataFrame, state: pd.DataFrame, index: pd.DataFrame, src: Source) -> None:
    """A file whose decoded pixels equal a study image (the index's exact hash) is not external: an error."""
    study = dict(zip(index["exact_hash"], index["path"]))
    same = [f"{p} = {study[h]}" for p, h in zip(frame["path"], state["exact_hash"]) if h and h in study]
    if same:
        raise OverlapError(f"external source `{src.name}` ({src.key}): {len(same)} image(s) are pixel-identical to "
                           f"images of the study (data/index.csv) under other patient ids: {_listed(same)}. A model "
                           f"has seen them: remove them from the source")


# --- statistics ---------------------------------------------------------------------------------

def rate_statistic(y, decision, positive: bool) -> Callable[[np.ndarray], float | None]:
    """``statistic(weights)``: sensitivity (``positive``) or specificity of 0/1 decisions (None without such cases)."""
    want = np.asarray(y).astype(bool).ravel() == positive
    hit = want & (np.asarray(decision).astype(bool).ravel() == positive)

    def statistic(w: np.ndarray) -> float | None:
        w = np.asarray(w, dtype=float)
        total = float((w * want).sum())
        return float((w * hit).sum()) / total if total > 0 else None

    return statistic


def reliability(y, prob, bins: int, weights=None) -> dict:
    """Reliability diagram (equal-width bins of the probability) and expected calibration error, each image
    counted ``weights`` times (default once)."""
    y = np.asarray(y, dtype=float)
    prob = np.asarray(prob, dtype=float)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    which = np.clip(np.digitize(prob, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    points = []
    ece = 0.0
    for b in range(bins):
        sel = (which == b) & (w > 0)
        if not sel.any():
            continue
        mean_p, freq = float(np.average(prob[sel], weights=w[sel])), float(np.average(y[sel], weights=w[sel]))
        ece += w[sel].sum() / w.sum() * abs(freq - mean_p)
        points.append({"bin": b, "n": int(sel.sum()), "mean_probability": mean_p, "observed_frequency": freq})
    return {"bins": bins, "ece": float(ece), "points": points}


def mix_weights(findings, target_findings) -> np.ndarray | None:
    """Per image, (share of its finding in ``target_findings``) / (its share in ``findings``): the set
    reweighted to the target's case mix. None when a finding of either side is missing on the other."""
    have = pd.Series(np.asarray(findings)).value_counts(normalize=True)
    want = pd.Series(np.asarray(target_findings)).value_counts(normalize=True)
    if set(have.index) != set(want.index):
        return None
    return pd.Series(np.asarray(findings)).map(want / have).to_numpy(float)


@dataclass
class Scored:
    """One model's scores on one set of images."""
    y: np.ndarray                     # (N, L) 0/1
    prob: np.ndarray                  # (N, L)
    pred: np.ndarray                  # (N, L) 0/1 at the validation thresholds
    groups: np.ndarray                # (N,) patient (group) of each image: the bootstrap resamples these
    weights: np.ndarray | None = None  # (N,) fixed image weights (a case-mix reweighting); None: 1


def not_scorable_reason(col: np.ndarray, weights=None) -> str | None:
    if weights is not None:
        col = col[np.asarray(weights) > 0]
    pos = int(col.sum())
    if pos == 0:
        return f"no positive image (0 of {len(col)})"
    if pos == len(col):
        return f"no negative image ({pos} of {len(col)} positive)"
    return None


def _weighted(statistic, fixed):
    return statistic if fixed is None else (lambda w: statistic(np.asarray(w, dtype=float) * fixed))


def score_label(sets: dict[str, Scored], j: int, stats: dict, bins: int,
                differences: list[tuple[str, str]], required: str | None = EXTERNAL) -> dict:
    """Label ``j`` on every set where both classes are present: AUROC, AP, sensitivity and specificity with
    bootstrap CIs (each set's groups resampled independently, all on one call so the differences of
    ``differences`` (a, b) -> a - b of AUROC are computed on the same draws), prevalence (AP's chance level),
    reliability and ECE; the other sets get the reason they cannot be scored. When the set ``required`` is
    not scorable, nothing is computed (only the reasons)."""
    out: dict = {"sets": {}, "not_scorable": {}}
    scorable = []
    for name, s in sets.items():
        reason = not_scorable_reason(s.y[:, j], s.weights)
        if reason:
            out["not_scorable"][name] = reason
        else:
            scorable.append(name)
    if not scorable or (required is not None and required not in scorable):
        return out
    folds = []
    for name in scorable:
        s = sets[name]
        y, p, d = s.y[:, j], s.prob[:, j], s.pred[:, j]
        stats_ = [B.auroc_statistic(y, p), B.ap_statistic(y, p), rate_statistic(y, d, True),
                  rate_statistic(y, d, False)]
        groups = np.array([f"{name}\0{g}" for g in s.groups])     # each set is its own draw
        folds.append([(groups, _weighted(st, s.weights)) for st in stats_])
    reducers = {f"{name}|{m}": (lambda v, i=i, k=k: v[i, k])
                for i, name in enumerate(scorable) for k, m in enumerate(METRICS)}
    diffs = [(a, b) for a, b in differences if a in scorable and b in scorable]
    for a, b in diffs:
        reducers[f"{a}-{b}"] = lambda v, ia=scorable.index(a), ib=scorable.index(b): v[ia, 0] - v[ib, 0]
    ci = B.fold_bootstrap(folds, reducers, stats["resamples"], stats["seed"], stats["confidence"])
    keep = ("estimate", "low", "high", "undefined")
    for name in scorable:
        s = sets[name]
        col = s.y[:, j]
        prevalence = float(np.average(col, weights=s.weights))
        entry = {"n": int(len(col)), "positives": int(col.sum()), "groups": int(len(set(s.groups))),
                 "prevalence": prevalence, "auroc_chance": AUROC_CHANCE, "ap_chance": prevalence}
        for m in METRICS:
            entry[m] = {k: ci[f"{name}|{m}"][k] for k in keep}
        entry["calibration"] = reliability(col, s.prob[:, j], bins, s.weights)
        out["sets"][name] = entry
    out["auroc_differences"] = {f"{a}-{b}": {k: ci[f"{a}-{b}"][k] for k in keep} for a, b in diffs}
    return out


# --- the models -----------------------------------------------------------------------------------

def member_names(spec: str, run: PR.Run, params: dict) -> list[int]:
    """Indices into ``run.members`` of the models of one spec."""
    names = [m.name for m in run.members]
    wanted = PR.parse_models(spec, section(params, "train.backbones"), section(params, "train.folds"))
    return [names.index(f"{b}-f{k}") for b, k in wanted]


def subrun(run: PR.Run, idx: list[int]) -> PR.Run:
    return dataclasses.replace(run, members=[run.members[i] for i in idx])


def internal_test(run: PR.Run, index: pd.DataFrame, root: Path = Path(".")) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The study's held-out test rows (path, y_*) and each member's test probabilities, from the evaluate
    stage's data/predictions (the images every member was tested on, in one order)."""
    base, probs = None, []
    for m in run.members:
        path = root / paths.run("main", m.backbone, m.fold).predictions
        if not path.is_file():
            raise ExternalError(f"{path} not found: the internal test predictions of {m.name} come from the "
                                f"evaluate stage; run it (dvc repro evaluate)")
        frame = pd.read_csv(path, keep_default_na=False)
        test = frame.loc[frame["split"] == "test"].sort_values("path", kind="stable").reset_index(drop=True)
        if base is None:
            base = test[["path", *(f"y_{n}" for n in run.labels)]]
        elif not np.array_equal(test["path"].to_numpy(), base["path"].to_numpy()):
            raise ExternalError(f"{path} covers other test images than the first model's predictions: rerun "
                                f"evaluate for every model (dvc repro evaluate)")
        probs.append(test[[f"prob_{n}" for n in run.labels]].to_numpy(np.float64).astype(np.float32))
    unknown = sorted(set(base["path"]) - set(index["path"]))
    if unknown:
        raise ExternalError(f"test images {_listed(unknown)} of data/predictions are not in data/index.csv: the "
                            f"predictions are older than the index; rerun evaluate (dvc repro evaluate)")
    return base, probs


# --- the stage ------------------------------------------------------------------------------------

def _diff(v: dict | None) -> str:
    return B.format_ci(v, signed=True)


def set_titles(src_result: dict) -> dict[str, str]:
    same = src_result.get("compare_with")
    return {INTERNAL: "internal test", SAME: f"internal test, {same} part" if same else "",
            EXTERNAL: "external", MIX: f"external at the {same} part's mix" if same else ""}


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(result: dict) -> str:
    """metrics/external.md: per source, internal vs external AUROC and AP with CIs, thresholded rates and
    calibration, labels that cannot be scored and why."""
    if result.get("status") != "on":
        return f"## External validation\n\nOff: {result.get('reason', '')}\n"
    conf = f"{result['confidence']:.0%}"
    lines = ["## External validation: the run's classifiers on patients that no model has seen", "",
             f"Cells: estimate [{conf} CI, percentile bootstrap, {result['resamples']} resamples of patients "
             f"(external) or patient groups (internal test), each set drawn on its own; differences on the same "
             f"draws]. Chance: AUROC {AUROC_CHANCE}; AP = the label's prevalence in that set (in brackets after "
             f"AP). Models: "
             + "; ".join(f"`{k}` = mean probability of {', '.join(v)}" if len(v) > 1 else f"`{k}` = {v[0]}"
                         for k, v in result["models"].items())
             + ". The internal columns are the same model (the same mean) on the study's held-out test set, "
               "from the evaluate stage's predictions.", ""]
    for name, src in result["sources"].items():
        t = set_titles(src)
        same = src.get("compare_with")
        comp = SAME if same else INTERNAL
        im = src["images"]
        lines += [f"### `{name}`", "", src["note"] or "", "",
                  f"{im['scored']} images of {im['patients']} patients scored; {im['listed']} listed, "
                  f"{src['excluded']['images']} image(s) of {src['excluded']['patients']} study patient(s) "
                  f"excluded, {im['capped']} left out by external.max_images_per_class "
                  f"({src['max_images_per_class']}), {len(src['unreadable'])} unreadable, "
                  f"{len(src['unparsed'])} file name(s) fitting no pattern. Disjoint from data/index.csv: "
                  f"{src['disjoint']['shared_patients']} shared patients, {src['disjoint']['shared_files']} shared "
                  f"files, {src['disjoint']['pixel_identical']} pixel-identical images (checked). Findings: "
                  f"external {im['by_finding']}" + (f"; {t[SAME]} {src['compare_mix']}" if same else "") + ".", ""]
        if same:
            lines += [f"A label scored against the rest depends on the mix of the rest (bacterial vs viral is "
                      f"harder than bacterial vs normal), so `{t[MIX]}` reweights the external images to the "
                      f"findings mix of the {t[SAME]} (" + (
                          "not available: the two sets do not share their findings" if not src.get("mix_weights")
                          else ", ".join(f"{k} x{v:.2f}" for k, v in src["mix_weights"].items())) + ").", ""]
        head = ["model", "label", f"AUROC {t[INTERNAL]}"] + ([f"AUROC {t[SAME]}"] if same else []) \
            + ["AUROC external"] + ([f"AUROC {t[MIX]}"] if same else []) \
            + [f"external − {t[comp]}"] + ([f"{t[MIX]} − {t[comp]}"] if same else []) \
            + [f"AP {t[comp]} [chance]", "AP external [chance]", "external positives / images"]
        rows, rows2, skipped = [], [], {}
        first = next(iter(src["models"]))
        for label, r in src["models"][first]["labels"].items():     # the truth is the same for every model
            if EXTERNAL not in r["sets"]:
                skipped.setdefault(r["not_scorable"][EXTERNAL], []).append(label)
        for model, res in src["models"].items():
            for label, r in res["labels"].items():
                sets = r["sets"]
                if EXTERNAL not in sets:
                    continue

                def cell(set_name, metric="auroc"):
                    if set_name in sets:
                        return B.format_ci(sets[set_name][metric])
                    return f"– ({r['not_scorable'].get(set_name, 'not computed')})"

                def ap(set_name):
                    return f"{cell(set_name, 'ap')} [{sets[set_name]['ap_chance']:.3f}]" if set_name in sets \
                        else cell(set_name, "ap")

                diffs = r.get("auroc_differences", {})
                rows.append([f"`{model}`", label, cell(INTERNAL)] + ([cell(SAME)] if same else []) + [cell(EXTERNAL)]
                            + ([cell(MIX)] if same else []) + [_diff(diffs.get(f"{EXTERNAL}-{comp}"))]
                            + ([_diff(diffs.get(f"{MIX}-{comp}"))] if same else [])
                            + [ap(comp), ap(EXTERNAL), f"{sets[EXTERNAL]['positives']} / {sets[EXTERNAL]['n']}"])
                ece = [f"{sets[x]['calibration']['ece']:.3f}" if x in sets else "–" for x in (comp, EXTERNAL)]
                rows2.append([f"`{model}`", label, cell(comp, "sensitivity"), cell(EXTERNAL, "sensitivity"),
                              cell(comp, "specificity"), cell(EXTERNAL, "specificity"), *ece])
        lines += _table(head, rows)
        lines += ["", f"At each model's validation thresholds (the vote of its members' cuts, as `python -m "
                      f"cxrbench.studies.predict` decides), and calibration (expected calibration error over "
                      f"{result['calibration_bins']} equal-width bins; reliability diagrams in {PLOT}):", ""]
        lines += _table(["model", "label", f"sensitivity {t[comp]}", "sensitivity external",
                         f"specificity {t[comp]}", "specificity external", f"ECE {t[comp]}", "ECE external"], rows2)
        if skipped:
            lines += ["", "Not scorable on this external set (listed, not dropped): " + "; ".join(
                f"{', '.join(v)}: {k}" for k, v in skipped.items()) + "."]
        lines.append("")
    rt = result["runtime"]
    lines.append(f"Stage time {result['seconds']:.0f} s ({rt.get('cpu', '?')}, {rt.get('torch_threads', '?')} torch "
                 f"threads, torch {rt.get('torch', '?')}).")
    return "\n".join(lines) + "\n"


def plot_calibration(result: dict, curves: dict, path: Path = PLOT) -> None:
    """Reliability diagrams of the first model of external.models: one row per source, one panel per label
    scorable on the external set, internal vs external (the diagonal is perfect calibration)."""
    from cxrbench.core.plotting import plt, save

    if result.get("status") != "on" or not curves:
        fig, ax = plt.subplots(figsize=(5, 1.6))
        ax.axis("off")
        ax.text(0.5, 0.5, "External validation off:\n" + str(result.get("reason", ""))[:120], ha="center",
                va="center", fontsize=8, wrap=True)
        save(fig, path)
        return
    width = max(len(v["labels"]) for v in curves.values())
    fig, axes = plt.subplots(len(curves), width, figsize=(3.6 * width, 4.0 * len(curves)), squeeze=False,
                             layout="constrained")
    styles = {INTERNAL: ("tab:blue", "o"), SAME: ("tab:green", "s"), EXTERNAL: ("tab:red", "^"),
              MIX: ("tab:orange", "v")}
    for row, (name, c) in zip(axes, curves.items()):
        for ax in row[len(c["labels"]):]:
            ax.axis("off")
        for col, (ax, (label, sets)) in enumerate(zip(row, c["labels"].items())):
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
            for set_name, rel in sets.items():
                pts = rel["points"]
                colour, marker = styles[set_name]
                ax.plot([p["mean_probability"] for p in pts], [p["observed_frequency"] for p in pts], color=colour,
                        lw=1, label=f"{c['titles'][set_name]} (ECE {rel['ece']:.3f})")
                ax.scatter([p["mean_probability"] for p in pts], [p["observed_frequency"] for p in pts],
                           s=[4 + 2 * np.sqrt(p["n"]) for p in pts], color=colour, marker=marker)
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability",
                   ylabel="observed frequency" if col == 0 else None)
            ax.set_title(f"{name}: {label} ({c['model']})", fontsize=8)
            ax.legend(fontsize=5.5, loc="upper left")
    fig.suptitle("Calibration, internal test vs external (reliability diagram; marker area ~ images in the bin)",
                 fontsize=9)
    save(fig, path)


def _mix_text(findings) -> str:
    return ", ".join(f"{k} {v}" for k, v in pd.Series(np.asarray(findings)).value_counts().sort_index().items())


def write_off(reason: str, out_dir: Path = OUT_DIR) -> dict:
    result = {"status": "off", "reason": reason}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "README.txt", f"External validation is off: {reason}\n")
    write_json(METRICS_JSON, result)
    write_text(METRICS_MD, markdown(result))
    plot_calibration(result, {})
    return result


def run_stage(params: dict, device=None, workers: int = 1, show: bool = True) -> dict:
    """The external stage: score every source of external.sources; write metrics/external.{json,md}, the
    calibration plot and data/external/<name>/ (cache and per-image predictions)."""
    from cxrbench.core import runtime

    start = time.perf_counter()
    cfg = validate(params)
    if not cfg.sources:
        return write_off("external.sources is empty; list entries of external.catalog there to score them "
                         "(profiles ci and mirror score kermany_unused)")
    stats = B.validate(params)
    table = LabelTable.from_params(params)
    if not INDEX.is_file():
        raise ExternalError(f"{INDEX} not found: the external stage checks its sources against the study's index; "
                            f"run the index stage (dvc repro index)")
    index = pd.read_csv(INDEX, dtype=str, keep_default_na=False)
    selected = {}                   # every source selected and checked against the study before any model loads
    for src in cfg.sources:
        origin = fetch_source(src)
        root, prefix = source_root(src)
        frame, unparsed = list_images(src, root, prefix, table)
        listed = len(frame)
        frame, excluded = separate_from_study(frame, index, src)
        kept = len(frame)
        frame = cap_per_class(frame, cfg.max_images_per_class, cfg.seed)
        selected[src.name] = (origin, frame, unparsed, listed, excluded, kept)
    union = []
    for spec in cfg.models:
        for b, k in PR.parse_models(spec, section(params, "train.backbones"), section(params, "train.folds")):
            if f"{b}:{k}" not in union:
                union.append(f"{b}:{k}")
    run = PR.load_run(".", ",".join(union), params, device)
    if list(run.labels) != list(table.names):
        raise ExternalError(f"the models predict labels {run.labels} but labels.names is {list(table.names)}: "
                            f"retrain (dvc repro train) or use the params of the run")
    groups = {spec: member_names(spec, run, params) for spec in cfg.models}
    result = {"status": "on", "models": {s: [run.members[i].name for i in idx] for s, idx in groups.items()},
              "confidence": stats["confidence"], "resamples": stats["resamples"],
              "calibration_bins": cfg.calibration_bins, "recipe": dataclasses.asdict(run.recipe), "sources": {}}

    test, test_probs = internal_test(run, index)
    group_of = dict(zip(index["path"], index["group"]))
    source_of = dict(zip(index["path"], index["source"]))
    finding_of = dict(zip(index["path"], index["finding"]))
    y_test = test[[f"y_{n}" for n in run.labels]].to_numpy(int)
    internal = {spec: PR.combine(subrun(run, idx), [test_probs[i] for i in idx]) for spec, idx in groups.items()}
    g_test = np.array([group_of[p] for p in test["path"]])
    src_test = np.array([source_of[p] for p in test["path"]])
    finding_test = np.array([finding_of[p] for p in test["path"]])
    curves = {}
    for src in cfg.sources:
        origin, frame, unparsed, listed, excluded, kept = selected[src.name]
        images, state, reused = prepare_images(frame, run.recipe, OUT_DIR / src.name / "cache", workers, show)
        refuse_identical(frame, state, index, src)
        ok = (state["status"] == PR.OK).to_numpy()
        unreadable = [{"path": p, "status": st} for p, st in zip(frame["path"][~ok], state["status"][~ok])]
        scored = frame.loc[ok].reset_index(drop=True)
        if scored.empty:
            raise ExternalError(f"external source `{src.name}`: none of its {len(frame)} images could be read "
                                f"(first: {unreadable[0] if unreadable else '-'})")
        member_probs = [prob[ok] for prob in PR.predict_members(run, images)]     # batches read from the memmap
        y_ext = scored[[f"y_{n}" for n in run.labels]].to_numpy(int)
        same = src_test == src.compare_with if src.compare_with else None
        if same is not None and not same.any():
            raise ExternalError(f"{src.key}.compare_with: no test image of the study comes from "
                                f"{src.compare_with!r}; name a source of the study or null")
        mix = mix_weights(scored["finding"], finding_test[same]) if same is not None else None
        src_result = {"note": src.note, "origin": origin, "compare_with": src.compare_with,
                      "max_images_per_class": cfg.max_images_per_class, "excluded": excluded,
                      "unparsed": unparsed, "unreadable": unreadable, "reused_from_cache": reused,
                      "images": {"listed": listed, "outside_study": kept, "capped": kept - len(frame),
                                 "scored": len(scored), "patients": int(scored["patient"].nunique()),
                                 "by_finding": _mix_text(scored["finding"])},
                      "disjoint": {"shared_patients": 0, "shared_files": 0, "pixel_identical": 0},
                      "compare_mix": _mix_text(finding_test[same]) if same is not None else None,
                      "mix_weights": None if mix is None else {
                          f: float(w) for f, w in sorted(dict(zip(scored["finding"], mix)).items())},
                      "models": {}}
        for spec, idx in groups.items():
            prob, pred = PR.combine(subrun(run, idx), [member_probs[i] for i in idx])
            iprob, ipred = internal[spec]
            sets = {INTERNAL: Scored(y_test, iprob, ipred, g_test)}
            if same is not None:
                sets[SAME] = Scored(y_test[same], iprob[same], ipred[same], g_test[same])
            sets[EXTERNAL] = Scored(y_ext, prob, pred, scored["patient"].to_numpy())
            diffs = [(EXTERNAL, SAME if same is not None else INTERNAL)]
            if mix is not None:
                sets[MIX] = Scored(y_ext, prob, pred, scored["patient"].to_numpy(), mix)
                diffs.append((MIX, SAME))
            labels = {n: score_label(sets, j, stats, cfg.calibration_bins, diffs) for j, n in enumerate(run.labels)}
            src_result["models"][spec] = {"labels": labels}
            out = scored[["path", "patient", "finding"]].copy()
            out[[f"prob_{n}" for n in run.labels]] = prob
            out[[f"pred_{n}" for n in run.labels]] = pred
            out[[f"y_{n}" for n in run.labels]] = y_ext
            write_csv(OUT_DIR / src.name / f"predictions_{spec.replace(':', '-f')}.csv", out)
            if spec == cfg.models[0]:
                curves[src.name] = {"model": spec, "titles": set_titles(src_result), "labels": {
                    n: {s: r["sets"][s]["calibration"] for s in r["sets"]}
                    for n, r in labels.items() if EXTERNAL in r["sets"]}}
        result["sources"][src.name] = src_result
        print(f"external `{src.name}`: {len(scored)} images of {src_result['images']['patients']} patients "
              f"({excluded['images']} of study patients excluded, {reused} from the cache)")
    result["seconds"] = time.perf_counter() - start
    result["runtime"] = runtime.info()
    write_json(METRICS_JSON, result)
    write_text(METRICS_MD, markdown(result))
    plot_calibration(result, curves)
    return result
