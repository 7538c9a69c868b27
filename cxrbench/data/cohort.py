"""The authors' own cohort (Chatterjee et al. 2020, GitHub soumickmj/diagnoPP), read as they read it.

Their repository ships ``data/metadataV2.csv`` (1422 rows: covid-chestxray-dataset
rows plus the 1000 Kermany files they sampled, each Kermany file under its own
numeric ``patientid``) and five 60/40 patient splits ``V2_60_40_00fold{k}.txt``
(JSON ``{seed, train, test, val}`` of ``patientid`` values). The download stage
puts them in ``data/raw/diagnopp/``; this module rebuilds their cohort from the
raw sources and audits it:

* :func:`paper_labels` reproduces their labelling rule exactly (substring /
  regex matches of the finding, see :data:`PAPER_MAPPING`), including its quirks
  (``E.Coli`` gets no label at all, ``ARDS`` counts as a pneumonia);
* :func:`cohort_rows` keeps the rows of their view filter whose file exists,
  one row per image, with both their patient id (``paper_patient``) and the real
  patient (``true_patient``: for Kermany the child named in the file name, which
  their per-image ids hide);
* :func:`fold_split` says where each image is in their fold k, the way their
  loader (``isin`` on the train and on the test list) puts it;
* :func:`audit` counts what leaks between their train and test splits.

Nothing here reads an image outside the rows of ``metadataV2.csv``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.indexing import COVID, KERMANY, KERMANY_NORMAL, KERMANY_PNEUMONIA, IndexReport, describe_images
from cxrbench.data.paper_labels import PAPER_MAPPING, PAPER_PATHOLOGIES, PAPER_PNEUMONIAS, PAPER_TO_OURS, PAPER_VIEWS  # noqa: F401

DIAGNOPP = "diagnopp"
METADATA = "metadataV2.csv"
FOLD_PREFIX = "V2_60_40_00fold"

# --- their label rule: the facts live in cxrbench.data.paper_labels (imported by labels.py too) ---------

# Kermany file class -> the finding metadataV2 gives it
KERMANY_FINDING = {"NORMAL": "No Finding", "virus": "Viral Pneumonia", "bacteria": "Bacterial Pneumonia"}
SIDES = ("train", "test")


class FoldFileError(ValueError):
    """A fold file of the authors that cannot be read; the message names the file."""


def paper_labels(findings: pd.Series) -> np.ndarray:
    """Their multi-hot labels, (N, 14) uint8, columns in :data:`PAPER_PATHOLOGIES` order.

    Exactly their rule: pathology P is positive when the finding contains P, or
    contains any child of P in :data:`PAPER_MAPPING` (pandas ``str.contains``:
    case-sensitive, regular expressions). A missing finding matches nothing.
    """
    text = pd.Series(findings, dtype=object).fillna("").astype(str).reset_index(drop=True)
    out = np.zeros((len(text), len(PAPER_PATHOLOGIES)), dtype=np.uint8)
    for col, pathology in enumerate(PAPER_PATHOLOGIES):
        hit = text.str.contains(pathology, regex=True, na=False)
        for child in PAPER_MAPPING.get(pathology, ()):
            hit |= text.str.contains(child, regex=True, na=False)
        out[:, col] = hit.to_numpy(dtype=np.uint8)
    return out


def paper_label_names(findings: pd.Series) -> list[list[str]]:
    """Their labels of each finding as names (a readable form of :func:`paper_labels`)."""
    return [[PAPER_PATHOLOGIES[j] for j in np.flatnonzero(row)] for row in paper_labels(findings)]


# --- their fold files -----------------------------------------------------------------------------

def _ids(values, key: str, path: Path) -> list[str]:
    if not isinstance(values, list):
        raise FoldFileError(f"{path}: `{key}` must be a list of patient ids, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, str)) or (isinstance(v, str) and not v.strip()):
            raise FoldFileError(f"{path}: `{key}` holds {v!r}, not a patient id (int or non-empty str)")
        out.append(str(v).strip())
    return out


def read_fold_file(path: Path, fold: int) -> dict:
    """One ``V2_60_40_00fold{k}.txt``: ``{fold, file, seed, train, test, val}`` with ids as str.

    ``train`` and ``test`` are required (their loader uses only these); ``seed``
    and ``val`` may be absent (``None`` and ``[]``).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FoldFileError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise FoldFileError(f"{path}: expected a JSON object with keys train, test, got {type(data).__name__}")
    missing = [k for k in SIDES if k not in data]
    if missing:
        raise FoldFileError(f"{path}: missing key(s) {missing}; expected {{seed, train, test, val}}")
    return dict(fold=fold, file=Path(path).name, seed=data.get("seed"),
                train=_ids(data["train"], "train", path), test=_ids(data["test"], "test", path),
                val=_ids(data.get("val", []), "val", path))


