"""The external sources: their declarations in ``params.yaml: external`` checked, fetched, and their images listed.

An external source is declared in ``params.yaml: external.catalog`` like a study source: either a study
source whose download the stage reads again (``source: kermany`` reads ``data/raw/kermany``, which holds
the whole upstream split while the study indexes a subset of it), or a ``url`` / ``mirror`` of its own
(fetched by :func:`cxrbench.data.sources.fetch` into ``data/external/<name>/raw``); and how its labels are read:

* ``labels: kermany``: class and patient from each file name, exactly as the index stage derives them
  (:func:`cxrbench.data.indexing.kermany_files`), in the ``folders`` that hold ``NORMAL/`` and ``PNEUMONIA/``;
* ``labels: csv``: a ``table`` (CSV under the source's root) with columns ``path``, ``patient``, ``finding``.

Findings become labels through ``labels.findings.<findings>`` (an unmapped finding is an error naming it).
``external.sources`` names the entries scored; empty (the default) turns the stage off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from cxrbench.core import paths
from cxrbench.data.indexing import KERMANY_CLASSES, kermany_files
from cxrbench.data.labels import LabelTable
from cxrbench.core.params import ParamError, check_choice, check_int, check_nonempty_list, section
from cxrbench.data.sources import SourceError, SourceSpec, fetch
from cxrbench.studies.predict import load as PL

OUT_DIR = Path(paths.EXTERNAL)
RAW = Path(paths.RAW)

LABEL_RULES = ("kermany", "csv")
EACH_BACKBONE = "each_backbone"                 # external.models: one entry per train.backbones
FETCH_FIELDS = ("url", "sha256", "archive_root", "inner_archive", "include", "mirror")
FIELDS = ("source", *FETCH_FIELDS, "labels", "folders", "table", "findings", "exclude_study_patients",
          "compare_with", "note")
CSV_COLUMNS = ("path", "patient", "finding")


class ExternalError(RuntimeError):
    """A declared external source that cannot be scored; the message names the file or param and the fix."""


class OverlapError(ExternalError):
    """An external source shares patients (or pixel-identical images) with the study."""


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
                members = PL.parse_models(spec, backbones, folds)
            except PL.PredictError as err:
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
