"""Stage split: held-out test set and K group-stratified folds, by patient group.

Writes data/splits.csv, metrics/data.json and plots/label_distribution.png.
"""

from pathlib import Path

import pandas as pd

from cxrbench.core import params as P
from cxrbench.core.io import read_json, write_csv, write_json, write_text
from cxrbench.core.plotting import label_distribution
from cxrbench.data import cohort, dedupe, splitting
from cxrbench.data.labels import LabelTable

RAW = Path("data/raw")


def paper_cohort(params: dict, index: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Their five folds as splits.csv, and the audit of their cohort (metrics/cohort_audit.{json,md})."""
    protocol = params["protocol"]
    rules = cohort.rules(params)
    folds = cohort.read_folds(RAW / cohort.DIAGNOPP)
    if len(folds) != params["split"]["folds"]:
        raise P.ParamError("split.folds", f"cohort: paper has {len(folds)} fold files; set split.folds to {len(folds)}")
    val_fraction = P.check_fraction("paper_protocol.val_fraction", params["paper_protocol"]["val_fraction"])
    splits, removed = cohort.paper_splits(index, folds, rules["selection"], rules["leaked_test"], val_fraction,
                                          params["split"]["seed"])
    per_fold = cohort.fold_leakage(splits)
    if rules["leaked_test"] == "remove" and any(v["group"] for v in per_fold.values()):
        raise RuntimeError(f"leaked test images were removed yet the folds still leak: {per_fold}")  # a bug
    d = params["dedupe"]
    hashes = dedupe.phash_bits(index["phash"])
    pairs = [(index.at[i, "path"], index.at[j, "path"], dist)
             for i, j, dist in dedupe.near_pairs(hashes, d["phash_max_distance"])]
    rows = index.rename(columns={"patient": "true_patient"})
    report = read_json("data/index_report.json").get("paper_cohort")
    result = cohort.audit(rows, folds, pairs, report)
    result["protocol"] = protocol
    result["paper_rules"] = rules
    result["unet"] = cohort.unet_exclusion(splits)
    result["leakage_after_split"] = {str(k): v for k, v in per_fold.items()}
    result.update(removed)
    write_json("metrics/cohort_audit.json", result)
    write_text("metrics/cohort_audit.md", cohort.audit_markdown(result))
    leaks = {"patients_in_test_and_dev": sum(v["patient"] for v in per_fold.values()), "patients_in_several_folds": 0,
             "groups_in_test_and_dev": sum(v["group"] for v in per_fold.values()), "groups_in_several_folds": 0}
    return splits, leaks


def main() -> None:
    params = P.stage_params(__doc__)
    table = LabelTable.from_params(params)
    s = splitting.validate(params)
    index = pd.read_csv("data/index.csv", keep_default_na=False)
    if params["cohort"] == "paper":
        splits, leaks = paper_cohort(params, index)
    else:
        splits = splitting.split(index, table, s["test_fraction"], s["folds"], s["seed"])
        leaks = splitting.leakage(splits)
        if any(leaks.values()):
            raise RuntimeError(f"split leaks patients across sides: {leaks}")  # a bug, never expected
        note = "Not applicable: cohort is `rebuilt` (run with cohort: paper for the audit of the authors' cohort)."
        write_json("metrics/cohort_audit.json", {"cohort": "rebuilt", "note": note})
        write_text("metrics/cohort_audit.md", f"*{note}*\n")
    write_csv("data/splits.csv", splits)

    full = index.merge(splits[["path", "split", "fold"]], on="path", validate="one_to_one")
    counts = {}
    for src, sub in full.groupby("source"):
        counts[src] = {}
        for part, sel in [("test", sub["split"] == "test"), ("dev", sub["split"] == "dev")]:
            counts[src][part] = {n: int(sub.loc[sel, f"y_{n}"].sum()) for n in table.names}
            counts[src][part]["images"] = int(sel.sum())
            counts[src][part]["patients"] = int(sub.loc[sel, "patient"].nunique())
    folds = {str(k): int((full["fold"] == k).sum()) for k in range(s["folds"])}
    rep = read_json("data/index_report.json")
    dup = rep["duplicates"]
    write_json("metrics/data.json", {
        "images": len(full), "patients": int(full["patient"].nunique()), "groups": int(full["group"].nunique()),
        "test_images": int((full["split"] == "test").sum()), "dev_images": int((full["split"] == "dev").sum()),
        "fold_images": folds,
        "missing_files": rep["missing_files"], "corrupt_files": rep["corrupt_files"],
        "exact_copies_dropped": dup["exact_copies_dropped"],
        "near_duplicate_pairs_across_patients": dup["near_duplicate_pairs_across_patients"],
        "altered_copies_across_groups": dup.get("altered_copies", {}).get("altered_copies_across_groups"),
        "patients_merged_into_shared_groups": int(full["patient"].nunique() - full["group"].nunique()),
        "leaked_patients": leaks["patients_in_test_and_dev"] + leaks["patients_in_several_folds"],
        "leaked_groups": leaks["groups_in_test_and_dev"] + leaks["groups_in_several_folds"],
        "counts": counts})
    label_distribution(full, table.names, "plots/label_distribution.png")
    print(f"split: test {int((full['split'] == 'test').sum())} images, folds {folds}, leaks {leaks}")


if __name__ == "__main__":
    main()