def read_folds(folder: Path, prefix: str = FOLD_PREFIX) -> list[dict]:
    """Their folds ``{prefix}0.txt``, ``{prefix}1.txt``, ... for as long as the files exist."""
    folder = Path(folder)
    folds = []
    while (path := folder / f"{prefix}{len(folds)}.txt").is_file():
        folds.append(read_fold_file(path, len(folds)))
    if not folds:
        raise FileNotFoundError(f"{folder / f'{prefix}0.txt'} not found: run the download stage "
                                f"(source `{DIAGNOPP}`)")
    return folds


# --- their cohort ---------------------------------------------------------------------------------

def _plain_name(name: str) -> bool:
    """A bare file or folder name: no separator, not '.' or '..' (a path can never leave its folder)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def locate(row) -> dict | None:
    """Where one metadataV2 row's image lies under the raw root, from its file name.

    Kermany files are recognised by their upstream names (``personN_bacteria|virus_M``
    under PNEUMONIA, ``[NORMAL2-]IM-NNNN-...`` under NORMAL); every other row is a
    covid-chestxray-dataset file in its ``folder``. Returns ``None`` for a name that
    is not a plain file name.
    """
    name, folder = str(row["filename"]), str(row["folder"])
    if not _plain_name(name):
        return None
    m_p, m_n = KERMANY_PNEUMONIA.match(name), KERMANY_NORMAL.match(name)
    if m_p:
        return dict(path=f"{KERMANY}/train/PNEUMONIA/{name}", source=KERMANY, true_patient=f"km:{m_p.group(1)}",
                    kermany_class=m_p.group(2).lower())
    if m_n:
        return dict(path=f"{KERMANY}/train/NORMAL/{name}", source=KERMANY, true_patient=f"km:{m_n.group(1)}",
                    kermany_class="NORMAL")
    if not _plain_name(folder):
        return None
    return dict(path=f"{COVID}/{folder}/{name}", source=COVID, true_patient=f"cc:{row['patientid']}",
                kermany_class="")


def read_metadata(raw: Path) -> pd.DataFrame:
    """``raw/diagnopp/metadataV2.csv`` as strings; an actionable error if absent or malformed."""
    path = Path(raw) / DIAGNOPP / METADATA
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the download stage (source `{DIAGNOPP}`)")
    meta = pd.read_csv(path, dtype=str, keep_default_na=False, encoding_errors="replace")
    needed = ["patientid", "finding", "view", "folder", "filename"]
    absent = [c for c in needed if c not in meta.columns]
    if absent:
        raise ValueError(f"{path}: missing column(s) {absent}")
    return meta


def cohort_rows(raw: Path, views=PAPER_VIEWS) -> tuple[pd.DataFrame, dict]:
    """Their cohort: the rows of metadataV2.csv in ``views`` whose file exists, one per image.

    Columns: ``path`` (relative to ``raw``), ``source``, ``paper_patient``
    (``dp:<patientid>``, their id), ``true_patient`` (``cc:<patientid>`` for
    covid-chestxray, the same person as theirs; ``km:personN`` / ``km:IM-NNNN``
    for Kermany, the child named in the file name), ``finding``, ``view``,
    ``kermany_class`` and ``meta_row`` (row number in metadataV2.csv).

    Like their loader, rows outside ``views`` and rows whose file is absent are
    left out; unlike it, they are reported: ``missing`` (paths), ``duplicates``
    (one file listed in several rows: kept once), ``invalid_names``,
    ``kermany_finding_mismatch``. Only the listed paths are ever checked.
    """
    raw = Path(raw)
    meta = read_metadata(raw)
    keep = meta["view"].isin(list(views))
    report = dict(metadata=f"{DIAGNOPP}/{METADATA}", views=list(views), rows_listed=len(meta),
                  dropped_by_view=int((~keep).sum()),
                  dropped_views=dict(sorted(Counter(meta.loc[~keep, "view"]).items())),
                  missing=[], duplicates=[], invalid_names=[], kermany_finding_mismatch=[])
    rows: dict[str, dict] = {}
    for i, r in meta[keep].iterrows():
        where = locate(r)
        if where is None:
            report["invalid_names"].append(f"{r['folder']}/{r['filename']}")
            continue
        path = where["path"]
        if path in rows:
            first = rows[path]
            report["duplicates"].append(dict(path=path, meta_rows=[first["meta_row"], int(i)],
                                             paper_patients=[first["paper_patient"], f"dp:{r['patientid']}"],
                                             findings=[first["finding"], r["finding"]]))
            continue
        if not (raw / path).is_file():
            if path not in report["missing"]:
                report["missing"].append(path)
            continue
        if where["source"] == KERMANY and KERMANY_FINDING[where["kermany_class"]] != r["finding"]:
            report["kermany_finding_mismatch"].append(dict(path=path, finding=r["finding"]))
        rows[path] = dict(path=path, source=where["source"], paper_patient=f"dp:{r['patientid']}",
                          true_patient=where["true_patient"], finding=r["finding"], view=r["view"],
                          kermany_class=where["kermany_class"], meta_row=int(i))
    columns = ["path", "source", "paper_patient", "true_patient", "finding", "view", "kermany_class", "meta_row"]
    frame = pd.DataFrame(list(rows.values()), columns=columns)
    report["rows_kept"] = len(frame)
    return frame, report


# --- their folds on the cohort --------------------------------------------------------------------

def _fold(folds: list[dict], k: int) -> dict:
    if not 0 <= k < len(folds):
        raise ValueError(f"fold {k} is not among the authors' folds 0..{len(folds) - 1}")
    return folds[k]


def fold_split(rows: pd.DataFrame, folds: list[dict], k: int, selection_on_test: bool = False) -> pd.Series:
    """Where each row is in their fold ``k``: ``train``, ``test``, ``train+test`` or ``unused``.

    Their loader takes train = ``patientid.isin(train)`` and test =
    ``patientid.isin(test)``, so an image whose patient is in both lists is in
    both loaders: it is written ``train+test`` (the ``+`` form that
    :func:`cxrbench.data.splitting.fold_parts` reads), never silently given one side.
    With ``selection_on_test`` the test cells also name ``val``, since they chose
    their checkpoint on the test split. The Series is named ``part_f{k}``.
    """
    fold = _fold(folds, k)
    ids = rows["paper_patient"].str.removeprefix("dp:")
    in_train, in_test = ids.isin(set(fold["train"])), ids.isin(set(fold["test"]))
    test = "test+val" if selection_on_test else "test"
    part = np.where(in_train & in_test, f"train+{test}",
                    np.where(in_train, "train", np.where(in_test, test, "unused")))
    return pd.Series(part, index=rows.index, name=f"part_f{k}")


def sides(part: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Boolean masks (on train side, on test side) of a :func:`fold_split` Series."""
    tokens = part.astype(str).str.split("+")
    return tokens.map(lambda t: "train" in t).astype(bool), tokens.map(lambda t: "test" in t).astype(bool)


