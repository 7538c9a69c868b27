"""Leak-free split by patient group: a held-out test set and K folds over the rest.

* ``test``: a fraction of the groups (seed 000: 40 % of the subjects), drawn with
  scikit-learn's stratified ``train_test_split`` at group level. It is never
  used to choose anything.
* ``dev``: the remaining groups, cut by scikit-learn's ``StratifiedGroupKFold``
  into K folds. Fold k trains on the other K-1 parts and selects models and
  thresholds on part k (its validation part).

Strata are ``source:most specific label`` of each group; strata too small to be
split are pooled per source, then globally.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from cxrbench.core.params import ParamError, check_fraction, check_int, section
from cxrbench.data.labels import LabelTable


def validate(params: dict) -> dict:
    p = section(params, "split")
    check_fraction("split.test_fraction", p.get("test_fraction"))
    check_int("split.folds", p.get("folds"), minimum=2)
    check_int("split.seed", p.get("seed"), minimum=0)
    return p


def group_strata(frame: pd.DataFrame, table: LabelTable, min_count: int) -> pd.Series:
    """One stratum per group; strata with fewer than ``min_count`` groups are pooled."""
    per_group = frame.groupby("group", sort=True).agg(
        source=("source", "first"), labels=("labels", lambda s: sorted(set("|".join(s).split("|")))))
    strata = pd.Series([f"{src}:{table.leaf(labs)}" for src, labs in zip(per_group["source"], per_group["labels"])],
                       index=per_group.index)
    for pooled in (lambda s: s.split(":")[0] + ":rare", lambda s: "rare"):
        counts = strata.value_counts()
        small = strata.map(counts) < min_count
        strata[small] = strata[small].map(pooled)
    return strata


def split(frame: pd.DataFrame, table: LabelTable, test_fraction: float, folds: int, seed: int) -> pd.DataFrame:
    """Return ``path, patient, group, split ('test'|'dev'), fold (-1 for test)`` and one
    ``part_f{k}`` column per fold (train / val / test)."""
    strata = group_strata(frame, table, min_count=2)
    groups = strata.index.to_numpy()
    n_test = int(round(test_fraction * len(groups)))
    if n_test < 1 or len(groups) - n_test < folds:
        raise ParamError("split.test_fraction",
                         f"{len(groups)} patient groups cannot give a test set of {test_fraction:.0%} and "
                         f"{folds} folds with at least one group each; lower split.folds or use more data")
    dev_groups, test_groups = train_test_split(groups, test_size=n_test, stratify=strata.to_numpy(),
                                               random_state=seed, shuffle=True)
    out = frame[["path", "patient", "group"]].copy()
    out["split"] = np.where(out["group"].isin(set(test_groups)), "test", "dev")
    out["fold"] = -1

    dev = out[out["split"] == "dev"]
    dev_strata = group_strata(frame[out["split"] == "dev"], table, min_count=folds)
    y = dev["group"].map(dev_strata).to_numpy()
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(cv.split(np.zeros(len(dev)), y, groups=dev["group"].to_numpy())):
        out.loc[dev.index[val_idx], "fold"] = k
    for k in range(folds):
        out[part_column(k)] = np.where(out["split"] == "test", "test", np.where(out["fold"] == k, "val", "train"))
    return out


PARTS = ("train", "val", "test")


def part_column(fold: int) -> str:
    """Column of splits.csv that says which part (train/val/test/unused) each image is in for ``fold``."""
    return f"part_f{fold}"


def n_folds(splits: pd.DataFrame) -> int:
    return sum(1 for c in splits.columns if c.startswith("part_f"))


def fold_parts(splits: pd.DataFrame, fold: int) -> dict[str, pd.DataFrame]:
    """The train / val / test rows of one fold.

    Every consumer goes through this function: the rebuilt cohort has one
    held-out test set for all folds, the authors' cohort a different test set
    per fold, and both are written as one ``part_f{k}`` column per fold
    (``train``, ``val``, ``test`` or ``unused``).

    A cell may name several parts joined by ``+``: the authors' protocol, which
    chose its checkpoint on the test split, is written ``test+val`` so that the
    flaw is explicit in the data rather than hidden in code.
    """
    col = part_column(fold)
    if col not in splits.columns:
        raise ValueError(f"fold {fold} is not in the splits (folds 0..{n_folds(splits) - 1}); "
                         f"check train.folds against split.folds in params.yaml")
    tokens = splits[col].astype(str).str.split("+")
    return {part: splits[tokens.map(lambda t, p=part: p in t)] for part in PARTS}


def leakage(splits: pd.DataFrame) -> dict:
    """Patients and groups on more than one side: of test/dev, and of the dev folds."""
    out = {}
    for key in ("patient", "group"):
        sides = splits.groupby(key)["split"].nunique()
        folds = splits[splits["split"] == "dev"].groupby(key)["fold"].nunique()
        out[f"{key}s_in_test_and_dev"] = int((sides > 1).sum())
        out[f"{key}s_in_several_folds"] = int((folds > 1).sum())
    return out


def data_summary(full: pd.DataFrame, names: list[str], n_folds: int, index_report: dict, leaks: dict) -> dict:
    """metrics/data.json: images, patients and groups per side and source, duplicates and leaks (``full``: the
    index joined with the splits; ``index_report``: the index stage's report)."""
    counts = {}
    for src, sub in full.groupby("source"):
        counts[src] = {}
        for part, sel in [("test", sub["split"] == "test"), ("dev", sub["split"] == "dev")]:
            counts[src][part] = {n: int(sub.loc[sel, f"y_{n}"].sum()) for n in names}
            counts[src][part]["images"] = int(sel.sum())
            counts[src][part]["patients"] = int(sub.loc[sel, "patient"].nunique())
    folds = {str(k): int((full["fold"] == k).sum()) for k in range(n_folds)}
    dup = index_report["duplicates"]
    return {
        "images": len(full), "patients": int(full["patient"].nunique()), "groups": int(full["group"].nunique()),
        "test_images": int((full["split"] == "test").sum()), "dev_images": int((full["split"] == "dev").sum()),
        "fold_images": folds,
        "missing_files": index_report["missing_files"], "corrupt_files": index_report["corrupt_files"],
        "exact_copies_dropped": dup["exact_copies_dropped"],
        "near_duplicate_pairs_across_patients": dup["near_duplicate_pairs_across_patients"],
        "altered_copies_across_groups": dup.get("altered_copies", {}).get("altered_copies_across_groups"),
        "patients_merged_into_shared_groups": int(full["patient"].nunique() - full["group"].nunique()),
        "leaked_patients": leaks["patients_in_test_and_dev"] + leaks["patients_in_several_folds"],
        "leaked_groups": leaks["groups_in_test_and_dev"] + leaks["groups_in_several_folds"],
        "counts": counts}