# --- near duplicates ------------------------------------------------------------------------------

def near_duplicate_pairs(raw: Path, rows: pd.DataFrame, max_distance: int, hash_size: int = 16,
                         workers: int = 1) -> list[tuple[str, str, int]]:
    """Pairs of cohort images (path_i, path_j, distance) whose perceptual hashes lie within
    ``max_distance`` bits (:func:`cxrbench.data.dedupe.near_pairs`). Decodes every row's image."""
    from cxrbench.data.dedupe import near_pairs, phash_bits

    report = IndexReport()
    described = describe_images(Path(raw), rows[["path"]].to_dict("records"), workers, report, hash_size=hash_size)
    paths = [d["path"] for d in described]
    pairs = near_pairs(phash_bits([d["phash"] for d in described]), max_distance)
    return [(paths[i], paths[j], d) for i, j, d in pairs]


# --- audit ----------------------------------------------------------------------------------------

def _zero_label_rows(rows: pd.DataFrame) -> dict:
    zero = paper_labels(rows["finding"]).sum(axis=1) == 0
    sub = rows[zero]
    return dict(count=int(zero.sum()), findings=dict(sorted(Counter(sub["finding"]).items())),
                paths=sub["path"].tolist())


def _cross_pairs(rows: pd.DataFrame, on_train: pd.Series, on_test: pd.Series, pairs) -> dict:
    """Near-duplicate pairs with one image on the train side and the other on the test side."""
    pos = {p: i for i, p in enumerate(rows["path"])}
    tr, te = on_train.to_numpy(), on_test.to_numpy()
    patient = rows["true_patient"].to_numpy()
    across, outside = [], 0
    for pair in pairs:
        a, b = pair[0], pair[1]
        if a not in pos or b not in pos:
            outside += 1
            continue
        i, j = pos[a], pos[b]
        if i != j and ((tr[i] and te[j]) or (te[i] and tr[j])):
            across.append(dict(pair=[a, b], same_true_patient=bool(patient[i] == patient[j])))
    return dict(count=len(across), other_patient=sum(not x["same_true_patient"] for x in across),
                pairs=across, pairs_outside_cohort=outside)


def audit_fold(rows: pd.DataFrame, folds: list[dict], k: int, near_pairs_list=None) -> dict:
    """Leaks of their fold ``k``: paper patients in both lists, real patients on both sides,
    near-duplicate images across train/test (when pairs are given)."""
    fold = _fold(folds, k)
    part = fold_split(rows, folds, k)
    on_train, on_test = sides(part)
    both_ids = sorted(set(fold["train"]) & set(fold["test"]), key=lambda s: (len(s), s))
    cohort_ids = set(rows["paper_patient"].str.removeprefix("dp:"))
    listed = set(fold["train"]) | set(fold["test"])
    train_true, test_true = set(rows.loc[on_train, "true_patient"]), set(rows.loc[on_test, "true_patient"])
    leaked = sorted(train_true & test_true)
    by_source = Counter(rows[rows["true_patient"].isin(set(leaked))].drop_duplicates("true_patient")["source"])
    leaked_test = on_test & rows["true_patient"].isin(set(leaked))
    out = dict(fold=k, file=fold["file"], seed=fold["seed"],
               images=dict(Counter(part)),
               train_images=int(on_train.sum()), test_images=int(on_test.sum()),
               listed_ids_not_in_cohort=len(listed - cohort_ids),
               cohort_ids_in_no_list=len(cohort_ids - listed),
               paper_patients_in_both=len(both_ids), paper_patients_in_both_ids=both_ids,
               images_in_both=int((on_train & on_test).sum()),
               true_patients_leaked=len(leaked), true_patients_leaked_by_source=dict(sorted(by_source.items())),
               true_patients_leaked_ids=leaked,
               test_images_of_leaked_patients=int(leaked_test.sum()),
               near_duplicates_across=None)
    if near_pairs_list is not None:
        out["near_duplicates_across"] = _cross_pairs(rows, on_train, on_test, near_pairs_list)
    return out


def audit(rows: pd.DataFrame, folds: list[dict], near_pairs_list=None, report: dict | None = None) -> dict:
    """Everything that is wrong with their cohort and splits, as plain JSON-able data.

    ``cohort``: images per source, patients (theirs and real), rows whose label
    vector is all zero under their rule (with the findings), and, when the
    :func:`cohort_rows` report is given, rows dropped by the view filter, missing
    files and duplicated file names. ``folds``: :func:`audit_fold` of each fold.
    """
    cohort = dict(images=len(rows), images_by_source=dict(sorted(Counter(rows["source"]).items())),
                  paper_patients=int(rows["paper_patient"].nunique()),
                  true_patients=int(rows["true_patient"].nunique()),
                  true_patients_by_source={s: int(n) for s, n in
                                           rows.groupby("source")["true_patient"].nunique().items()},
                  all_zero_labels=_zero_label_rows(rows))
    if report is not None:
        cohort.update(rows_listed=report["rows_listed"], dropped_by_view=report["dropped_by_view"],
                      dropped_views=report["dropped_views"], missing_files=len(report["missing"]),
                      missing=report["missing"], duplicate_file_names=len(report["duplicates"]),
                      duplicates=report["duplicates"])
    return dict(cohort=cohort, folds=[audit_fold(rows, folds, k, near_pairs_list) for k in range(len(folds))])


def _short(ids, limit: int = 15) -> str:
    ids = list(ids)
    text = ", ".join(ids[:limit])
    return text + (f", … (+{len(ids) - limit})" if len(ids) > limit else "") if ids else "none"


def audit_markdown(result: dict) -> str:
    """A readable Markdown summary of :func:`audit`: cohort facts, one table row per fold, the ids."""
    c = result["cohort"]
    z = c["all_zero_labels"]
    lines = ["## The authors' cohort (diagnoPP metadataV2.csv)", ""]
    if "rows_listed" in c:
        lines.append(f"- rows listed: {c['rows_listed']}; dropped by the view filter: {c['dropped_by_view']} "
                     f"({', '.join(f'{v or repr(v)}: {n}' for v, n in c['dropped_views'].items()) or 'none'}); "
                     f"files missing: {c['missing_files']}; file names listed twice: {c['duplicate_file_names']}")
    lines += [f"- images kept: {c['images']} "
              f"({', '.join(f'{s}: {n}' for s, n in c['images_by_source'].items())})",
              f"- patients: {c['paper_patients']} by their ids, {c['true_patients']} real "
              f"({', '.join(f'{s}: {n}' for s, n in c['true_patients_by_source'].items())})",
              f"- images with no label at all under their rule: {z['count']} "
              f"({', '.join(f'{f}: {n}' for f, n in z['findings'].items()) or 'none'})", ""]
    lines += ["| fold | seed | train imgs | test imgs | imgs in both | their patients in both lists "
              "| real patients on both sides | test imgs of those patients | near-dup pairs across (other patient) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in result["folds"]:
        src = ", ".join(f"{s}: {n}" for s, n in f["true_patients_leaked_by_source"].items())
        nd = f["near_duplicates_across"]
        near = "not computed" if nd is None else f"{nd['count']} ({nd['other_patient']})"
        lines.append(f"| {f['fold']} | {f['seed']} | {f['train_images']} | {f['test_images']} | "
                     f"{f['images_in_both']} | {f['paper_patients_in_both']} | {f['true_patients_leaked']}"
                     f"{f' ({src})' if src else ''} | {f['test_images_of_leaked_patients']} | {near} |")
    lines.append("")
    for f in result["folds"]:
        lines.append(f"- fold {f['fold']}: their patients in both lists: {_short(f['paper_patients_in_both_ids'])}; "
                     f"real patients on both sides: {_short(f['true_patients_leaked_ids'])}")
    return "\n".join(lines) + "\n"


# --- the cohort as the pipeline's index and splits ---------------------------------------------

RULES = {"labels": ("paper", "ours"), "selection": ("test", "val"), "leaked_test": ("keep", "remove")}


def rules(params: dict) -> dict:
    """``paper_rules`` of the merged params (``cohort: paper``), each key checked against :data:`RULES`."""
    from cxrbench.core.params import ParamError, check_choice

    r = params.get("paper_rules")
    if not isinstance(r, dict):
        raise ParamError("paper_protocol.<protocol>.paper_rules",
                         f"cohort: paper needs paper_rules with keys {sorted(RULES)} in the protocol's block")
    for key, choices in RULES.items():
        check_choice(f"paper_protocol.{params.get('protocol')}.paper_rules.{key}", r.get(key), choices)
    return r


def index_rows(cohort: pd.DataFrame, table, label_rule: str) -> list[dict]:
    """Rows for the index stage (the shape of :func:`cxrbench.data.indexing.covid_rows`) from :func:`cohort_rows`.

    ``label_rule: paper`` labels each image by their substring rule; ``ours``
    by our explicit table (covid-chestxray ``finding``; Kermany's class from
    the file name), so an unmapped finding is an error, not an all-zero row.
    ``patient`` is the real person (``true_patient``); their id is kept as
    ``paper_patient``.
    """
    if label_rule == "paper":
        hot = paper_labels(cohort["finding"])
        labels = [[table.names[j] for j in np.flatnonzero(row)] for row in hot]
    else:
        labels = [table.labels_of(src, cls if src == KERMANY else finding)
                  for src, finding, cls in zip(cohort["source"], cohort["finding"], cohort["kermany_class"])]
    return [dict(path=r.path, source=r.source, patient=r.true_patient, linked_patients=[], view=r.view,
                 modality="X-ray", license="", finding=r.finding, labels=labs, paper_patient=r.paper_patient)
            for r, labs in zip(cohort.itertuples(index=False), labels)]


def paper_splits(index: pd.DataFrame, folds: list[dict], selection: str, leaked_test: str, val_fraction: float,
                 seed: int) -> tuple[pd.DataFrame, dict]:
    """``splits.csv`` for their folds: one ``part_f{k}`` column per fold file.

    ``selection: test``: their test rows are ``test+val`` (checkpoint chosen on
    the test split); ``val``: ``val_fraction`` of the groups of the fold's
    train-only images become the fold's validation part (the same groups
    whatever ``leaked_test`` says, so that removing leaked test images never
    changes what is trained on). An image in both of their lists stays
    ``train+test`` under ``leaked_test: keep`` (their loader put it in both);
    under ``remove`` every test image whose patient group (real person, merged
    with near duplicates) has an image on the training side (train or val) is
    taken out of the test part: ``train`` / ``val`` if it is also trained on,
    else ``unused``. Only the test part changes, never the training side.

    The ``split``/``fold`` columns are the U-Net's: every group with an image in
    the test part of *any* fold is ``test``, so the one lung U-Net never trains
    or selects on a patient that some fold tests on (their folds are 5 random
    60/40 splits, so few groups are left: :func:`unet_exclusion` counts them);
    a validation part of the remaining groups is fold 0.
    """
    rows = index.rename(columns={"patient": "true_patient"})
    out = index[["path", "patient", "group"]].copy()
    removed = {}
    rng = np.random.default_rng(seed)
    any_test = np.zeros(len(out), dtype=bool)
    for k in range(len(folds)):
        part = fold_split(rows, folds, k, selection_on_test=(selection == "test"))
        on_train, on_test = sides(part)
        any_test |= on_test.to_numpy()
        if selection == "val":
            groups = sorted(set(out.loc[(part == "train").to_numpy(), "group"]))
            n_val = max(1, int(round(val_fraction * len(groups))))
            val = set(rng.choice(groups, size=n_val, replace=False)) if groups else set()
            in_val = out["group"].isin(val).to_numpy()
            part = part.where(~((part == "train").to_numpy() & in_val), "val")
            part = part.where(~((part == "train+test").to_numpy() & in_val), "val+test")
        if leaked_test == "remove":
            tokens = part.astype(str).str.split("+")
            # the training side: train, and val when val is not the test split itself (selection: test)
            side = tokens.map(lambda t: [x for x in t if x == "train" or (x == "val" and "test" not in t)])
            trained = side.map(bool).to_numpy()
            leak = on_test.to_numpy() & out["group"].isin(set(out.loc[trained, "group"])).to_numpy()
            kept = side.map(lambda t: "+".join(t) or "unused")
            part = part.where(~leak, kept)
            removed[k] = int(leak.sum())
        out[f"part_f{k}"] = part.to_numpy()
    test_groups = set(out.loc[any_test, "group"])
    out["split"] = np.where(out["group"].isin(test_groups), "test", "dev")  # whole groups: the U-Net never leaks
    dev_groups = sorted(set(out.loc[out["split"] == "dev", "group"]))
    if not dev_groups:
        raise ValueError("every patient group of the authors' cohort is in some fold's test part: "
                         "no image is left to train the lung U-Net on")
    n_val = max(1, int(round(val_fraction * len(dev_groups))))
    unet_val = set(np.random.default_rng(seed + 1).choice(dev_groups, size=n_val, replace=False))
    out["fold"] = np.where(out["split"] == "test", -1, np.where(out["group"].isin(unet_val), 0, 1))
    cols = ["path", "patient", "group", "split", "fold"] + [f"part_f{k}" for k in range(len(folds))]
    return out[cols], {"test_images_removed_as_leaked": removed}


def unet_exclusion(splits: pd.DataFrame) -> dict:
    """Groups the U-Net may use (``split: dev``) and those it may not, and a check that no fold's test
    part reaches its dev side (raises if one does: a bug, never expected)."""
    dev = splits["split"] == "dev"
    k = 0
    while f"part_f{k}" in splits.columns:
        tested = splits[f"part_f{k}"].astype(str).str.contains("test").to_numpy()
        bad = set(splits.loc[tested, "group"]) & set(splits.loc[dev, "group"])
        if bad:
            raise RuntimeError(f"U-Net dev split holds {len(bad)} group(s) in fold {k}'s test part, "
                               f"e.g. {sorted(bad)[0]}")
        k += 1
    return {"dev_groups": int(splits.loc[dev, "group"].nunique()), "dev_images": int(dev.sum()),
            "excluded_groups": int(splits.loc[~dev, "group"].nunique())}


def fold_leakage(splits: pd.DataFrame) -> dict[int, dict]:
    """Per fold: real patients and patient groups with images both on the training side and in test."""
    out = {}
    k = 0
    while f"part_f{k}" in splits.columns:
        tokens = splits[f"part_f{k}"].astype(str).str.split("+")
        train = tokens.map(lambda t: "train" in t or "val" in t and "test" not in t)
        test = tokens.map(lambda t: "test" in t)
        out[k] = {key: len(set(splits.loc[train, key]) & set(splits.loc[test, key])) for key in ("patient", "group")}
        k += 1
    return out


def paper_cohort(params: dict, index: pd.DataFrame, raw: Path, index_report: dict) -> tuple[pd.DataFrame, dict, dict]:
    """The authors' folds as splits (``raw``: the downloaded sources), the leakage counts, and the audit of
    their cohort (``index_report``: the index stage's report)."""
    from cxrbench.core.params import ParamError, check_fraction
    from cxrbench.data.dedupe import near_pairs, phash_bits

    protocol = params["protocol"]
    paper_rules = rules(params)
    folds = read_folds(raw / DIAGNOPP)
    if len(folds) != params["split"]["folds"]:
        raise ParamError("split.folds", f"cohort: paper has {len(folds)} fold files; set split.folds to {len(folds)}")
    val_fraction = check_fraction("paper_protocol.val_fraction", params["paper_protocol"]["val_fraction"])
    splits, removed = paper_splits(index, folds, paper_rules["selection"], paper_rules["leaked_test"], val_fraction,
                                   params["split"]["seed"])
    per_fold = fold_leakage(splits)
    if paper_rules["leaked_test"] == "remove" and any(v["group"] for v in per_fold.values()):
        raise RuntimeError(f"leaked test images were removed yet the folds still leak: {per_fold}")  # a bug
    d = params["dedupe"]
    hashes = phash_bits(index["phash"])
    pairs = [(index.at[i, "path"], index.at[j, "path"], dist)
             for i, j, dist in near_pairs(hashes, d["phash_max_distance"])]
    rows = index.rename(columns={"patient": "true_patient"})
    result = audit(rows, folds, pairs, index_report.get("paper_cohort"))
    result["protocol"] = protocol
    result["paper_rules"] = paper_rules
    result["unet"] = unet_exclusion(splits)
    result["leakage_after_split"] = {str(k): v for k, v in per_fold.items()}
    result.update(removed)
    leaks = {"patients_in_test_and_dev": sum(v["patient"] for v in per_fold.values()), "patients_in_several_folds": 0,
             "groups_in_test_and_dev": sum(v["group"] for v in per_fold.values()), "groups_in_several_folds": 0}
    return splits, leaks, result
